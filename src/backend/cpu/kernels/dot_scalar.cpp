// The portable kernels: integer sums per block exactly as the SIMD kernels form them, float
// accumulation in plain order. They are the reference the AVX2/AVX-512 kernels are tested against.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/kernels/activation_blocks.hpp"
#include "backend/cpu/kernels/dot_kernels.hpp"
#include "backend/cpu/kernels/quant_layouts.hpp"
#include "tandem/formats/dequantize.hpp"

namespace tandem::kernels {

void quantize_act_q8k(const float* x, int64_t n, ActQ8K* out) noexcept {
  for (int64_t b = 0; b < n / 256; ++b) {
    const float* v = x + b * 256;
    ActQ8K& blk = out[b];
    float amax = 0;
    for (int i = 0; i < 256; ++i) amax = std::max(amax, std::fabs(v[i]));
    blk.d = amax / 127.0f;
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    for (int g = 0; g < 16; ++g) {
      int sum = 0;
      for (int i = 16 * g; i < 16 * g + 16; ++i) {
        const int q = static_cast<int>(std::nearbyint(v[i] * id));
        blk.q[i] = static_cast<int8_t>(std::clamp(q, -127, 127));
        sum += blk.q[i];
      }
      blk.sums[g] = static_cast<int16_t>(sum);
    }
  }
}

void quantize_act_q8(const float* x, int64_t n, ActQ8* out) noexcept {
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* v = x + b * 32;
    ActQ8& blk = out[b];
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[i]));
    blk.d = amax / 127.0f;
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int i = 0; i < 32; ++i) {
      const int q = static_cast<int>(std::nearbyint(v[i] * id));
      blk.q[i] = static_cast<int8_t>(std::clamp(q, -127, 127));
      sum += blk.q[i];
    }
    blk.sum = sum;
  }
}

