#include "tandem/ops/attention.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "tandem/backend/thread_pool.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/kv/kv_type.hpp"

namespace tandem {
namespace {

// Per-worker scratch slots (ThreadPool::scratch): attention scores, and a cached row widened to
// float32 when the pool stores f16/bf16 (an f32 pool's rows are read in place, so f32 results are
// bit-exact with a float cache).
constexpr int kScoresSlot = 0;
constexpr int kRowSlot = 1;

const float* read_values(const KvPool& kv, const std::byte* row, int64_t first, int64_t n, float* scratch) {
  if (kv.dtype() == KvType::f32) return reinterpret_cast<const float*>(row) + first;
  kv_decode_row(kv.dtype(), row + static_cast<size_t>(first) * kv_type_bytes(kv.dtype()), scratch, n);
  return scratch;
}

float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Softmax in place over scores[0, n); returns nothing, scores become probabilities.
void softmax_in_place(float* scores, int64_t n) {
  const float max_score = *std::max_element(scores, scores + n);
  double sum = 0;
  for (int64_t s = 0; s < n; ++s) {
    scores[s] = std::exp(scores[s] - max_score);
    sum += scores[s];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t s = 0; s < n; ++s) scores[s] *= inv;
}

}  // namespace

void gqa_attention(ThreadPool& pool, const KvPool& kv, int64_t layer, const AttentionBatch& batch,
                   const float* q, int64_t heads, int64_t kv_heads, int64_t head_dim, float softmax_scale,
                   float* out) {
  const int64_t group = heads / kv_heads;
  pool.parallel_for(batch.tokens * heads, [&](int64_t begin, int64_t end, int worker) {
    float* scratch = pool.scratch(worker, kRowSlot, static_cast<size_t>(head_dim));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / heads, h = item % heads, g = h / group;
      const int64_t n = batch.positions[t] + 1;
      const BlockTable& table = *batch.tables[t];
      const float* qh = q + (t * heads + h) * head_dim;
      float* scores = pool.scratch(worker, kScoresSlot, static_cast<size_t>(n));
      for (int64_t s = 0; s < n; ++s) {
        const float* kh = read_values(kv, table.row(kv, layer, 0, s), g * head_dim, head_dim, scratch);
        scores[s] = dot(qh, kh, head_dim) * softmax_scale;
      }
      softmax_in_place(scores, n);
      float* oh = out + (t * heads + h) * head_dim;
      std::fill(oh, oh + head_dim, 0.0f);
      for (int64_t s = 0; s < n; ++s) {
        const float* vh = read_values(kv, table.row(kv, layer, 1, s), g * head_dim, head_dim, scratch);
        for (int64_t i = 0; i < head_dim; ++i) oh[i] += scores[s] * vh[i];
      }
    }
  });
}

void mla_attention(ThreadPool& pool, const KvPool& kv, int64_t layer, const AttentionBatch& batch,
                   const float* q_latent, const float* q_rope, int64_t heads, int64_t kv_lora,
                   int64_t rope_dim, float softmax_scale, float* out) {
  pool.parallel_for(batch.tokens * heads, [&](int64_t begin, int64_t end, int worker) {
    float* scratch = pool.scratch(worker, kRowSlot, static_cast<size_t>(kv_lora + rope_dim));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / heads, h = item % heads;
      const int64_t n = batch.positions[t] + 1;
      const BlockTable& table = *batch.tables[t];
      const float* ql = q_latent + (t * heads + h) * kv_lora;
      const float* qr = q_rope + (t * heads + h) * rope_dim;
      float* scores = pool.scratch(worker, kScoresSlot, static_cast<size_t>(n));
      for (int64_t s = 0; s < n; ++s) {
        const float* cached = read_values(kv, table.row(kv, layer, 0, s), 0, kv_lora + rope_dim, scratch);
        scores[s] = (dot(ql, cached, kv_lora) + dot(qr, cached + kv_lora, rope_dim)) * softmax_scale;
      }
      softmax_in_place(scores, n);
      float* oh = out + (t * heads + h) * kv_lora;
      std::fill(oh, oh + kv_lora, 0.0f);
      for (int64_t s = 0; s < n; ++s) {
        const float* latent = read_values(kv, table.row(kv, layer, 0, s), 0, kv_lora, scratch);
        for (int64_t i = 0; i < kv_lora; ++i) oh[i] += scores[s] * latent[i];
      }
    }
  });
}

}  // namespace tandem
