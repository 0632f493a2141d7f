#include "backend/cpu/fast_attention.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

#include "backend/cpu/kernels/attention_block.hpp"
#include "tandem/backend/thread_pool.hpp"
#include "tandem/kv/kv_pool.hpp"

namespace tandem {
namespace {

using kernels::kAttendKeys;

// Query rows of one work item at most (tokens of a block × the KV head's query group): bounds the
// per-item state (running max/sum/values) that lives in the worker's scratch.
constexpr int64_t kMaxRows = 128;
// Query tokens of one sequence per work item: each key block is widened once for all of them.
constexpr int64_t kTokensPerItem = 8;

constexpr int kTileSlot = 0;  // transposed keys, values, scores, running state
constexpr int kRowSlot = 1;   // one cached key row widened to float32

}  // namespace

bool fast_gqa_attention_supports(const AttentionBatch& batch, int64_t heads, int64_t kv_heads, int64_t head_dim) {
  return batch.attention_rows == nullptr && head_dim > 0 && head_dim % 16 == 0 && kv_heads > 0 &&
         heads % kv_heads == 0 && heads / kv_heads <= kMaxRows;
}

void fast_gqa_attention(ThreadPool& pool, kernels::IsaLevel level, const KvPool& kv, int64_t layer,
                        const AttentionBatch& batch, const float* q, int64_t heads, int64_t kv_heads,
                        int64_t head_dim, float softmax_scale, float* out) {
  const kernels::AttendKeysFn attend = kernels::attend_keys_for(level);
  const int64_t group = heads / kv_heads;
  // A prompt chunk shares its cache rows among its tokens; a batch of sequences does not.
  const int64_t per_item = batch.one_sequence ? std::clamp<int64_t>(kMaxRows / group, 1, kTokensPerItem) : 1;
  const int64_t token_blocks = (batch.tokens + per_item - 1) / per_item;
  const int64_t hd = head_dim;

  pool.parallel_for(token_blocks * kv_heads, [&](int64_t begin, int64_t end, int worker) {
    std::array<const float*, kMaxRows> q_rows;
    std::array<int64_t, kMaxRows> visible;
    float* widened = pool.scratch(worker, kRowSlot, static_cast<size_t>(hd));
    const size_t rows_cap = static_cast<size_t>(per_item * group);
    float* tile = pool.scratch(worker, kTileSlot,
                               static_cast<size_t>(2 * kAttendKeys * hd) + rows_cap * (kAttendKeys + 2 + hd));
    float* keys_t = tile;
    float* values = keys_t + kAttendKeys * hd;
    float* scores = values + kAttendKeys * hd;
    float* max = scores + rows_cap * kAttendKeys;
    float* sum = max + rows_cap;
    float* acc = sum + rows_cap;

    for (int64_t item = begin; item < end; ++item) {
      // Later tokens of a prompt chunk read more keys: the last blocks go first, to balance the pool.
      const int64_t block = token_blocks - 1 - item / kv_heads;
      const int64_t g = item % kv_heads;
      const int64_t t0 = block * per_item, t1 = std::min(batch.tokens, t0 + per_item);
      // The token reading the most keys names the block ids (its row covers every key of the item).
      int64_t widest = t0;
      for (int64_t t = t0; t < t1; ++t)
        if (batch.positions[t] > batch.positions[widest]) widest = t;
      const int64_t keys = batch.positions[widest] + 1;
      const int32_t* blocks = batch.block_tables + widest * batch.table_stride;
      const int32_t open = open_rows_of(batch, widest);

      const int64_t rows = (t1 - t0) * group;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t t = t0 + r / group, h = g * group + r % group;
        q_rows[static_cast<size_t>(r)] = q + (t * heads + h) * hd;
      }
      std::fill(max, max + rows, -std::numeric_limits<float>::infinity());
      std::fill(sum, sum + rows, 0.0f);
      std::fill(acc, acc + rows * hd, 0.0f);

      kernels::AttendBlock b;
      b.rows = rows;
      b.head_dim = hd;
      b.q = q_rows.data();
      b.visible = visible.data();
      b.keys_t = keys_t;
      b.values = values;
      b.scale = softmax_scale;
      b.max = max;
      b.sum = sum;
      b.acc = acc;
      b.scores = scores;
      for (int64_t k0 = 0; k0 < keys; k0 += kAttendKeys) {
        const int64_t n = std::min(kAttendKeys, keys - k0);
        for (int64_t c = 0; c < n; ++c) {
          const float* k = kv.values_at(blocks, open, layer, 0, k0 + c, g * hd, hd, widened);
          for (int64_t d = 0; d < hd; ++d) keys_t[d * kAttendKeys + c] = k[d];
          float* v_row = values + c * hd;
          const float* v = kv.values_at(blocks, open, layer, 1, k0 + c, g * hd, hd, v_row);
          if (v != v_row) std::memcpy(v_row, v, static_cast<size_t>(hd) * sizeof(float));
        }
        for (int64_t c = n; c < kAttendKeys; ++c) {  // unread columns: finite, masked by `visible`
          for (int64_t d = 0; d < hd; ++d) keys_t[d * kAttendKeys + c] = 0.0f;
          std::fill(values + c * hd, values + (c + 1) * hd, 0.0f);
        }
        for (int64_t r = 0; r < rows; ++r)
          visible[static_cast<size_t>(r)] =
              std::clamp<int64_t>(batch.positions[t0 + r / group] + 1 - k0, 0, n);
        attend(b);
      }

      for (int64_t r = 0; r < rows; ++r) {
        const int64_t t = t0 + r / group, h = g * group + r % group;
        float* o = out + (t * heads + h) * hd;
        const float inv = 1.0f / sum[r];
        for (int64_t d = 0; d < hd; ++d) o[d] = acc[r * hd + d] * inv;
      }
    }
  });
}

}  // namespace tandem
