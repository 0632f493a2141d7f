// AMX-INT8 tile kernels for prefill (Q4_K, Q5_K, Q6_K). Built with -mavx512* and -mamx-tile/-mamx-int8;
// like dot_avx512.cpp, this file must not instantiate library templates or shared inline functions.
//
// One call computes a strip of up to 16 weight rows against all its tokens, 16 tokens per result tile:
//  1. pack (tile_pack.hpp): the strip's quants as unsigned bytes in AMX's B-tile order, and per
//     scale group the float factors of the group's dot product and of the activation's group sum;
//  2. per 16 tokens and 256-value block: one TDPBSUD per scale group, A = the Q8K activations read in
//     place (signed, tokens × group bytes, row stride = the activation row stride), B = the packed
//     weights (unsigned) → int32 [token][row]; then per token, in AVX-512, Σ_g dot_g·(d·scale_g)
//     − Σ_g asum_g·(dmin·min_g), times the activation block's scale, accumulated in float.
// The integer sums are the scalar kernel's; only the float order differs.
//
// The tile instructions go through a policy class: HardwareTiles (the AMX instructions) or
// EmulatedTiles (the same semantics in plain code), so everything but the instructions themselves is
// tested on CPUs without AMX.
#include "backend/cpu/kernels/intrinsics.hpp"

#include <cstddef>
#include <cstring>

#include "backend/cpu/kernels/activation_blocks.hpp"
#include "backend/cpu/kernels/dot_kernels.hpp"
#include "backend/cpu/kernels/int8_strip_layout.hpp"
#include "backend/cpu/kernels/strip_repack.hpp"
#include "backend/cpu/kernels/tile_layout.hpp"
#include "backend/cpu/kernels/tile_pack.hpp"

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

// The split-scale kernel's tiles (repacked_q4k): three results, one activation tile of 64 values a
// token, three weight operands of 64 values × 16 rows.
constexpr int kSplitC1 = 0, kSplitC2 = 1, kSplitC3 = 2, kSplitA = 3, kSplitB1 = 4, kSplitB2 = 5, kSplitB3 = 6;

TileConfig make_split_config(int tokens) {
  TileConfig c;
  std::memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int t = kSplitC1; t <= kSplitA; ++t) {  // results and activations: tokens × 64 bytes
    c.rows[t] = static_cast<uint8_t>(tokens);
    c.colsb[t] = 64;
  }
  for (int t = kSplitB1; t <= kSplitB3; ++t) {  // operands: 16 × (16 rows × 4)
    c.rows[t] = 16;
    c.colsb[t] = 64;
  }
  return c;
}

