// AMX-INT8 tile kernels for prefill (Q4_K, Q5_K, Q6_K). Built with -mavx512* and -mamx-tile/-mamx-int8;
// like dot_avx512.cpp, this file must not instantiate library templates or shared inline functions.
//
// One call computes a strip of up to 16 weight rows against all its tokens, 16 tokens per result tile:
//  1. pack: the strip's quants, unpacked to unsigned bytes, gathered into AMX's B-tile order
//     (per 4 consecutive values, the 16 rows side by side: [value / 4][row][4]), and per scale group
//     (32 values for Q4_K/Q5_K, 16 for Q6_K) and row the float factors of the group's dot product and
//     of the activation's group sum (the K-quants' minimums, Q6_K's −32 offset);
//  2. per 16 tokens and 256-value block: one TDPBSUD per scale group, A = the Q8K activations read in
//     place (signed, tokens × group bytes, row stride = the activation row stride), B = the packed
//     weights (unsigned) → int32 [token][row]; then per token, in AVX-512, Σ_g dot_g·(d·scale_g)
//     − Σ_g asum_g·(dmin·min_g), times the activation block's scale, accumulated in float.
// The integer sums are the scalar kernel's; only the float order differs.
//
// The tile instructions go through a policy class: HardwareTiles (the AMX instructions) or
// EmulatedTiles (the same semantics in plain code), so everything but the instructions themselves is
// tested on CPUs without AMX.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstddef>
#include <cstring>

#include "backend/cpu/kernels/activation_blocks.hpp"
#include "backend/cpu/kernels/dot_kernels.hpp"
#include "backend/cpu/kernels/quant_layouts.hpp"
#include "backend/cpu/kernels/tile_layout.hpp"

namespace tandem::kernels::amx {
namespace {

struct TileConfig {  // LDTILECFG's 64-byte operand, palette 1
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "tile configuration layout");

// Two sets of result / activation / weight tiles, used by alternate scale groups.
constexpr int kC0 = 0, kA0 = 1, kB0 = 2, kC1 = 3, kA1 = 4, kB1 = 5;

TileConfig make_config(int tokens, int group_bytes) {
  TileConfig c;
  std::memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int set = 0; set < 2; ++set) {
    const int base = set == 0 ? kC0 : kC1;
    c.rows[base] = static_cast<uint8_t>(tokens);  // result: tokens × 16 int32
    c.colsb[base] = 64;
    c.rows[base + 1] = static_cast<uint8_t>(tokens);  // activations: tokens × group bytes
    c.colsb[base + 1] = static_cast<uint16_t>(group_bytes);
    c.rows[base + 2] = static_cast<uint8_t>(group_bytes / 4);  // weights: group/4 × (16 rows × 4)
    c.colsb[base + 2] = 64;
  }
  return c;
}

// One scale group: C = 0; A = activations (row stride x_stride); B = weights (row stride 64);
// C += A·B (TDPBSUD); C stored (row stride 64). GCC's tile intrinsics paste the register number into
// the assembly text, so each set is spelled out with literal numbers.
struct HardwareTiles {
  void configure(const TileConfig& c) { _tile_loadconfig(&c); }
  template <int Set>
  void group_dot(const uint8_t* act, int64_t x_stride, const uint8_t* weights, int32_t* result) {
    static_assert(kC0 == 0 && kA0 == 1 && kB0 == 2 && kC1 == 3 && kA1 == 4 && kB1 == 5, "tile numbers");
    if constexpr (Set == 0) {
      _tile_zero(0);
      _tile_loadd(1, act, x_stride);
      _tile_loadd(2, weights, 64);
      _tile_dpbsud(0, 1, 2);
      _tile_stored(0, result, 64);
    } else {
      _tile_zero(3);
      _tile_loadd(4, act, x_stride);
      _tile_loadd(5, weights, 64);
      _tile_dpbsud(3, 4, 5);
      _tile_stored(3, result, 64);
    }
  }
  void release() { _tile_release(); }
};

// The instructions' semantics on 8 tiles of 16 rows × 64 bytes in memory.
struct EmulatedTiles {
  alignas(64) uint8_t reg[8][1024];
  int rows[8], colsb[8];