namespace scalar {
namespace {

float load_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

template <class Act>
const Act* act_row(const void* x, int64_t stride, int t) {
  return reinterpret_cast<const Act*>(static_cast<const uint8_t*>(x) + t * stride);
}

// Per 256-value block: y += da · (d · Σ_sub scale·Σ q·a − dmin · Σ_sub min·Σ a).
void dot_q4_k(const uint8_t* w, const void* x, int64_t xs, int tokens, int64_t in, const float*, float* y,
              int64_t ys) {
  for (int t = 0; t < tokens; ++t) {
    const ActQ8K* a = act_row<ActQ8K>(x, xs, t);
    float sum = 0;
    for (int64_t b = 0; b < in / 256; ++b) {
      const uint8_t* blk = w + b * kQ4KBytes;
      int sc[8], mn[8];
      unpack_k4_scales(blk + 4, sc, mn);
      const uint8_t* qs = blk + 16;
      int32_t sumi = 0, summ = 0;
      for (int sub = 0; sub < 8; ++sub) {
        int32_t s = 0;
        for (int l = 0; l < 32; ++l) {
          const uint8_t byte = qs[(sub / 2) * 32 + l];
          const int q = (sub % 2 == 0) ? (byte & 0xf) : (byte >> 4);
          s += q * a[b].q[sub * 32 + l];
        }
        sumi += sc[sub] * s;
        summ += mn[sub] * (a[b].sums[2 * sub] + a[b].sums[2 * sub + 1]);
      }
      sum += a[b].d *
             (load_half(blk) * static_cast<float>(sumi) - load_half(blk + 2) * static_cast<float>(summ));
    }
    y[t * ys] = sum;
  }
}

void dot_q5_k(const uint8_t* w, const void* x, int64_t xs, int tokens, int64_t in, const float*, float* y,
              int64_t ys) {
  for (int t = 0; t < tokens; ++t) {
    const ActQ8K* a = act_row<ActQ8K>(x, xs, t);
    float sum = 0;
    for (int64_t b = 0; b < in / 256; ++b) {
      const uint8_t* blk = w + b * kQ5KBytes;
      int sc[8], mn[8];
      unpack_k4_scales(blk + 4, sc, mn);
      const uint8_t* qh = blk + 16;
      const uint8_t* qs = blk + 48;
      int32_t sumi = 0, summ = 0;
      for (int sub = 0; sub < 8; ++sub) {
        int32_t s = 0;
        for (int l = 0; l < 32; ++l) {
          const uint8_t byte = qs[(sub / 2) * 32 + l];
          const int low = (sub % 2 == 0) ? (byte & 0xf) : (byte >> 4);
          const int q = low | (((qh[l] >> sub) & 1) << 4);
          s += q * a[b].q[sub * 32 + l];
        }
        sumi += sc[sub] * s;
        summ += mn[sub] * (a[b].sums[2 * sub] + a[b].sums[2 * sub + 1]);
      }
      sum += a[b].d *
             (load_half(blk) * static_cast<float>(sumi) - load_half(blk + 2) * static_cast<float>(summ));
    }
    y[t * ys] = sum;
  }
}

// Q6_K: q = u − 32 with u in [0, 63]; Σ sc·Σ q·a = Σ sc·(Σ u·a − 32·Σ a).
void dot_q6_k(const uint8_t* w, const void* x, int64_t xs, int tokens, int64_t in, const float*, float* y,
              int64_t ys) {
  for (int t = 0; t < tokens; ++t) {
    const ActQ8K* a = act_row<ActQ8K>(x, xs, t);
    float sum = 0;
    for (int64_t b = 0; b < in / 256; ++b) {
      const uint8_t* blk = w + b * kQ6KBytes;
      const uint8_t* ql = blk;
      const uint8_t* qh = blk + 128;
      const auto* scales = reinterpret_cast<const int8_t*>(blk + 192);
      int32_t sumi = 0;
      for (int g = 0; g < 16; ++g) {
        int32_t s = 0;
        for (int i = 16 * g; i < 16 * g + 16; ++i) {
          const int half = i / 128, quarter = (i % 128) / 32, lane = i % 32;
          const uint8_t low_byte = ql[half * 64 + (quarter % 2) * 32 + lane];
          const int low = quarter < 2 ? (low_byte & 0xf) : (low_byte >> 4);
          const int high = (qh[half * 32 + lane] >> (2 * quarter)) & 3;
          s += (low | (high << 4)) * a[b].q[i];
        }
        sumi += scales[g] * (s - 32 * a[b].sums[g]);
      }
      sum += a[b].d * load_half(blk + 208) * static_cast<float>(sumi);
    }
    y[t * ys] = sum;
  }
}

void dot_iq4_xs(const uint8_t* w, const void* x, int64_t xs, int tokens, int64_t in, const float*, float* y,
                int64_t ys) {
  for (int t = 0; t < tokens; ++t) {
    const ActQ8K* a = act_row<ActQ8K>(x, xs, t);
    float sum = 0;
    for (int64_t b = 0; b < in / 256; ++b) {
      const uint8_t* blk = w + b * kIq4XsBytes;
      const uint8_t* qs = blk + 8;
      int32_t sumi = 0;
      for (int sub = 0; sub < 8; ++sub) {
        const int ls = iq4_xs_scale(blk, sub);
        int32_t s = 0;
        for (int j = 0; j < 16; ++j) {
          s += kIq4Values[qs[16 * sub + j] & 0xf] * a[b].q[32 * sub + j];
          s += kIq4Values[qs[16 * sub + j] >> 4] * a[b].q[32 * sub + j + 16];
        }
        sumi += ls * s;
      }
      sum += a[b].d * load_half(blk) * static_cast<float>(sumi);
    }
    y[t * ys] = sum;
  }
}

void dot_q8_0(const uint8_t* w, const void* x, int64_t xs, int tokens, int64_t in, const float*, float* y,
              int64_t ys) {
  for (int t = 0; t < tokens; ++t) {
    const ActQ8* a = act_row<ActQ8>(x, xs, t);
    float sum = 0;
    for (int64_t b = 0; b < in / 32; ++b) {
      const uint8_t* blk = w + b * kQ8_0Bytes;
      int32_t s = 0;
      for (int i = 0; i < 32; ++i) s += static_cast<int8_t>(blk[2 + i]) * a[b].q[i];
      sum += load_half(blk) * a[b].d * static_cast<float>(s);
    }
    y[t * ys] = sum;
  }
}

// Q4_0 / Q5_0 (value = d · (q − 8 or 16)) and Q4_1 / Q5_1 (value = d · q + m); Q5: a fifth bit per
// value, bit j of a 32-bit mask for value j.
template <bool Q5, bool Min>
void dot_small_block(const uint8_t* w, const void* x, int64_t xs, int tokens, int64_t in, const float*, float* y,
                     int64_t ys) {
  for (int t = 0; t < tokens; ++t) {
    const ActQ8* a = act_row<ActQ8>(x, xs, t);
    float sum = 0;
    for (int64_t b = 0; b < in / 32; ++b) {
      const uint8_t* blk = w + b * small_block_bytes<Q5, Min>();
      const uint8_t* h = blk + small_block_high_offset<Min>();
      const uint32_t high = Q5 ? static_cast<uint32_t>(h[0]) | static_cast<uint32_t>(h[1]) << 8 |
                                     static_cast<uint32_t>(h[2]) << 16 | static_cast<uint32_t>(h[3]) << 24
                               : 0;
      const uint8_t* qs = blk + small_block_nibble_offset<Q5, Min>();
      int32_t s = 0;
      for (int j = 0; j < 16; ++j) {
        s += ((qs[j] & 0xf) | ((high >> j) & 1) << 4) * a[b].q[j];
        s += ((qs[j] >> 4) | ((high >> (j + 16)) & 1) << 4) * a[b].q[j + 16];
      }
      const float d = load_half(blk);
      if constexpr (Min)
        sum += d * a[b].d * static_cast<float>(s) + load_half(blk + 2) * a[b].d * static_cast<float>(a[b].sum);
      else
        sum += d * a[b].d * static_cast<float>(s - (Q5 ? 16 : 8) * a[b].sum);
    }
    y[t * ys] = sum;
  }
}

// IQ4_NL: value = d · kIq4Values[nibble], the codebook signed, so no offset and no activation sum.
void dot_iq4_nl(const uint8_t* w, const void* x, int64_t xs, int tokens, int64_t in, const float*, float* y,
                int64_t ys) {
  for (int t = 0; t < tokens; ++t) {
    const ActQ8* a = act_row<ActQ8>(x, xs, t);
    float sum = 0;
    for (int64_t b = 0; b < in / 32; ++b) {
      const uint8_t* blk = w + b * kIq4NlBytes;
      const uint8_t* qs = blk + 2;
      int32_t s = 0;
      for (int j = 0; j < 16; ++j) {
        s += kIq4Values[qs[j] & 0xf] * a[b].q[j];
        s += kIq4Values[qs[j] >> 4] * a[b].q[j + 16];
      }
      sum += load_half(blk) * a[b].d * static_cast<float>(s);
    }
    y[t * ys] = sum;
  }
}

template <float (*Load)(const uint8_t*), int Bytes>
void dot_float(const uint8_t* w, const void* x, int64_t xs, int tokens, int64_t in, const float*, float* y,
               int64_t ys) {
  for (int t = 0; t < tokens; ++t) {
    const float* a = act_row<float>(x, xs, t);
    float sum = 0;
    for (int64_t i = 0; i < in; ++i) sum += Load(w + Bytes * i) * a[i];
    y[t * ys] = sum;
  }
}

float load_f32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}
float load_bf16(const uint8_t* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  return bf16_to_f32(b);
}

// FP8 E4M3 with one scale per 128 columns: y = Σ_c scale[c] · Σ_{i in c} w_i·x_i.
void dot_f8_e4m3(const uint8_t* w, const void* x, int64_t xs, int tokens, int64_t in, const float* scales,
                 float* y, int64_t ys) {
  for (int t = 0; t < tokens; ++t) {
    const float* a = act_row<float>(x, xs, t);
    float sum = 0;
    for (int64_t c = 0; c * kFp8Block < in; ++c) {
      float part = 0;
      for (int64_t i = c * kFp8Block; i < std::min(in, (c + 1) * kFp8Block); ++i)
        part += f8_e4m3_to_f32(w[i]) * a[i];
      sum += scales[c] * part;
    }
    y[t * ys] = sum;
  }
}

// The reference SiLU-GLU: std::exp, as the reference MLP computes it.
void silu_mul(const float* gate, const float* up, int64_t n, float* out) noexcept {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace

void fill_kernels(KernelTable& t) noexcept {
  t.silu_mul = silu_mul;
  t.quantize_q8k = quantize_act_q8k;
  t.quantize_q8 = quantize_act_q8;
  auto set = [&](WeightKind k, DotFn f) { t.dot[static_cast<int>(k)] = f; };
  set(WeightKind::q4_k, dot_q4_k);
  set(WeightKind::q5_k, dot_q5_k);
  set(WeightKind::q6_k, dot_q6_k);
  set(WeightKind::iq4_xs, dot_iq4_xs);
  set(WeightKind::q8_0, dot_q8_0);
  set(WeightKind::q4_0, dot_small_block<false, false>);
  set(WeightKind::q5_0, dot_small_block<true, false>);
  set(WeightKind::q4_1, dot_small_block<false, true>);
  set(WeightKind::q5_1, dot_small_block<true, true>);
  set(WeightKind::iq4_nl, dot_iq4_nl);
  set(WeightKind::f32, dot_float<load_f32, 4>);
  set(WeightKind::f16, dot_float<load_half, 2>);
  set(WeightKind::bf16, dot_float<load_bf16, 2>);
  set(WeightKind::f8_e4m3, dot_f8_e4m3);
}

}  // namespace scalar
}  // namespace tandem::kernels