// The int8 kernel's tiles: results of two 16-token tiles per set (set 0: 0, 1; set 1: 2, 3),
// activations 4 and 5, weights 6; every one 16 rows × 64 bytes.
TileConfig make_int8_config() {
  TileConfig c;
  std::memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int t = 0; t <= 6; ++t) {
    c.rows[t] = 16;
    c.colsb[t] = 64;
  }
  return c;
}

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
// C += A·B (TDPBSUD) in multiply, C stored (row stride 64) in store — apart, so that the two sets'
// multiplications are both under way before the first result is stored (group_pair). GCC's tile
// intrinsics paste the register number into the assembly text, so each set is spelled out with
// literal numbers.
struct HardwareTiles {
  void configure(const TileConfig& c) { _tile_loadconfig(&c); }
  template <int Set>
  void multiply(const uint8_t* act, int64_t x_stride, const uint8_t* weights) {
    static_assert(kC0 == 0 && kA0 == 1 && kB0 == 2 && kC1 == 3 && kA1 == 4 && kB1 == 5, "tile numbers");
    if constexpr (Set == 0) {
      _tile_zero(0);
      _tile_loadd(1, act, x_stride);
      _tile_loadd(2, weights, 64);
      _tile_dpbsud(0, 1, 2);
    } else {
      _tile_zero(3);
      _tile_loadd(4, act, x_stride);
      _tile_loadd(5, weights, 64);
      _tile_dpbsud(3, 4, 5);
    }
  }
  template <int Set>
  void store(int32_t* result) {
    if constexpr (Set == 0)
      _tile_stored(0, result, 64);
    else
      _tile_stored(3, result, 64);
  }
  // The split-scale kernel: results zeroed, then per 64 values C1..C3 += A·B1..B3, then stored.
  void split_zero() {
    static_assert(kSplitC1 == 0 && kSplitC2 == 1 && kSplitC3 == 2 && kSplitA == 3 && kSplitB1 == 4 && kSplitB2 == 5 &&
                      kSplitB3 == 6,
                  "tile numbers");
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
  }
  void split_chunk(const uint8_t* act, int64_t x_stride, const uint8_t* b1, const uint8_t* b2, const uint8_t* b3) {
    _tile_loadd(3, act, x_stride);
    _tile_loadd(4, b1, 64);
    _tile_dpbsud(0, 3, 4);
    _tile_loadd(5, b2, 64);
    _tile_dpbsud(1, 3, 5);
    _tile_loadd(6, b3, 64);
    _tile_dpbsud(2, 3, 6);
  }
  void split_store(int32_t* c1, int32_t* c2, int32_t* c3) {
    _tile_stored(0, c1, 64);
    _tile_stored(1, c2, 64);
    _tile_stored(2, c3, 64);
  }
  // The int8 kernel: one block's products for NT (1 or 2) token tiles into result set Set — C
  // zeroed, then per 64-value chunk the weights' B tile once and C_i += A_i·B signed × signed.
  template <int Set, int NT>
  void int8_block(const uint8_t* act, int64_t x_stride, const uint8_t* blk) {
    if constexpr (Set == 0) {
      _tile_zero(0);
      if constexpr (NT == 2) _tile_zero(1);
    } else {
      _tile_zero(2);
      if constexpr (NT == 2) _tile_zero(3);
    }
    for (int c = 0; c < 4; ++c) {
      _tile_loadd(6, blk + 1024 * c, 64);
      _tile_loadd(4, act + 64 * c, x_stride);
      if constexpr (Set == 0)
        _tile_dpbssd(0, 4, 6);
      else
        _tile_dpbssd(2, 4, 6);
      if constexpr (NT == 2) {
        _tile_loadd(5, act + 16 * x_stride + 64 * c, x_stride);
        if constexpr (Set == 0)
          _tile_dpbssd(1, 5, 6);
        else
          _tile_dpbssd(3, 5, 6);
      }
    }
  }
  template <int Set, int NT>
  void int8_store(int32_t* r0, int32_t* r1) {
    if constexpr (Set == 0) {
      _tile_stored(0, r0, 64);
      if constexpr (NT == 2) _tile_stored(1, r1, 64);
    } else {
      _tile_stored(2, r0, 64);
      if constexpr (NT == 2) _tile_stored(3, r1, 64);
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
  void store_tile(void* p, int64_t stride) {
    for (int r = 0; r < rows[T]; ++r)
      std::memcpy(static_cast<uint8_t*>(p) + r * stride, reg[T] + 64 * r, static_cast<size_t>(colsb[T]));
  }
  // TDPBSUD: C[m][n] += Σ_k Σ_i A[m][4k + i] (signed) · B[k][4n + i] (unsigned); TDPBSSD with SignedB.
  template <int C, int A, int B, bool SignedB = false>
  void dot() {
    for (int m = 0; m < rows[C]; ++m)
      for (int n = 0; n < colsb[C] / 4; ++n) {
        int32_t acc;
        std::memcpy(&acc, reg[C] + 64 * m + 4 * n, 4);
        for (int k = 0; k < colsb[A] / 4; ++k)
          for (int i = 0; i < 4; ++i) {
            const uint8_t b = reg[B][64 * k + 4 * n + i];
            acc += static_cast<int8_t>(reg[A][64 * m + 4 * k + i]) *
                   (SignedB ? static_cast<int32_t>(static_cast<int8_t>(b)) : static_cast<int32_t>(b));
          }
        std::memcpy(reg[C] + 64 * m + 4 * n, &acc, 4);
      }
  }
  template <int Set, int NT>
  void int8_block(const uint8_t* act, int64_t x_stride, const uint8_t* blk) {
    constexpr int C0 = Set == 0 ? 0 : 2, C1 = C0 + 1;
    zero<C0>();
    if constexpr (NT == 2) zero<C1>();
    for (int c = 0; c < 4; ++c) {
      load<6>(blk + 1024 * c, 64);
      load<4>(act + 64 * c, x_stride);
      dot<C0, 4, 6, true>();
      if constexpr (NT == 2) {
        load<5>(act + 16 * x_stride + 64 * c, x_stride);
        dot<C1, 5, 6, true>();
      }
    }
  }
  template <int Set, int NT>
  void int8_store(int32_t* r0, int32_t* r1) {
    store_tile<Set == 0 ? 0 : 2>(r0, 64);
    if constexpr (NT == 2) store_tile<Set == 0 ? 1 : 3>(r1, 64);
  }
  template <int Set>
  void multiply(const uint8_t* act, int64_t x_stride, const uint8_t* weights) {
    constexpr int C = Set == 0 ? kC0 : kC1, A = C + 1, B = C + 2;
    zero<C>();
    load<A>(act, x_stride);
    load<B>(weights, 64);
    dot<C, A, B>();
  }
  template <int Set>
  void store(int32_t* result) {
    store_tile<Set == 0 ? kC0 : kC1>(result, 64);
  }
  void split_zero() {
    zero<kSplitC1>();
    zero<kSplitC2>();
    zero<kSplitC3>();
  }
  void split_chunk(const uint8_t* act, int64_t x_stride, const uint8_t* b1, const uint8_t* b2, const uint8_t* b3) {
    load<kSplitA>(act, x_stride);
    load<kSplitB1>(b1, 64);
    load<kSplitB2>(b2, 64);
    load<kSplitB3>(b3, 64);
    dot<kSplitC1, kSplitA, kSplitB1>();
    dot<kSplitC2, kSplitA, kSplitB2>();
    dot<kSplitC3, kSplitA, kSplitB3>();
  }
  void split_store(int32_t* c1, int32_t* c2, int32_t* c3) {
    store_tile<kSplitC1>(c1, 64);
    store_tile<kSplitC2>(c2, 64);
    store_tile<kSplitC3>(c3, 64);
  }
  void release() {}
};

// Scale groups g and g + 1 of a block: activations at act + g·group, weights at weights + g·group·16,
// int32 results at results + g·256.
template <class Tiles>
void group_pair(Tiles& tiles, const uint8_t* act, int64_t x_stride, const uint8_t* weights, int32_t* results, int g,
                int group) {
  tiles.template multiply<0>(act + g * group, x_stride, weights + g * group * 16);
  tiles.template multiply<1>(act + (g + 1) * group, x_stride, weights + (g + 1) * group * 16);
  tiles.template store<0>(results + g * 256);
  tiles.template store<1>(results + (g + 1) * 256);
}

// One block's epilogue for n tokens: per token, Σ_g dot_g·dot_scale_g − asum_g·sum_scale_g (16 rows
// each), times the activation block's scale, added to acc[t].
template <int G>
void accumulate_block(const int32_t* results, const float* dot_scale, const float* sum_scale, const uint8_t* x0,
                      int64_t xs, int64_t b, int n, __m512* acc) {
  for (int t = 0; t < n; ++t) {
    const auto* ab = reinterpret_cast<const ActQ8K*>(x0 + t * xs) + b;
    __m512 sum = _mm512_setzero_ps();
    for (int g = 0; g < G; ++g) {
      const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(results + g * 256 + t * 16));
      sum = _mm512_fmadd_ps(dot, _mm512_load_ps(dot_scale + g * 16), sum);
      const int group_sum = G == 8 ? ab->sums[2 * g] + ab->sums[2 * g + 1] : ab->sums[g];
      sum = _mm512_fnmadd_ps(_mm512_set1_ps(static_cast<float>(group_sum)), _mm512_load_ps(sum_scale + g * 16), sum);
    }
    acc[t] = _mm512_fmadd_ps(sum, _mm512_set1_ps(ab->d), acc[t]);
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
      for (int g = 0; g < G; g += 2) group_pair(tiles, act, xs, packed, results, g, kGroup);
      const float* dot_scale = reinterpret_cast<const float*>(ws + tile_scales_offset(in) + b * kTileScaleBlockBytes);
      accumulate_block<G>(results, dot_scale, dot_scale + 256, x0, xs, b, n, acc);
    }
    for (int t = 0; t < n; ++t) _mm512_mask_storeu_ps(y + (t0 + t) * ys, row_mask, acc[t]);
  }
  tiles.release();
}