  void configure(const TileConfig& c) {
    for (int i = 0; i < 8; ++i) {
      rows[i] = c.rows[i];
      colsb[i] = c.colsb[i];
    }
  }
  template <int T>
  void zero() {
    std::memset(reg[T], 0, sizeof reg[T]);
  }
  template <int T>
  void load(const void* p, int64_t stride) {
    for (int r = 0; r < rows[T]; ++r)
      std::memcpy(reg[T] + 64 * r, static_cast<const uint8_t*>(p) + r * stride, static_cast<size_t>(colsb[T]));
  }
  template <int T>
  void store(void* p, int64_t stride) {
    for (int r = 0; r < rows[T]; ++r)
      std::memcpy(static_cast<uint8_t*>(p) + r * stride, reg[T] + 64 * r, static_cast<size_t>(colsb[T]));
  }
  // TDPBSUD: C[m][n] += Σ_k Σ_i A[m][4k + i] (signed) · B[k][4n + i] (unsigned).
  template <int C, int A, int B>
  void dot() {
    for (int m = 0; m < rows[C]; ++m)
      for (int n = 0; n < colsb[C] / 4; ++n) {
        int32_t acc;
        std::memcpy(&acc, reg[C] + 64 * m + 4 * n, 4);
        for (int k = 0; k < colsb[A] / 4; ++k)
          for (int i = 0; i < 4; ++i)
            acc += static_cast<int8_t>(reg[A][64 * m + 4 * k + i]) * static_cast<int32_t>(reg[B][64 * k + 4 * n + i]);
        std::memcpy(reg[C] + 64 * m + 4 * n, &acc, 4);
      }
  }
  template <int Set>
  void group_dot(const uint8_t* act, int64_t x_stride, const uint8_t* weights, int32_t* result) {
    constexpr int C = Set == 0 ? kC0 : kC1, A = C + 1, B = C + 2;
    zero<C>();
    load<A>(act, x_stride);
    load<B>(weights, 64);
    dot<C, A, B>();
    store<C>(result, 64);
  }
  void release() {}
};

inline float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// Byte offsets of the strip's rows (zero for lanes past `rows`, which the mask leaves untouched).
struct StripRows {
  __m512i offsets;
  __mmask16 valid;
  StripRows(int64_t row_stride, int rows) {
    alignas(64) int32_t o[16];
    for (int i = 0; i < 16; ++i) o[i] = i < rows ? static_cast<int32_t>(i * row_stride) : 0;
    offsets = _mm512_load_si512(o);
    valid = static_cast<__mmask16>((1u << rows) - 1u);
  }
  // The 4 bytes at `p` (inside row 0) and at the same place of every other row.
  __m512i gather(const uint8_t* p) const {
    return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), valid, offsets, p, 1);
  }
};

float* scale_block(uint8_t* ws, int64_t in, int64_t b) {
  return reinterpret_cast<float*>(ws + tile_scales_offset(in) + b * kTileScaleBlockBytes);
}

