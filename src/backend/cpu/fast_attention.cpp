#include "backend/cpu/fast_attention.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "tandem/backend/thread_pool.hpp"
#include "tandem/kv/kv_pool.hpp"

namespace tandem {
namespace {

using kernels::kAttendKeys;

// Query tokens of one sequence per work item: each key block is widened once for all of them.
constexpr int64_t kTokensPerItem = 8;

constexpr int kTileSlot = 0;  // transposed keys, values, scores, running state (+ MLA's joined queries)
constexpr int kRowSlot = 1;   // one cached key row widened to float32

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// A prompt chunk's key blocks are widened once into a shared buffer (instead of once per item that
// reads them) when at least this many items of a head read them and the buffer stays under the cap.
constexpr int64_t kSharedMinTokenBlocks = 4;
constexpr int64_t kSharedMaxBytes = int64_t{256} << 20;
// What of that buffer stays allocated between calls (a long prompt's larger one is let go after it).
constexpr int64_t kSharedKeepBytes = int64_t{32} << 20;

}  // namespace

// What differs between GQA and MLA: where a head's query, key, value and output rows are.
struct CpuFlashAttention::Problem {
  int64_t kv_heads = 0, group = 0;      // query heads = kv_heads · group
  int64_t key_dim = 0, value_dim = 0;
  const float* q = nullptr;             // GQA: [tokens][heads][key_dim]; MLA: q_latent [tokens][heads][value_dim]
  const float* q_rope = nullptr;        // MLA: [tokens][heads][key_dim - value_dim]; GQA: null
  bool values_in_key_row = false;       // MLA: a value is the first value_dim of its key row (plane 0)
  float* out = nullptr;                 // [tokens][heads][value_dim]
};

CpuFlashAttention::CpuFlashAttention(ThreadPool& pool, kernels::IsaLevel level)
    : pool_(pool), attend_(kernels::attend_keys_for(level)) {}

void CpuFlashAttention::run(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const Problem& p,
                            float softmax_scale) {
  std::lock_guard lock(mutex_);
  const int64_t group = p.group, heads = p.kv_heads * p.group, kd = p.key_dim, vd = p.value_dim;
  const int64_t rope = kd - vd;
  // A prompt chunk shares its cache rows among its tokens; a batch of sequences does not.
  const int64_t per_item = batch.one_sequence ? std::clamp<int64_t>(kFlashMaxRows / group, 1, kTokensPerItem) : 1;
  const int64_t token_blocks = (batch.tokens + per_item - 1) / per_item;
  const int64_t items = token_blocks * p.kv_heads;
  const auto rows_cap = per_item * group;

  // Fewer items than threads (decode): each item's keys in `splits` ranges of split_keys, a multiple
  // of the key block, each range's softmax state kept in partials_ and merged below.
  int64_t last_token = 0;  // the token reading the most keys (its table covers a prompt chunk's every key)
  for (int64_t t = 0; t < batch.tokens; ++t)
    if (batch.positions[t] > batch.positions[last_token]) last_token = t;
  const int64_t longest = batch.tokens > 0 ? batch.positions[last_token] + 1 : 0;
  int64_t splits = 1;
  if (items < pool_.size() && longest >= 2 * min_split_keys_)
    splits = std::min((2 * pool_.size() + items - 1) / items, longest / min_split_keys_);
  const int64_t split_keys = (longest + splits - 1) / splits / kAttendKeys * kAttendKeys + kAttendKeys;
  const int64_t state_floats = rows_cap * (2 + vd);  // max, sum, acc of one (item, split)
  if (splits > 1) {
    const auto need = static_cast<size_t>(items * splits * state_floats);
    if (partials_.size() < need) partials_.resize(need);
  }

  // The rows (token, head) of item i: t0 + r / group, g · group + r % group.
  const auto item_tokens = [&](int64_t item) {
    // Later tokens of a prompt chunk read more keys: the last blocks go first, to balance the pool.
    const int64_t block = token_blocks - 1 - item / p.kv_heads;
    const int64_t t0 = block * per_item;
    return std::pair{t0, std::min(batch.tokens, t0 + per_item)};
  };

  // Keys [k0, k0 + n) of KV head g widened: keys_t [kd][kAttendKeys] (transposed), values
  // [kAttendKeys][vd]; unread columns zero (finite, masked by `visible`).
  const auto widen_block = [&](const int32_t* blocks, int32_t open, int64_t g, int64_t k0, int64_t n, float* row,
                               float* keys_t, float* values) {
    const int64_t key_first = p.values_in_key_row ? 0 : g * kd;
    for (int64_t c = 0; c < n; ++c) {
      const float* k = kv.values_at(blocks, open, layer, 0, k0 + c, key_first, kd, row);
      for (int64_t d = 0; d < kd; ++d) keys_t[d * kAttendKeys + c] = k[d];
      float* v_row = values + c * vd;
      const float* v = p.values_in_key_row ? k : kv.values_at(blocks, open, layer, 1, k0 + c, g * vd, vd, v_row);
      if (v != v_row) std::memcpy(v_row, v, static_cast<size_t>(vd) * sizeof(float));
    }
    for (int64_t c = n; c < kAttendKeys; ++c) {
      for (int64_t d = 0; d < kd; ++d) keys_t[d * kAttendKeys + c] = 0.0f;
      std::fill(values + c * vd, values + (c + 1) * vd, 0.0f);
    }
  };

  // A prompt chunk's items of one head read the same keys (each up to its own last token): widen
  // every key block once, for all of them, when several items share it and the copy is not too big.
  const int64_t block_floats = kAttendKeys * (kd + vd);
  const int64_t shared_blocks = (longest + kAttendKeys - 1) / kAttendKeys;
  const float* shared = nullptr;
  if (share_prompt_keys_ && batch.one_sequence && splits == 1 && token_blocks >= kSharedMinTokenBlocks &&
      p.kv_heads * shared_blocks * block_floats * static_cast<int64_t>(sizeof(float)) <= kSharedMaxBytes) {
    const auto need = static_cast<size_t>(p.kv_heads * shared_blocks * block_floats);
    if (shared_keys_.size() < need) shared_keys_.resize(need);
    const int32_t* blocks = batch.block_tables + last_token * batch.table_stride;
    const int32_t open = open_rows_of(batch, last_token);
    float* base = shared_keys_.data();
    pool_.parallel_for(p.kv_heads * shared_blocks, [&](int64_t begin, int64_t end, int worker) {
      float* row = pool_.scratch(worker, kRowSlot, static_cast<size_t>(kd));
      for (int64_t i = begin; i < end; ++i) {
        const int64_t g = i / shared_blocks, k0 = i % shared_blocks * kAttendKeys;
        float* keys_t = base + i * block_floats;
        widen_block(blocks, open, g, k0, std::min(kAttendKeys, longest - k0), row, keys_t, keys_t + kAttendKeys * kd);
      }
    });
    shared = base;
  }

  pool_.parallel_for(items * splits, [&](int64_t begin, int64_t end, int worker) {
    std::array<const float*, kFlashMaxRows> q_rows;
    std::array<int64_t, kFlashMaxRows> visible;
    float* widened = pool_.scratch(worker, kRowSlot, static_cast<size_t>(kd));
    const int64_t joined_q = p.q_rope != nullptr ? rows_cap * kd : 0;
    float* keys_t = pool_.scratch(worker, kTileSlot,
                                  static_cast<size_t>(kAttendKeys * (kd + vd) + rows_cap * kAttendKeys + joined_q +
                                                      (splits > 1 ? 0 : state_floats)));
    float* values = keys_t + kAttendKeys * kd;
    float* scores = values + kAttendKeys * vd;
    float* q_joined = scores + rows_cap * kAttendKeys;

    for (int64_t work = begin; work < end; ++work) {
      const int64_t item = work / splits, split = work % splits;
      const int64_t g = item % p.kv_heads;
      const auto [t0, t1] = item_tokens(item);
      // The token reading the most keys names the block ids (its row covers every key of the item).
      int64_t widest = t0;
      for (int64_t t = t0; t < t1; ++t)
        if (batch.positions[t] > batch.positions[widest]) widest = t;
      const int64_t keys = batch.positions[widest] + 1;
      const int64_t k_begin = split * split_keys, k_end = std::min(keys, k_begin + split_keys);
      const int32_t* blocks = batch.block_tables + widest * batch.table_stride;
      const int32_t open = open_rows_of(batch, widest);

      float* state = splits > 1 ? partials_.data() + work * state_floats : q_joined + joined_q;
      float* max = state;
      float* sum = max + rows_cap;
      float* acc = sum + rows_cap;
      const int64_t rows = (t1 - t0) * group;
      std::fill(max, max + rows, kMinusInf);
      std::fill(sum, sum + rows, 0.0f);
      std::fill(acc, acc + rows * vd, 0.0f);
      if (k_begin >= k_end) continue;  // a split past this item's keys: an empty state

      for (int64_t r = 0; r < rows; ++r) {
        const int64_t head_row = (t0 + r / group) * heads + g * group + r % group;
        if (p.q_rope == nullptr) {
          q_rows[static_cast<size_t>(r)] = p.q + head_row * kd;
        } else {  // MLA: [latent query | rotary query], as the cached row is [latent | rotary key]
          float* joined = q_joined + r * kd;
          std::memcpy(joined, p.q + head_row * vd, static_cast<size_t>(vd) * sizeof(float));
          std::memcpy(joined + vd, p.q_rope + head_row * rope, static_cast<size_t>(rope) * sizeof(float));
          q_rows[static_cast<size_t>(r)] = joined;
        }
      }

      kernels::AttendBlock b;
      b.rows = rows;
      b.key_dim = kd;
      b.value_dim = vd;
      b.q = q_rows.data();
      b.visible = visible.data();
      b.keys_t = keys_t;
      b.values = values;
      b.scale = softmax_scale;
      b.max = max;
      b.sum = sum;
      b.acc = acc;
      b.scores = scores;
      for (int64_t k0 = k_begin; k0 < k_end; k0 += kAttendKeys) {
        const int64_t n = std::min(kAttendKeys, k_end - k0);
        if (shared != nullptr) {
          b.keys_t = shared + (g * shared_blocks + k0 / kAttendKeys) * block_floats;
          b.values = b.keys_t + kAttendKeys * kd;
        } else {
          widen_block(blocks, open, g, k0, n, widened, keys_t, values);
        }
        for (int64_t r = 0; r < rows; ++r)
          visible[static_cast<size_t>(r)] = std::clamp<int64_t>(batch.positions[t0 + r / group] + 1 - k0, 0, n);
        attend_(b);
      }

      if (splits > 1) continue;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t head_row = (t0 + r / group) * heads + g * group + r % group;
        float* o = p.out + head_row * vd;
        const float inv = 1.0f / sum[r];
        for (int64_t d = 0; d < vd; ++d) o[d] = acc[r * vd + d] * inv;
      }
    }
  });
  if (shared_keys_.capacity() * sizeof(float) > static_cast<size_t>(kSharedKeepBytes)) std::vector<float>().swap(shared_keys_);
  if (splits == 1) return;