// Q4_K strips repacked at preparation (strip_repack.hpp), in whole runs of 16 tokens. Storing and
// scaling 8 int32 result tiles a block (one per scale group) cost more than the multiplications, so
// the scales go into the integer products instead: each 6-bit scale is 8·hi + lo with hi, lo ≤ 7,
// q·lo and q·hi fit a byte, and per block three operands over all 256 values give
//   C1 = Σ a·q·lo,  C2 = Σ a·q·hi,  C3 = Σ a·min  (each group's minimum repeated over its values),
// exact int32 sums, so that Σ a·w = d·(C1 + 8·C2) − dmin·C3: three result tiles a block and one
// float step a token. The operands are formed once per block for all the tokens; the results are
// accumulated into y. Not the AVX-512 kernel's float order (its per-group sums): the scalar kernel's
// integer sums, rounded once.
inline __m512i replicate_bytes(__m128i bytes16) {  // byte r → the 4 bytes of dword r
  return _mm512_mullo_epi32(_mm512_cvtepu8_epi32(bytes16), _mm512_set1_epi32(0x01010101));
}

// Bytewise product of two vectors of small values (product < 256), through 16-bit multiplies.
struct ByteFactor {
  __m512i even, odd;
  explicit ByteFactor(__m512i f)
      : even(_mm512_and_si512(f, _mm512_set1_epi16(0x00ff))), odd(_mm512_srli_epi16(f, 8)) {}
  __m512i times(__m512i v) const {
    const __m512i lo = _mm512_mullo_epi16(_mm512_and_si512(v, _mm512_set1_epi16(0x00ff)), even);
    const __m512i hi = _mm512_mullo_epi16(_mm512_srli_epi16(v, 8), odd);
    return _mm512_or_si512(lo, _mm512_slli_epi16(hi, 8));
  }
};

