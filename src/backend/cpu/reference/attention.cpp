#include "tandem/backend/cpu/reference/attention.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "tandem/backend/thread_pool.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/kv/kv_type.hpp"

namespace tandem {
namespace {

// Per-worker scratch slots (ThreadPool::scratch): attention scores, and a cached row widened or
// dequantised to float32 (an f32 pool's rows are read in place, so f32 results are bit-exact with a
// float cache).
constexpr int kScoresSlot = 0;
constexpr int kRowSlot = 1;

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
  // One item per (token, KV head): each cached K and V row slice is widened once and used by the
  // `group` query heads that read it. With attention rows to fill, one item per token (its heads
  // add into one row).
  const bool sums = batch.attention_rows != nullptr;
  const int64_t per_item = sums ? kv_heads : 1;
  pool.parallel_for(batch.tokens * kv_heads / per_item, [&](int64_t begin, int64_t end, int worker) {
    float* row = pool.scratch(worker, kRowSlot, static_cast<size_t>(head_dim));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item * per_item / kv_heads;
      const int64_t n = batch.positions[t] + 1;
      const int32_t* blocks = batch.block_tables + t * batch.table_stride;
      const int32_t open = open_rows_of(batch, t);
      float* scores = pool.scratch(worker, kScoresSlot, static_cast<size_t>(group * n));
      float* sum_row = sums ? batch.attention_rows[t] : nullptr;
      for (int64_t g = item * per_item % kv_heads; g < item * per_item % kv_heads + per_item; ++g) {
        const float* qg = q + (t * heads + g * group) * head_dim;
        for (int64_t s = 0; s < n; ++s) {
          const float* kh = kv.values_at(blocks, open, layer, 0, s, g * head_dim, head_dim, row);
          for (int64_t j = 0; j < group; ++j)
            scores[j * n + s] = dot(qg + j * head_dim, kh, head_dim) * softmax_scale;
        }
        for (int64_t j = 0; j < group; ++j) softmax_in_place(scores + j * n, n);
        float* og = out + (t * heads + g * group) * head_dim;
        std::fill(og, og + group * head_dim, 0.0f);
        for (int64_t s = 0; s < n; ++s) {
          const float* vh = kv.values_at(blocks, open, layer, 1, s, g * head_dim, head_dim, row);
          for (int64_t j = 0; j < group; ++j) {
            const float p = scores[j * n + s];
            float* oh = og + j * head_dim;
            for (int64_t i = 0; i < head_dim; ++i) oh[i] += p * vh[i];
          }
        }
        if (sum_row)
          for (int64_t j = 0; j < group; ++j)
            for (int64_t s = 0; s < n; ++s) sum_row[s] += scores[j * n + s];
      }
    }
  });
}

void mla_attention(ThreadPool& pool, const KvPool& kv, int64_t layer, const AttentionBatch& batch,
                   const float* q_latent, const float* q_rope, int64_t heads, int64_t kv_lora,
                   int64_t rope_dim, float softmax_scale, float* out) {
  const bool sums = batch.attention_rows != nullptr;
  const int64_t per_item = sums ? heads : 1;
  pool.parallel_for(batch.tokens * heads / per_item, [&](int64_t begin, int64_t end, int worker) {
    float* row = pool.scratch(worker, kRowSlot, static_cast<size_t>(kv_lora + rope_dim));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item * per_item / heads;
      const int64_t n = batch.positions[t] + 1;
      const int32_t* blocks = batch.block_tables + t * batch.table_stride;
      const int32_t open = open_rows_of(batch, t);
      float* scores = pool.scratch(worker, kScoresSlot, static_cast<size_t>(n));
      float* sum_row = sums ? batch.attention_rows[t] : nullptr;
      for (int64_t h = item * per_item % heads; h < item * per_item % heads + per_item; ++h) {
        const float* ql = q_latent + (t * heads + h) * kv_lora;
        const float* qr = q_rope + (t * heads + h) * rope_dim;
        for (int64_t s = 0; s < n; ++s) {
          const float* cached = kv.values_at(blocks, open, layer, 0, s, 0, kv_lora + rope_dim, row);
          scores[s] = (dot(ql, cached, kv_lora) + dot(qr, cached + kv_lora, rope_dim)) * softmax_scale;
        }
        softmax_in_place(scores, n);
        float* oh = out + (t * heads + h) * kv_lora;
        std::fill(oh, oh + kv_lora, 0.0f);
        for (int64_t s = 0; s < n; ++s) {
          const float* latent = kv.values_at(blocks, open, layer, 0, s, 0, kv_lora, row);
          for (int64_t i = 0; i < kv_lora; ++i) oh[i] += scores[s] * latent[i];
        }
        if (sum_row)
          for (int64_t s = 0; s < n; ++s) sum_row[s] += scores[s];
      }
    }
  });
}

}  // namespace tandem