  // Merge each item's split states: out = Σ_s e^(m_s − m) acc_s / Σ_s e^(m_s − m) sum_s, m = max_s m_s.
  pool_.parallel_for(items, [&](int64_t begin, int64_t end, int) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item % p.kv_heads;
      const auto [t0, t1] = item_tokens(item);
      const float* first = partials_.data() + item * splits * state_floats;
      for (int64_t r = 0; r < (t1 - t0) * group; ++r) {
        float m = kMinusInf;
        for (int64_t s = 0; s < splits; ++s) m = std::max(m, first[s * state_floats + r]);
        float* o = p.out + ((t0 + r / group) * heads + g * group + r % group) * vd;
        std::fill(o, o + vd, 0.0f);
        float total = 0;
        for (int64_t s = 0; s < splits; ++s) {
          const float* state = first + s * state_floats;
          if (state[rows_cap + r] == 0.0f) continue;  // no key of this range is visible to the row
          const float weight = std::exp(state[r] - m);
          total += weight * state[rows_cap + r];
          const float* acc = state + 2 * rows_cap + r * vd;
          for (int64_t d = 0; d < vd; ++d) o[d] += weight * acc[d];
        }
        const float inv = 1.0f / total;
        for (int64_t d = 0; d < vd; ++d) o[d] *= inv;
      }
    }
  });
}

