// Operators the tiny fixtures do not reach: DeepSeek-V2 group-limited routing, the noaux_tc
// selection bias, RoPE layouts with linear scaling. References are the definitions, computed here.
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <map>
#include <utility>
#include <vector>

#include "tandem/backend/cpu/reference/rope.hpp"
#include "tandem/backend/cpu/reference/router.hpp"

using namespace tandem;

namespace {

std::map<int32_t, float> routed(const RoutingParams& p, const std::vector<float>& logits,
                                const std::vector<float>* bias) {
  std::vector<int32_t> ids(static_cast<size_t>(p.top_k));
  std::vector<float> weights(ids.size());
  RouterScratch scratch;
  route_tokens_to_experts(p, logits.data(), 1, bias ? bias->data() : nullptr, ids.data(), weights.data(), scratch);
  std::map<int32_t, float> out;
  for (size_t i = 0; i < ids.size(); ++i) out[ids[i]] = weights[i];
  return out;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

TEST_CASE("group-limited greedy routing keeps only the best groups", "[engine][ops][router]") {
  RoutingParams p;
  p.kind = RouterKind::softmax_group_topk;
  p.experts = 8;
  p.top_k = 2;
  p.n_group = 4;
  p.topk_group = 1;
  p.routed_scaling_factor = 1.5;
  // Plain top-2 would be {0, 6}; group {0, 1} has the best max, so its two experts are chosen.
  const std::vector<float> logits = {3.0f, 1.0f, -1.0f, -1.0f, 0.0f, 0.0f, 2.9f, 2.8f};
  double sum = 0;
  for (float l : logits) sum += std::exp(l);
  const auto got = routed(p, logits, nullptr);
  REQUIRE(got.size() == 2);
  REQUIRE(got.count(0) == 1);
  REQUIRE(got.count(1) == 1);
  CHECK(got.at(0) == Approx(std::exp(3.0) / sum * 1.5).epsilon(1e-6));
  CHECK(got.at(1) == Approx(std::exp(1.0) / sum * 1.5).epsilon(1e-6));

  p.kind = RouterKind::softmax_topk;
  const auto plain = routed(p, logits, nullptr);
  CHECK(plain.count(0) == 1);
  CHECK(plain.count(6) == 1);
}

TEST_CASE("noaux_tc: the bias chooses experts, unbiased scores weight them", "[engine][ops][router]") {
  RoutingParams p;
  p.kind = RouterKind::sigmoid_noaux_tc;
  p.experts = 8;
  p.top_k = 2;
  p.n_group = 4;
  p.topk_group = 2;
  p.norm_topk_prob = true;
  p.routed_scaling_factor = 2.5;
  const std::vector<float> logits = {2.0f, 1.9f, -1.0f, -1.0f, 0.5f, 0.4f, -2.0f, -2.0f};
  const std::vector<float> bias = {0, 0, 0, 0, 0, 2.0f, 0, 0};
  // Group scores (sum of top-2 biased): {1.75, 0.54, 3.22, 0.24} → groups 2 and 0; best biased
  // experts there: 5 (2.60) and 0 (0.88), although 1 has the higher unbiased score than 5.
  const auto got = routed(p, logits, &bias);
  REQUIRE(got.count(5) == 1);
  REQUIRE(got.count(0) == 1);
  const double s5 = sigmoid(0.4), s0 = sigmoid(2.0);
  CHECK(got.at(5) == Approx(s5 / (s5 + s0) * 2.5).epsilon(1e-6));
  CHECK(got.at(0) == Approx(s0 / (s5 + s0) * 2.5).epsilon(1e-6));
}

TEST_CASE("routing with NaN logits: NaN ranks last, ids stay distinct (as the CUDA router)", "[engine][ops][router]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto ids_of = [](const RoutingParams& p, const std::vector<float>& logits) {
    std::vector<int32_t> ids(static_cast<size_t>(p.top_k));
    std::vector<float> weights(ids.size());
    RouterScratch scratch;
    route_tokens_to_experts(p, logits.data(), 1, nullptr, ids.data(), weights.data(), scratch);
    return std::pair{ids, weights};
  };
  RoutingParams p;
  p.kind = RouterKind::sigmoid_noaux_tc;
  p.experts = 8;
  p.top_k = 3;
  p.norm_topk_prob = true;
  // Sigmoid scores are per expert: the NaN experts rank after every number, the rest by score.
  const auto [ids, weights] = ids_of(p, {0.5f, nan, 2.0f, nan, 1.0f, -1.0f, 0.0f, 3.0f});
  CHECK(ids == std::vector<int32_t>{7, 2, 4});
  for (float w : weights) CHECK(std::isfinite(w));
  // Fewer numbers than slots: then the NaN experts, lowest index first.
  CHECK(ids_of(p, {nan, 1.0f, nan, nan, 2.0f, nan, nan, nan}).first == std::vector<int32_t>{4, 1, 0});
  // Softmax: one NaN makes every probability NaN; all rank alike, so by index.
  p.kind = RouterKind::softmax_topk;
  for (size_t at : {size_t{0}, size_t{5}}) {
    std::vector<float> logits = {0.5f, 0.1f, 2.0f, 0.3f, 1.0f, -1.0f, 0.0f, 3.0f};
    logits[at] = nan;
    INFO("NaN at " << at);
    CHECK(ids_of(p, logits).first == std::vector<int32_t>{0, 1, 2});
  }
}

TEST_CASE("RoPE rotates half-split and interleaved pairs, with linear scaling", "[engine][ops][rope]") {
  ModelConfig c;
  c.rope_theta = 10000.0;
  c.rope_scaling.type = RopeScalingType::linear;
  c.rope_scaling.factor = 2.0;
  const int64_t position = 7;
  const float x[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  // inv_freq = {1, 10000^-0.5} / 2
  const double a0 = position * 1.0 / 2, a1 = position * 0.01 / 2;
  auto rotate = [](double u, double v, double angle) {
    return std::pair{u * std::cos(angle) - v * std::sin(angle), v * std::cos(angle) + u * std::sin(angle)};
  };
  for (RopeLayout layout : {RopeLayout::neox, RopeLayout::interleaved}) {
    c.rope_layout = layout;
    RotaryEmbedding rope(c, 4);
    float y[4] = {x[0], x[1], x[2], x[3]};
    rope.apply(y, 1, 4, 1, 4, &position);
    const int p0 = 0, p1 = layout == RopeLayout::neox ? 2 : 1;  // first pair
    const int q0 = layout == RopeLayout::neox ? 1 : 2, q1 = 3;  // second pair
    const auto [r00, r01] = rotate(x[p0], x[p1], a0);
    const auto [r10, r11] = rotate(x[q0], x[q1], a1);
    INFO((layout == RopeLayout::neox ? "neox" : "interleaved"));
    CHECK(y[p0] == Approx(r00).epsilon(1e-6));
    CHECK(y[p1] == Approx(r01).epsilon(1e-6));
    CHECK(y[q0] == Approx(r10).epsilon(1e-6));
    CHECK(y[q1] == Approx(r11).epsilon(1e-6));
  }
}

TEST_CASE("MLA softmax scale carries YaRN's mscale squared", "[engine][ops][rope]") {
  ModelConfig c;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.rope_scaling.type = RopeScalingType::yarn;
  c.rope_scaling.factor = 40.0;
  c.rope_scaling.mscale_all_dim = 1.0;
  const double m = 0.1 * std::log(40.0) + 1.0;  // DeepSeek-V3's numbers
  CHECK(mla_softmax_scale(c) == Approx(m * m / std::sqrt(192.0)).epsilon(1e-12));
  c.rope_scaling.type = RopeScalingType::none;
  CHECK(mla_softmax_scale(c) == Approx(1 / std::sqrt(192.0)).epsilon(1e-12));
}