// Q4_K / Q5_K: scale group s = values 32s..32s+31 = the low (s even) or high (s odd) nibbles of
// qs[32·(s/2) + l]; Q5_K's fifth bit of value 32s + l is bit s of qh[l].
template <bool Q5>
void pack_k4(const uint8_t* w, int64_t row_stride, int rows, int64_t in, uint8_t* ws) {
  const StripRows strip(row_stride, rows);
  const __m512i m4 = _mm512_set1_epi32(0x0f0f0f0f), one = _mm512_set1_epi32(0x01010101);
  const int64_t block_bytes = Q5 ? kQ5KBytes : kQ4KBytes;
  for (int64_t b = 0; b < in / 256; ++b) {
    const uint8_t* blk = w + b * block_bytes;
    auto* packed = reinterpret_cast<__m512i*>(ws + tile_packed_offset(in) + b * kTilePackedBlockBytes);
    const uint8_t* qs = blk + (Q5 ? 48 : 16);
    for (int k4 = 0; k4 < 8; ++k4) {
      const __m512i high = Q5 ? strip.gather(blk + 16 + 4 * k4) : _mm512_setzero_si512();
      for (int j = 0; j < 4; ++j) {
        const __m512i q = strip.gather(qs + 32 * j + 4 * k4);
        __m512i lo = _mm512_and_si512(q, m4);
        __m512i hi = _mm512_and_si512(_mm512_srli_epi32(q, 4), m4);
        if (Q5) {
          lo = _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(high, 2 * j), one), 4));
          hi = _mm512_or_si512(hi, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(high, 2 * j + 1), one), 4));
        }
        _mm512_store_si512(packed + (2 * j) * 8 + k4, lo);
        _mm512_store_si512(packed + (2 * j + 1) * 8 + k4, hi);
      }
    }
    float* dot_scale = scale_block(ws, in, b);
    float* sum_scale = dot_scale + 256;
    for (int r = 0; r < kTileRows; ++r) {
      int sc[8] = {}, mn[8] = {};
      float d = 0, dmin = 0;
      if (r < rows) {
        const uint8_t* row_blk = blk + r * row_stride;
        d = half(row_blk);
        dmin = half(row_blk + 2);
        unpack_k4_scales(row_blk + 4, sc, mn);
      }
      for (int s = 0; s < 8; ++s) {
        dot_scale[s * 16 + r] = d * static_cast<float>(sc[s]);
        sum_scale[s * 16 + r] = dmin * static_cast<float>(mn[s]);
      }
    }
  }
}

// Q6_K: value 128h + 32q + l = low nibble (q < 2) or high nibble (q >= 2) of ql[64h + 32·(q%2) + l],
// plus bits 2q, 2q+1 of qh[32h + l] as bits 4-5; scale group g = 16 values, int8 scale; u − 32.
void pack_q6k(const uint8_t* w, int64_t row_stride, int rows, int64_t in, uint8_t* ws) {
  const StripRows strip(row_stride, rows);
  const __m512i m4 = _mm512_set1_epi32(0x0f0f0f0f), m2 = _mm512_set1_epi32(0x03030303);
  for (int64_t b = 0; b < in / 256; ++b) {
    const uint8_t* blk = w + b * kQ6KBytes;
    auto* packed = reinterpret_cast<__m512i*>(ws + tile_packed_offset(in) + b * kTilePackedBlockBytes);
    for (int h = 0; h < 2; ++h)
      for (int k4 = 0; k4 < 8; ++k4) {
        const __m512i a = strip.gather(blk + 64 * h + 4 * k4);
        const __m512i c = strip.gather(blk + 64 * h + 32 + 4 * k4);
        const __m512i hb = strip.gather(blk + 128 + 32 * h + 4 * k4);
        const __m512i low[4] = {_mm512_and_si512(a, m4), _mm512_and_si512(c, m4),
                                _mm512_and_si512(_mm512_srli_epi32(a, 4), m4),
                                _mm512_and_si512(_mm512_srli_epi32(c, 4), m4)};
        for (int q = 0; q < 4; ++q) {
          const __m512i top = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 2 * q), m2), 4);
          _mm512_store_si512(packed + 32 * h + 8 * q + k4, _mm512_or_si512(low[q], top));
        }
      }
    float* dot_scale = scale_block(ws, in, b);
    float* sum_scale = dot_scale + 256;
    for (int r = 0; r < kTileRows; ++r) {
      const uint8_t* row_blk = blk + r * row_stride;
      const float d = r < rows ? half(row_blk + 208) : 0.0f;
      for (int g = 0; g < 16; ++g) {
        const float s = r < rows ? d * static_cast<float>(static_cast<int8_t>(row_blk[192 + g])) : 0.0f;
        dot_scale[g * 16 + r] = s;
        sum_scale[g * 16 + r] = 32.0f * s;
      }
    }
  }
}