template <class Tiles>
void repacked_q4k(const uint8_t* strip, int rows, const void* x, int64_t xs, int64_t tokens, int64_t in,
                  float* y, int64_t ys, int64_t prefetch_bytes) {
  if (rows <= 0 || tokens <= 0) return;
  Tiles tiles;
  int configured = 0;
  alignas(64) uint8_t operands[4][3][1024];  // per 64-value chunk: q·lo, q·hi, minimums
  alignas(64) int32_t results[3][256];
  const __m512i m4 = _mm512_set1_epi8(0x0f), m7 = _mm512_set1_epi8(0x07);
  const auto row_mask = static_cast<__mmask16>((1u << rows) - 1u);
  const auto* x0 = static_cast<const uint8_t*>(x);
  for (int64_t t = 0; t < tokens; ++t) _mm512_mask_storeu_ps(y + t * ys, row_mask, _mm512_setzero_ps());
  for (int64_t b = 0; b < in / 256; ++b) {
    const uint8_t* blkp = strip + b * kRepackedQ4KBlockBytes;
    if (prefetch_bytes > 0)
      for (int64_t line = 0; line < kRepackedQ4KBlockBytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(blkp + prefetch_bytes + line), _MM_HINT_T1);
    const auto* quants = reinterpret_cast<const __m512i*>(blkp);
    for (int c = 0; c < 4; ++c) {  // groups 2c (low nibbles: operand rows 0-7) and 2c + 1 (high: rows 8-15)
      auto* lo_rows = reinterpret_cast<__m512i*>(operands[c][0]);
      auto* hi_rows = reinterpret_cast<__m512i*>(operands[c][1]);
      auto* min_rows = reinterpret_cast<__m512i*>(operands[c][2]);
      for (int h = 0; h < 2; ++h) {
        const int g = 2 * c + h;
        const __m512i scale =
            replicate_bytes(_mm_load_si128(reinterpret_cast<const __m128i*>(blkp + kRepackedQ4KScales + 16 * g)));
        const ByteFactor lo(_mm512_and_si512(scale, m7)),
            hi(_mm512_and_si512(_mm512_srli_epi16(scale, 3), m7));
        const __m512i minimum =
            replicate_bytes(_mm_load_si128(reinterpret_cast<const __m128i*>(blkp + kRepackedQ4KMins + 16 * g)));
        for (int k = 0; k < 8; ++k) {
          const __m512i q = _mm512_load_si512(quants + 8 * c + k);
          const __m512i nibbles =
              h == 0 ? _mm512_and_si512(q, m4) : _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
          _mm512_store_si512(lo_rows + 8 * h + k, lo.times(nibbles));
          _mm512_store_si512(hi_rows + 8 * h + k, hi.times(nibbles));
          _mm512_store_si512(min_rows + 8 * h + k, minimum);
        }
      }
    }
    const __m512 d = _mm512_load_ps(blkp + kRepackedQ4KD), dmin = _mm512_load_ps(blkp + kRepackedQ4KDmin);
    for (int64_t t0 = 0; t0 < tokens; t0 += 16) {
      const int n = tokens - t0 < 16 ? static_cast<int>(tokens - t0) : 16;
      if (n != configured) {
        tiles.configure(make_split_config(n));
        configured = n;
      }
      const uint8_t* act = x0 + t0 * xs + b * static_cast<int64_t>(sizeof(ActQ8K)) + offsetof(ActQ8K, q);
      tiles.split_zero();
      for (int c = 0; c < 4; ++c)
        tiles.split_chunk(act + 64 * c, xs, operands[c][0], operands[c][1], operands[c][2]);
      tiles.split_store(results[0], results[1], results[2]);
      for (int t = 0; t < n; ++t) {
        const auto* ab = reinterpret_cast<const ActQ8K*>(x0 + (t0 + t) * xs) + b;
        const __m512i scaled = _mm512_add_epi32(_mm512_load_si512(results[0] + 16 * t),
                                                _mm512_slli_epi32(_mm512_load_si512(results[1] + 16 * t), 3));
        const __m512 sum =
            _mm512_fmsub_ps(_mm512_cvtepi32_ps(scaled), d,
                            _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(results[2] + 16 * t)), dmin));
        float* yt = y + (t0 + t) * ys;
        _mm512_mask_storeu_ps(
            yt, row_mask, _mm512_fmadd_ps(sum, _mm512_set1_ps(ab->d), _mm512_maskz_loadu_ps(row_mask, yt)));
      }
    }
  }
  tiles.release();
}

