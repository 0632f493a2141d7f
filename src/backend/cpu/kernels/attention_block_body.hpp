#pragma once
// The body of attend_keys (attention_block.hpp), written once with 16-float GCC/Clang vector types
// and included by attention_{scalar,avx2,avx512}.cpp, each compiled for its ISA: the compiler maps a
// 16-float vector onto one zmm, two ymm or four xmm registers. Internal linkage, so each ISA's copy
// stays its own.
#include <cmath>
#include <cstring>
#include <limits>

#include "backend/cpu/kernels/attention_block.hpp"

namespace {

using tandem::kernels::AttendBlock;
using tandem::kernels::kAttendKeys;
using tandem::kernels::kAttendMaxRows;

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
static_assert(sizeof(vf) == kAttendKeys * sizeof(float));

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
// Spelled lane by lane: GCC builds `vf{} + s` through the stack when a vector spans several
// registers (AVX2: attend_keys 2.1× slower that way).
inline vf splat(float s) { return vf{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }

inline vf select(vi mask, vf yes, vf no) { return (vf)(((vi)yes & mask) | ((vi)no & ~mask)); }

// Horizontal maximum and sum: lanes 8..15 folded onto 0..7, then 4..7 onto 0..3, then four scalars.
inline float reduce_max(vf v) {
  vf w = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v = select(v > w, v, w);
  w = __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  v = select(v > w, v, w);
  return std::max(std::max(v[0], v[1]), std::max(v[2], v[3]));
}
inline float reduce_sum(vf v) {
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  return (v[0] + v[1]) + (v[2] + v[3]);
}

// exp(x) for x ≤ 0 (scores minus their running max), relative error ~2e-7 over the range that does
// not underflow: x = n·ln2 + g with |g| ≤ ln2/2, exp(g) by its degree-6 Taylor polynomial, 2^n built
// in the exponent bits. Below -87 it returns ~2^-126 instead of a denormal or 0; callers mask the
// keys a row may not see.
inline vf exp_nonpositive(vf x) {
  const vf lo = splat(-87.0f);
  x = select(x < lo, lo, x);
  const vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const vf g = (x - n * 0.693359375f) + n * 2.12194440e-4f;              // Cody-Waite: ln2 in two parts
  vf p = splat(1.0f / 720);
  p = p * g + 1.0f / 120;
  p = p * g + 1.0f / 24;
  p = p * g + 1.0f / 6;
  p = p * g + 0.5f;
  p = p * g + 1.0f;
  p = p * g + 1.0f;
  const vi exponent = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * (vf)exponent;
}

// scores[r] = scale · (q[r] · keys) for rows [r0, r0 + N): N rows share each load of a key column.
template <int N>
inline void score_rows(const AttendBlock& b, int64_t r0) {
  vf acc[N];
  const float* q[N];
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) {
    acc[i] = vf{};
    q[i] = b.q[r0 + i];
  }
  for (int64_t d = 0; d < b.key_dim; ++d) {
    const vf k = load(b.keys_t + d * kAttendKeys);
#pragma GCC unroll 16
    for (int i = 0; i < N; ++i) acc[i] += q[i][d] * k;
  }
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) store(b.scores + (r0 + i) * kAttendKeys, acc[i] * b.scale);
}

// acc_row[d0, d0 + 16·C) = alpha · acc_row + Σ_{c < visible} p[c] · values[c][d0, d0 + 16·C).
template <int C>
inline void accumulate_values(const AttendBlock& b, float* acc_row, const float* p, int64_t visible, float alpha,
                              int64_t d0) {
  vf a[C];
#pragma GCC unroll 8
  for (int i = 0; i < C; ++i) a[i] = load(acc_row + d0 + 16 * i) * alpha;
  for (int64_t c = 0; c < visible; ++c) {
    const vf pc = splat(p[c]);
    const float* v = b.values + c * b.value_dim + d0;
#pragma GCC unroll 8
    for (int i = 0; i < C; ++i) a[i] += pc * load(v + 16 * i);
  }
#pragma GCC unroll 8
  for (int i = 0; i < C; ++i) store(acc_row + d0 + 16 * i, a[i]);
}

inline void attend_keys_body(const AttendBlock& b) {
  int64_t r = 0;
  for (; r + 8 <= b.rows; r += 8) score_rows<8>(b, r);
  for (; r + 4 <= b.rows; r += 4) score_rows<4>(b, r);
  for (; r < b.rows; ++r) score_rows<1>(b, r);

  vi lane;
  for (int i = 0; i < kAttendKeys; ++i) lane[i] = i;
  const vf minus_inf = splat(-std::numeric_limits<float>::infinity());
  // Per row: the new running maximum, the block's probabilities (in place of its scores) and their
  // sum; the rescale factors exp(old max − new max) then 16 rows at a time (a scalar std::exp per
  // row and block, ~20–40 cycles, against ~64 cycles of a 128-wide row's products).
  float shift[kAttendMaxRows + kAttendKeys];
  float block_sum[kAttendMaxRows];
  for (r = 0; r < b.rows; ++r) {
    const int64_t visible = b.visible[r];
    shift[r] = 0.0f;
    if (visible <= 0) continue;
    float* scores = b.scores + r * kAttendKeys;
    const vi seen = lane < (vi{} + static_cast<int32_t>(visible));
    const vf s = select(seen, load(scores), minus_inf);
    const float old_max = b.max[r], new_max = std::max(old_max, reduce_max(s));
    const vf p = select(seen, exp_nonpositive(s - new_max), vf{});
    block_sum[r] = reduce_sum(p);
    // Before the first block old_max is -inf: the factor only scales a zero sum and accumulator, so
    // exp_nonpositive's floor (~2^-126 instead of 0) changes nothing.
    shift[r] = old_max - new_max;
    b.max[r] = new_max;
    store(scores, p);
  }
  for (int64_t i = b.rows; i % kAttendKeys != 0; ++i) shift[i] = 0.0f;
  for (int64_t r0 = 0; r0 < b.rows; r0 += kAttendKeys) store(shift + r0, exp_nonpositive(load(shift + r0)));
  for (r = 0; r < b.rows; ++r) {
    const int64_t visible = b.visible[r];
    if (visible <= 0) continue;
    const float alpha = shift[r];
    const float* scores = b.scores + r * kAttendKeys;
    b.sum[r] = b.sum[r] * alpha + block_sum[r];
    float* acc_row = b.acc + r * b.value_dim;
    int64_t d0 = 0;
    for (; d0 + 128 <= b.value_dim; d0 += 128) accumulate_values<8>(b, acc_row, scores, visible, alpha, d0);
    switch ((b.value_dim - d0) / 16) {
      case 7: accumulate_values<7>(b, acc_row, scores, visible, alpha, d0); break;
      case 6: accumulate_values<6>(b, acc_row, scores, visible, alpha, d0); break;
      case 5: accumulate_values<5>(b, acc_row, scores, visible, alpha, d0); break;
      case 4: accumulate_values<4>(b, acc_row, scores, visible, alpha, d0); break;
      case 3: accumulate_values<3>(b, acc_row, scores, visible, alpha, d0); break;
      case 2: accumulate_values<2>(b, acc_row, scores, visible, alpha, d0); break;
      case 1: accumulate_values<1>(b, acc_row, scores, visible, alpha, d0); break;
      default: break;
    }
  }
}

}  // namespace