// G scale groups per 256-value block (8: Q4_K/Q5_K, 16: Q6_K).
template <int G, class Tiles>
void compute(Tiles& tiles, uint8_t* ws, int rows, const void* x, int64_t xs, int64_t tokens, int64_t in,
             float* y, int64_t ys) {
  constexpr int kGroup = 256 / G;
  auto* results = reinterpret_cast<int32_t*>(ws + tile_results_offset(in));
  const auto row_mask = static_cast<__mmask16>((1u << rows) - 1u);
  int configured = 0;
  for (int64_t t0 = 0; t0 < tokens; t0 += 16) {
    const int n = tokens - t0 < 16 ? static_cast<int>(tokens - t0) : 16;
    if (n != configured) {
      tiles.configure(make_config(n, kGroup));
      configured = n;
    }
    __m512 acc[16];
    for (int t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
    const uint8_t* x0 = static_cast<const uint8_t*>(x) + t0 * xs;
    for (int64_t b = 0; b < in / 256; ++b) {
      const uint8_t* act = x0 + b * static_cast<int64_t>(sizeof(ActQ8K)) + offsetof(ActQ8K, q);
      const uint8_t* packed = ws + tile_packed_offset(in) + b * kTilePackedBlockBytes;
      for (int g = 0; g < G; g += 2) {
        tiles.template group_dot<0>(act + g * kGroup, xs, packed + g * kGroup * 16, results + g * 256);
        tiles.template group_dot<1>(act + (g + 1) * kGroup, xs, packed + (g + 1) * kGroup * 16,
                                    results + (g + 1) * 256);
      }
      const float* dot_scale = reinterpret_cast<const float*>(ws + tile_scales_offset(in) + b * kTileScaleBlockBytes);
      const float* sum_scale = dot_scale + 256;
      for (int t = 0; t < n; ++t) {
        const auto* ab = reinterpret_cast<const ActQ8K*>(x0 + t * xs) + b;
        __m512 sum = _mm512_setzero_ps();
        for (int g = 0; g < G; ++g) {
          const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(results + g * 256 + t * 16));
          sum = _mm512_fmadd_ps(dot, _mm512_load_ps(dot_scale + g * 16), sum);
          const int group_sum = G == 8 ? ab->sums[2 * g] + ab->sums[2 * g + 1] : ab->sums[g];
          sum = _mm512_fnmadd_ps(_mm512_set1_ps(static_cast<float>(group_sum)), _mm512_load_ps(sum_scale + g * 16),
                                 sum);
        }
        acc[t] = _mm512_fmadd_ps(sum, _mm512_set1_ps(ab->d), acc[t]);
      }
    }
    for (int t = 0; t < n; ++t) _mm512_mask_storeu_ps(y + (t0 + t) * ys, row_mask, acc[t]);
  }
  tiles.release();
}

template <WeightKind Kind, class Tiles>
void tile_kernel(const uint8_t* w, int64_t row_stride, int rows, const void* x, int64_t x_stride, int64_t tokens,
                 int64_t in, float* y, int64_t y_stride, uint8_t* workspace) {
  if (rows <= 0 || tokens <= 0) return;
  Tiles tiles;
  if constexpr (Kind == WeightKind::q6_k) {
    pack_q6k(w, row_stride, rows, in, workspace);
    compute<16>(tiles, workspace, rows, x, x_stride, tokens, in, y, y_stride);
  } else {
    pack_k4<Kind == WeightKind::q5_k>(w, row_stride, rows, in, workspace);
    compute<8>(tiles, workspace, rows, x, x_stride, tokens, in, y, y_stride);
  }
}

template <class Tiles>
void fill(KernelTable& t) {
  t.tile[static_cast<int>(WeightKind::q4_k)] = tile_kernel<WeightKind::q4_k, Tiles>;
  t.tile[static_cast<int>(WeightKind::q5_k)] = tile_kernel<WeightKind::q5_k, Tiles>;
  t.tile[static_cast<int>(WeightKind::q6_k)] = tile_kernel<WeightKind::q6_k, Tiles>;
}

}  // namespace

void fill_kernels(KernelTable& t) noexcept { fill<HardwareTiles>(t); }
void fill_emulated_kernels(KernelTable& t) noexcept { fill<EmulatedTiles>(t); }

}  // namespace tandem::kernels::amx