// Int8 strips (int8_strips.hpp) against whole runs of 16 tokens, 32 at a time: per 256-value block
// four TDPBSSDs a token tile (the weights' B tile loaded once for both), then per token one float
// step, acc = fma(float(C), s · d_a, acc) — int8_strip_reference's arithmetic, so its bits. The
// products of block b + 1 are issued before block b's results are stored and scaled, so the tile
// unit works while the vector units do the float steps.
inline void int8_epilogue(const int32_t* results, const uint8_t* blk, const uint8_t* x_tile, int64_t xs, int64_t b,
                          float* acc) {
  const __m512 scale = _mm512_load_ps(blk + kInt8Scales);
  for (int t = 0; t < 16; ++t) {
    const auto* ab = reinterpret_cast<const ActQ8K*>(x_tile + t * xs) + b;
    const __m512 sum = _mm512_cvtepi32_ps(_mm512_load_si512(results + 16 * t));
    _mm512_store_ps(acc + 16 * t,
                    _mm512_fmadd_ps(sum, _mm512_mul_ps(scale, _mm512_set1_ps(ab->d)), _mm512_load_ps(acc + 16 * t)));
  }
}

template <class Tiles, int NT>
void int8_tokens(Tiles& tiles, const uint8_t* strip, const uint8_t* x_tile, int64_t xs, int64_t blocks,
                 int64_t prefetch_bytes, float* acc) {
  alignas(64) int32_t results[2][256];
  const uint8_t* q = x_tile + offsetof(ActQ8K, q);
  const auto issue = [&](int64_t b) {
    const uint8_t* blk = strip + b * kInt8BlockBytes;
    if (prefetch_bytes > 0)
      for (int64_t line = 0; line < kInt8BlockBytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(blk + prefetch_bytes + line), _MM_HINT_T1);
    const uint8_t* act = q + b * static_cast<int64_t>(sizeof(ActQ8K));
    if (b % 2 == 0)
      tiles.template int8_block<0, NT>(act, xs, blk);
    else
      tiles.template int8_block<1, NT>(act, xs, blk);
  };
  const auto finish = [&](int64_t b) {
    if (b % 2 == 0)
      tiles.template int8_store<0, NT>(results[0], results[1]);
    else
      tiles.template int8_store<1, NT>(results[0], results[1]);
    const uint8_t* blk = strip + b * kInt8BlockBytes;
    for (int i = 0; i < NT; ++i) int8_epilogue(results[i], blk, x_tile + 16 * i * xs, xs, b, acc + 256 * i);
  };
  for (int64_t b = 0; b < blocks; ++b) {
    issue(b);
    if (b > 0) finish(b - 1);
  }
  finish(blocks - 1);
}

