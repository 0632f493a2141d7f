#pragma once
// The body of attend_keys (attention_block.hpp), written once with GCC/Clang vector types of
// TANDEM_ATTEND_LANES floats (16 unless the including file says otherwise) and included by
// attention_{scalar,avx2,avx512}.cpp, each compiled for its ISA. AVX-512 takes 16 lanes (one zmm);
// AVX2 takes 8 (one ymm): GCC lowers a 16-float vector on AVX2 through general registers and the
// stack, 7× slower than the same work in 8-float vectors. A block of kAttendKeys keys is
// kAttendKeys / lanes vectors. Internal linkage, so each ISA's copy stays its own.
#include <cmath>
#include <cstring>
#include <limits>

#include "backend/cpu/kernels/attention_block.hpp"

#ifndef TANDEM_ATTEND_LANES
#define TANDEM_ATTEND_LANES 16
#endif

namespace {

using tandem::kernels::AttendBlock;
using tandem::kernels::kAttendKeys;
using tandem::kernels::kAttendMaxRows;

constexpr int kLanes = TANDEM_ATTEND_LANES;
constexpr int kKeyVectors = static_cast<int>(kAttendKeys) / kLanes;  // vectors per key block
static_assert(kKeyVectors * kLanes == kAttendKeys && (kLanes == 8 || kLanes == 16));

typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
// Spelled lane by lane: GCC builds `vf{} + s` through the stack when a vector spans several registers.
inline vf splat(float s) {
#if TANDEM_ATTEND_LANES == 16
  return vf{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
#else
  return vf{s, s, s, s, s, s, s, s};
#endif
}

inline vf select(vi mask, vf yes, vf no) { return (vf)(((vi)yes & mask) | ((vi)no & ~mask)); }
inline vf vmax(vf a, vf b) { return select(a > b, a, b); }

// Horizontal maximum and sum of one vector: halves folded until four lanes are left.
inline float reduce_max(vf v) {
#if TANDEM_ATTEND_LANES == 16
  v = vmax(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = vmax(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
#else
  v = vmax(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3));
#endif
  return std::max(std::max(v[0], v[1]), std::max(v[2], v[3]));
}
inline float reduce_sum(vf v) {
#if TANDEM_ATTEND_LANES == 16
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
#else
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
#endif
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
  const vf g = (x - n * 0.693359375f) + n * 2.12194440e-4f;             // Cody-Waite: ln2 in two parts
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
  vf acc[N][kKeyVectors];
  const float* q[N];
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) {
#pragma GCC unroll 2
    for (int j = 0; j < kKeyVectors; ++j) acc[i][j] = vf{};
    q[i] = b.q[r0 + i];
  }
  for (int64_t d = 0; d < b.key_dim; ++d) {
    vf k[kKeyVectors];
#pragma GCC unroll 2
    for (int j = 0; j < kKeyVectors; ++j) k[j] = load(b.keys_t + d * kAttendKeys + j * kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < N; ++i) {
      const vf qd = splat(q[i][d]);
#pragma GCC unroll 2
      for (int j = 0; j < kKeyVectors; ++j) acc[i][j] += qd * k[j];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < kKeyVectors; ++j)
      store(b.scores + (r0 + i) * kAttendKeys + j * kLanes, acc[i][j] * b.scale);
}

// acc_row[d0, d0 + lanes·C) = alpha · acc_row + Σ_{c < visible} p[c] · values[c][d0, d0 + lanes·C).
template <int C>
inline void accumulate_values(const AttendBlock& b, float* acc_row, const float* p, int64_t visible,
                              float alpha, int64_t d0) {
  vf a[C];
#pragma GCC unroll 8
  for (int i = 0; i < C; ++i) a[i] = load(acc_row + d0 + kLanes * i) * alpha;
  for (int64_t c = 0; c < visible; ++c) {
    const vf pc = splat(p[c]);
    const float* v = b.values + c * b.value_dim + d0;
#pragma GCC unroll 8
    for (int i = 0; i < C; ++i) a[i] += pc * load(v + kLanes * i);
  }
#pragma GCC unroll 8
  for (int i = 0; i < C; ++i) store(acc_row + d0 + kLanes * i, a[i]);
}

inline void attend_keys_body(const AttendBlock& b) {
  // Rows per score pass: 8 rows × one vector (AVX-512) or 4 rows × two (AVX2) of accumulators.
  constexpr int kWideRows = kLanes == 16 ? 8 : 4;
  int64_t r = 0;
  for (; r + kWideRows <= b.rows; r += kWideRows) score_rows<kWideRows>(b, r);
  if constexpr (kWideRows > 4)
    for (; r + 4 <= b.rows; r += 4) score_rows<4>(b, r);
  for (; r < b.rows; ++r) score_rows<1>(b, r);

  vi lane;
  for (int i = 0; i < kLanes; ++i) lane[i] = i;
  const vf minus_inf = splat(-std::numeric_limits<float>::infinity());
  // Per row: the new running maximum, the block's probabilities (in place of its scores) and their
  // sum; the rescale factors exp(old max − new max) then a vector of rows at a time (a scalar
  // std::exp per row and block, ~20–40 cycles, against ~64 cycles of a 128-wide row's products).
  float shift[kAttendMaxRows + kAttendKeys];
  float block_sum[kAttendMaxRows];
  for (r = 0; r < b.rows; ++r) {
    const int64_t visible = b.visible[r];
    shift[r] = 0.0f;
    if (visible <= 0) continue;
    float* scores = b.scores + r * kAttendKeys;
    vf s[kKeyVectors];
    vf top = minus_inf;
#pragma GCC unroll 2
    for (int j = 0; j < kKeyVectors; ++j) {
      const vi seen = (lane + j * kLanes) < (vi{} + static_cast<int32_t>(visible));
      s[j] = select(seen, load(scores + j * kLanes), minus_inf);
      top = vmax(top, s[j]);
    }
    const float old_max = b.max[r], new_max = std::max(old_max, reduce_max(top));
    vf total = vf{};
#pragma GCC unroll 2
    for (int j = 0; j < kKeyVectors; ++j) {
      const vi seen = (lane + j * kLanes) < (vi{} + static_cast<int32_t>(visible));
      const vf p = select(seen, exp_nonpositive(s[j] - new_max), vf{});
      total += p;
      store(scores + j * kLanes, p);
    }
    block_sum[r] = reduce_sum(total);
    // Before the first block old_max is -inf: the factor only scales a zero sum and accumulator, so
    // exp_nonpositive's floor (~2^-126 instead of 0) changes nothing.
    shift[r] = old_max - new_max;
    b.max[r] = new_max;
  }
  for (int64_t i = b.rows; i % kLanes != 0; ++i) shift[i] = 0.0f;
  for (int64_t r0 = 0; r0 < b.rows; r0 += kLanes) store(shift + r0, exp_nonpositive(load(shift + r0)));
  for (r = 0; r < b.rows; ++r) {
    const int64_t visible = b.visible[r];
    if (visible <= 0) continue;
    const float alpha = shift[r];
    const float* scores = b.scores + r * kAttendKeys;
    b.sum[r] = b.sum[r] * alpha + block_sum[r];
    float* acc_row = b.acc + r * b.value_dim;
    // Eight accumulators a pass (128 values on AVX-512, 64 on AVX2), then the rest in one pass.
    int64_t d0 = 0;
    for (; d0 + 8 * kLanes <= b.value_dim; d0 += 8 * kLanes)
      accumulate_values<8>(b, acc_row, scores, visible, alpha, d0);
    switch ((b.value_dim - d0) / kLanes) {
      case 7:
        accumulate_values<7>(b, acc_row, scores, visible, alpha, d0);
        break;
      case 6:
        accumulate_values<6>(b, acc_row, scores, visible, alpha, d0);
        break;
      case 5:
        accumulate_values<5>(b, acc_row, scores, visible, alpha, d0);
        break;
      case 4:
        accumulate_values<4>(b, acc_row, scores, visible, alpha, d0);
        break;
      case 3:
        accumulate_values<3>(b, acc_row, scores, visible, alpha, d0);
        break;
      case 2:
        accumulate_values<2>(b, acc_row, scores, visible, alpha, d0);
        break;
      case 1:
        accumulate_values<1>(b, acc_row, scores, visible, alpha, d0);
        break;
      default:
        break;
    }
  }
}

}  // namespace