bool fast_gqa_attention_supports(const AttentionBatch& batch, int64_t heads, int64_t kv_heads, int64_t head_dim) {
  return batch.attention_rows == nullptr && head_dim > 0 && head_dim % 16 == 0 && kv_heads > 0 &&
         heads % kv_heads == 0 && heads / kv_heads <= kFlashMaxRows;
}

bool fast_mla_attention_supports(const AttentionBatch& batch, int64_t heads, int64_t kv_lora) {
  return batch.attention_rows == nullptr && kv_lora > 0 && kv_lora % 16 == 0 && heads > 0 && heads <= kFlashMaxRows;
}

void CpuFlashAttention::gqa(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q,
                            int64_t heads, int64_t kv_heads, int64_t head_dim, float softmax_scale, float* out) {
  Problem p;
  p.kv_heads = kv_heads;
  p.group = heads / kv_heads;
  p.key_dim = p.value_dim = head_dim;
  p.q = q;
  p.out = out;
  run(kv, layer, batch, p, softmax_scale);
}

void CpuFlashAttention::mla(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q_latent,
                            const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                            float* out) {
  Problem p;
  p.kv_heads = 1;
  p.group = heads;
  p.key_dim = kv_lora + rope_dim;
  p.value_dim = kv_lora;
  p.q = q_latent;
  p.q_rope = q_rope;
  p.values_in_key_row = true;
  p.out = out;
  run(kv, layer, batch, p, softmax_scale);
}

}  // namespace tandem