template <class Tiles>
void int8_q8k(const uint8_t* strip, int rows, const void* x, int64_t xs, int64_t tokens, int64_t in, float* y,
              int64_t ys, int64_t prefetch_bytes) {
  if (rows <= 0 || tokens < 16 || in < 256) return;
  Tiles tiles;
  tiles.configure(make_int8_config());
  alignas(64) float acc[32 * 16];
  const auto row_mask = static_cast<__mmask16>((1u << rows) - 1u);
  const auto* x0 = static_cast<const uint8_t*>(x);
  for (int64_t t0 = 0; t0 + 16 <= tokens; t0 += 32) {
    const int nt = tokens - t0 >= 32 ? 2 : 1;
    std::memset(acc, 0, sizeof acc);
    const int64_t ahead = t0 == 0 ? prefetch_bytes : 0;
    if (nt == 2)
      int8_tokens<Tiles, 2>(tiles, strip, x0 + t0 * xs, xs, in / 256, ahead, acc);
    else
      int8_tokens<Tiles, 1>(tiles, strip, x0 + t0 * xs, xs, in / 256, ahead, acc);
    for (int t = 0; t < 16 * nt; ++t) _mm512_mask_storeu_ps(y + (t0 + t) * ys, row_mask, _mm512_load_ps(acc + 16 * t));
  }
  tiles.release();
}

template <WeightKind Kind, class Tiles>
void tile_kernel(const uint8_t* w, int64_t row_stride, int rows, const void* x, int64_t x_stride,
                 int64_t tokens, int64_t in, float* y, int64_t y_stride, uint8_t* workspace) {
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
  t.repacked_wide[static_cast<int>(WeightKind::q4_k)] = repacked_q4k<Tiles>;
  t.int8_wide = int8_q8k<Tiles>;
}

}  // namespace

void fill_kernels(KernelTable& t) noexcept { fill<HardwareTiles>(t); }
void fill_emulated_kernels(KernelTable& t) noexcept { fill<EmulatedTiles>(t); }

}  // namespace tandem::kernels::amx
