#include "tandem/backend/cpu/reference/moe.hpp"

#include <algorithm>
#include <cmath>

#include "tandem/backend/cpu/reference/linear.hpp"
#include "tandem/error.hpp"

namespace tandem {
namespace {

void silu_times(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

template <class T>
void grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

}  // namespace

void silu_glu_mlp(ThreadPool* pool, const LinearWeight& gate, const LinearWeight& up,
                  const LinearWeight& down, const float* x, int64_t tokens, FeedForwardWorkspace& ws,
                  float* out) {
  const int64_t inter = gate.out_features();
  grow(ws.gate_, tokens * inter);
  grow(ws.up_, tokens * inter);
  linear(pool, gate, x, tokens, ws.gate_.data());
  linear(pool, up, x, tokens, ws.up_.data());
  silu_times(ws.gate_.data(), ws.up_.data(), tokens * inter);
  linear(pool, down, ws.gate_.data(), tokens, out);
}

void moe_routed_experts(ThreadPool* pool, const ExpertWeights& experts, const float* x, int64_t tokens,
                        int64_t hidden, const int32_t* expert_ids, const float* weights, int64_t top_k,
                        FeedForwardWorkspace& ws, float* out) {
  const auto count = static_cast<int64_t>(experts.count());
  const int64_t routed = tokens * top_k;
  for (int64_t r = 0; r < routed; ++r)
    if (expert_ids[r] >= count) throw Error(ErrorKind::internal, "expert id out of range");
  grow(ws.expert_out_, routed * hidden);
  grow(ws.tokens_by_expert_, routed);
  ws.expert_begin_.assign(static_cast<size_t>(count + 1), 0);
  grow(ws.expert_fill_, count);

  // Counting sort of (token, slot) pairs by expert; pairs of a negative id are left out.
  for (int64_t r = 0; r < tokens * top_k; ++r)
    if (expert_ids[r] >= 0) ++ws.expert_begin_[static_cast<size_t>(expert_ids[r]) + 1];
  int64_t largest = 0, widest = 1;  // the most rows of one expert, the widest intermediate
  for (int64_t e = 0; e < count; ++e) {
    const int64_t n = ws.expert_begin_[static_cast<size_t>(e + 1)];
    if (n > 0) widest = std::max(widest, experts.gate[static_cast<size_t>(e)].out_features());
    largest = std::max(largest, n);
  }
  grow(ws.gate_, largest * widest);
  grow(ws.up_, largest * widest);
  grow(ws.gathered_, largest * hidden);
  for (int64_t e = 0; e < count; ++e)
    ws.expert_begin_[static_cast<size_t>(e + 1)] += ws.expert_begin_[static_cast<size_t>(e)];
  std::copy(ws.expert_begin_.begin(), ws.expert_begin_.begin() + count, ws.expert_fill_.begin());
  for (int64_t r = 0; r < tokens * top_k; ++r)
    if (expert_ids[r] >= 0)
      ws.tokens_by_expert_[static_cast<size_t>(ws.expert_fill_[static_cast<size_t>(expert_ids[r])]++)] =
          static_cast<int32_t>(r);

  // Each expert over its tokens; results land in per-(token, slot) rows, summed in slot order
  // afterwards so the result does not depend on which expert ran first.
  for (int64_t e = 0; e < count; ++e) {
    const int64_t begin = ws.expert_begin_[static_cast<size_t>(e)],
                  end = ws.expert_begin_[static_cast<size_t>(e + 1)];
    const int64_t n = end - begin;
    if (n == 0) continue;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t token = ws.tokens_by_expert_[static_cast<size_t>(begin + i)] / top_k;
      std::copy(x + token * hidden, x + (token + 1) * hidden, ws.gathered_.data() + i * hidden);
    }
    const LinearWeight& gate = experts.gate[static_cast<size_t>(e)];
    const int64_t inter = gate.out_features();
    linear(pool, gate, ws.gathered_.data(), n, ws.gate_.data());
    linear(pool, experts.up[static_cast<size_t>(e)], ws.gathered_.data(), n, ws.up_.data());
    silu_times(ws.gate_.data(), ws.up_.data(), n * inter);
    // The down projection writes into gathered_ (free again), then scatters to its (token, slot) row.
    linear(pool, experts.down[static_cast<size_t>(e)], ws.gate_.data(), n, ws.gathered_.data());
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = ws.tokens_by_expert_[static_cast<size_t>(begin + i)];
      std::copy(ws.gathered_.data() + i * hidden, ws.gathered_.data() + (i + 1) * hidden,
                ws.expert_out_.data() + r * hidden);
    }
  }
  for (int64_t t = 0; t < tokens; ++t) {
    float* o = out + t * hidden;
    std::fill(o, o + hidden, 0.0f);
    for (int64_t s = 0; s < top_k; ++s) {
      if (expert_ids[t * top_k + s] < 0) continue;
      const float w = weights[t * top_k + s];
      const float* y = ws.expert_out_.data() + (t * top_k + s) * hidden;
      for (int64_t i = 0; i < hidden; ++i) o[i] += w * y[i];
    }
  }
}

}  // namespace tandem
