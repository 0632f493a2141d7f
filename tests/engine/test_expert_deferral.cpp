// Expert deferral's split of each token's routing: the lowest weights go later, nothing is lost.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "tandem/engine/expert_deferral.hpp"
#include "tandem/error.hpp"

namespace tandem::test {

TEST_CASE("expert deferral splits off each token's lowest-weighted experts", "[engine][deferral]") {
  const std::vector<int32_t> ids = {7, 3, 9, 1, /**/ 4, 5, 6, 2};
  const std::vector<float> w = {0.1f, 0.4f, 0.2f, 0.3f, /**/ 0.25f, 0.25f, 0.25f, 0.25f};
  std::vector<int32_t> kid(4), did(4);
  std::vector<float> kw(4), dw(4);
  split_deferred_experts(ids.data(), w.data(), 2, 4, 2, kid.data(), kw.data(), did.data(), dw.data());
  CHECK(kid == std::vector<int32_t>{3, 1, /**/ 4, 5});  // kept in routing order
  CHECK(kw == std::vector<float>{0.4f, 0.3f, 0.25f, 0.25f});
  CHECK(did == std::vector<int32_t>{7, 9, /**/ 6, 2});  // ties: the later slots are deferred
  CHECK(dw == std::vector<float>{0.1f, 0.2f, 0.25f, 0.25f});

  CHECK_THROWS_AS(split_deferred_experts(ids.data(), w.data(), 2, 4, 4, kid.data(), kw.data(), did.data(), dw.data()),
                  Error);
  CHECK_THROWS_AS(split_deferred_experts(ids.data(), w.data(), 2, 4, 0, kid.data(), kw.data(), did.data(), dw.data()),
                  Error);
}

TEST_CASE("expert deferral: kept ∪ deferred is the routing, every kept weight ≥ every deferred one",
          "[engine][deferral]") {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (int64_t top_k : {2, 6, 8}) {
    for (int64_t defer = 1; defer < top_k; ++defer) {
      const int64_t tokens = 5;
      std::vector<int32_t> ids(static_cast<size_t>(tokens * top_k));
      std::vector<float> w(ids.size());
      for (size_t i = 0; i < ids.size(); ++i) {
        ids[i] = static_cast<int32_t>(i);
        w[i] = std::round(u(rng) * 8.f) / 8.f;  // coarse, so ties happen
      }
      const int64_t keep = top_k - defer;
      std::vector<int32_t> kid(static_cast<size_t>(tokens * keep)), did(static_cast<size_t>(tokens * defer));
      std::vector<float> kw(kid.size()), dw(did.size());
      split_deferred_experts(ids.data(), w.data(), tokens, top_k, defer, kid.data(), kw.data(), did.data(), dw.data());
      for (int64_t t = 0; t < tokens; ++t) {
        std::vector<int32_t> all(kid.begin() + t * keep, kid.begin() + (t + 1) * keep);
        all.insert(all.end(), did.begin() + t * defer, did.begin() + (t + 1) * defer);
        std::sort(all.begin(), all.end());
        std::vector<int32_t> want(ids.begin() + t * top_k, ids.begin() + (t + 1) * top_k);
        CHECK(all == want);
        const float min_kept = *std::min_element(kw.begin() + t * keep, kw.begin() + (t + 1) * keep);
        const float max_deferred = *std::max_element(dw.begin() + t * defer, dw.begin() + (t + 1) * defer);
        CHECK(min_kept >= max_deferred);
        for (int64_t i = 0; i < keep; ++i)  // weights travel with their ids
          CHECK(kw[static_cast<size_t>(t * keep + i)] == w[static_cast<size_t>(kid[static_cast<size_t>(t * keep + i)])]);
      }
    }
  }
}

}  // namespace tandem::test
