#pragma once
// Device-side decoders of the stored weight types, in the block layouts of
// src/formats/dequantize.cpp (the reference). Quantised rows are read in chunks of 32 values (every
// block type holds a whole number of them); plain types also by element, for rows whose width is
// not a multiple of 32. Products and differences use explicit _rn intrinsics so nvcc does not fuse
// them into an FMA: the values equal the reference's bit for bit. store32 writes a decoded chunk out
// (store8_bf16 eight values of one, as bf16).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "tandem/tensor/dtype.hpp"

namespace tandem::cuda::detail {

__device__ __forceinline__ float load_f16(const uint8_t* p) {
  const auto bits = static_cast<unsigned short>(p[0] | (p[1] << 8));
  return __half2float(__ushort_as_half(bits));
}
__device__ __forceinline__ float load_bf16(const uint8_t* p) {
  return __uint_as_float(static_cast<uint32_t>(p[0] | (p[1] << 8)) << 16);
}
__device__ __forceinline__ float load_f32(const uint8_t* p) {
  return __uint_as_float(static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
                         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24));
}
// OCP float8 e4m3fn (bias 7, no infinities, S.1111.111 is NaN).
__device__ __forceinline__ float load_f8_e4m3(uint8_t v) {
  const int exponent = (v >> 3) & 0xf, mantissa = v & 0x7;
  float magnitude;
  if (exponent == 15 && mantissa == 7) {
    magnitude = __int_as_float(0x7fc00000);
  } else if (exponent == 0) {
    magnitude = static_cast<float>(mantissa) * __int_as_float((127 - 9) << 23);
  } else {
    magnitude = static_cast<float>(8 + mantissa) * __int_as_float((127 + exponent - 10) << 23);
  }
  return (v & 0x80) ? -magnitude : magnitude;
}

__device__ __constant__ const int8_t kIq4NonLinear[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                          1,    13,   25,  38,  53,  69,  89,  113};

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j, from 12 packed bytes.
__device__ __forceinline__ void k4_scale_min(const uint8_t* p, int j, int& scale, int& min) {
  if (j < 4) {
    scale = p[j] & 63;
    min = p[j + 4] & 63;
  } else {
    scale = (p[j + 4] & 0xf) | ((p[j - 4] >> 6) << 4);
    min = (p[j + 4] >> 4) | ((p[j] >> 6) << 4);
  }
}

template <DType T>
struct Decoder;

// Plain types: element(row, i) and chunk(row, c, y) = elements [32c, 32c + 32).
template <DType T, int Bytes>
struct PlainDecoder {
  static constexpr bool plain = true;
  static constexpr int block_elems = 1;
  static constexpr int block_bytes = Bytes;
  __device__ __forceinline__ static void chunk(const uint8_t* row, int64_t c, float* y) {
#pragma unroll
    for (int j = 0; j < 32; ++j) y[j] = Decoder<T>::element(row, c * 32 + j);
  }
};

template <>
struct Decoder<DType::f32> : PlainDecoder<DType::f32, 4> {
  __device__ __forceinline__ static float element(const uint8_t* row, int64_t i) {
    return reinterpret_cast<const float*>(row)[i];
  }
};
template <>
struct Decoder<DType::f16> : PlainDecoder<DType::f16, 2> {
  __device__ __forceinline__ static float element(const uint8_t* row, int64_t i) {
    return __half2float(reinterpret_cast<const __half*>(row)[i]);
  }
};
template <>
struct Decoder<DType::bf16> : PlainDecoder<DType::bf16, 2> {
  __device__ __forceinline__ static float element(const uint8_t* row, int64_t i) {
    return __uint_as_float(static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(row)[i]) << 16);
  }
};
template <>
struct Decoder<DType::f8_e4m3> : PlainDecoder<DType::f8_e4m3, 1> {
  __device__ __forceinline__ static float element(const uint8_t* row, int64_t i) { return load_f8_e4m3(row[i]); }
};

template <int Elems, int Bytes>
struct BlockDecoder {
  static constexpr bool plain = false;
  static constexpr int block_elems = Elems;
  static constexpr int block_bytes = Bytes;
  __device__ __forceinline__ static float element(const uint8_t*, int64_t) { return 0.f; }  // unused
};

// Q4_0: f16 d, 16 bytes; low nibbles are values 0..15, high nibbles 16..31; (q - 8)·d.
template <>
struct Decoder<DType::q4_0> : BlockDecoder<32, 18> {
  __device__ __forceinline__ static void chunk(const uint8_t* row, int64_t c, float* y) {
    const uint8_t* b = row + c * 18;
    const float d = load_f16(b);
    const uint8_t* qs = b + 2;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      y[j] = __fmul_rn(static_cast<float>((qs[j] & 0xf) - 8), d);
      y[j + 16] = __fmul_rn(static_cast<float>((qs[j] >> 4) - 8), d);
    }
  }
};

// Q4_1: f16 d, f16 m, 16 bytes of nibbles; q·d + m.
template <>
struct Decoder<DType::q4_1> : BlockDecoder<32, 20> {
  __device__ __forceinline__ static void chunk(const uint8_t* row, int64_t c, float* y) {
    const uint8_t* b = row + c * 20;
    const float d = load_f16(b), m = load_f16(b + 2);
    const uint8_t* qs = b + 4;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      y[j] = __fadd_rn(__fmul_rn(static_cast<float>(qs[j] & 0xf), d), m);
      y[j + 16] = __fadd_rn(__fmul_rn(static_cast<float>(qs[j] >> 4), d), m);
    }
  }
};

__device__ __forceinline__ uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

// Q5_0: f16 d, 32-bit qh (bit j = fifth bit of value j), 16 bytes of nibbles; (q - 16)·d.
template <>
struct Decoder<DType::q5_0> : BlockDecoder<32, 22> {
  __device__ __forceinline__ static void chunk(const uint8_t* row, int64_t c, float* y) {
    const uint8_t* b = row + c * 22;
    const float d = load_f16(b);
    const uint32_t qh = load_u32(b + 2);
    const uint8_t* qs = b + 6;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0xf) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = __fmul_rn(static_cast<float>(lo - 16), d);
      y[j + 16] = __fmul_rn(static_cast<float>(hi - 16), d);
    }
  }
};

// Q5_1: f16 d, f16 m, 32-bit qh, 16 bytes of nibbles; q·d + m.
template <>
struct Decoder<DType::q5_1> : BlockDecoder<32, 24> {
  __device__ __forceinline__ static void chunk(const uint8_t* row, int64_t c, float* y) {
    const uint8_t* b = row + c * 24;
    const float d = load_f16(b), m = load_f16(b + 2);
    const uint32_t qh = load_u32(b + 4);
    const uint8_t* qs = b + 8;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0xf) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = __fadd_rn(__fmul_rn(static_cast<float>(lo), d), m);
      y[j + 16] = __fadd_rn(__fmul_rn(static_cast<float>(hi), d), m);
    }
  }
};

// IQ4_NL: f16 d, 16 bytes of non-linear nibbles.
template <>
struct Decoder<DType::iq4_nl> : BlockDecoder<32, 18> {
  __device__ __forceinline__ static void chunk(const uint8_t* row, int64_t c, float* y) {
    const uint8_t* b = row + c * 18;
    const float d = load_f16(b);
    const uint8_t* qs = b + 2;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      y[j] = __fmul_rn(d, static_cast<float>(kIq4NonLinear[qs[j] & 0xf]));
      y[j + 16] = __fmul_rn(d, static_cast<float>(kIq4NonLinear[qs[j] >> 4]));
    }
  }
};

// Q8_0: f16 d, 32 int8 quants.
template <>
struct Decoder<DType::q8_0> : BlockDecoder<32, 34> {
  __device__ __forceinline__ static void chunk(const uint8_t* row, int64_t c, float* y) {
    const uint8_t* b = row + c * 34;
    const float d = load_f16(b);
#pragma unroll
    for (int j = 0; j < 32; ++j) y[j] = __fmul_rn(static_cast<float>(static_cast<int8_t>(b[2 + j])), d);
  }
};

// Q4_K: d, dmin, 12 bytes of scales/mins, 128 bytes of nibbles; sub-block s (32 values) reads the
// low (even s) or high (odd s) nibbles of bytes [32·(s/2), +32).
template <>
struct Decoder<DType::q4_k> : BlockDecoder<256, 144> {
  __device__ __forceinline__ static void chunk(const uint8_t* row, int64_t c, float* y) {
    const uint8_t* b = row + (c / 8) * 144;
    const int sub = static_cast<int>(c % 8);
    const float d = load_f16(b), dmin = load_f16(b + 2);
    int scale, min;
    k4_scale_min(b + 4, sub, scale, min);
    const float dl = __fmul_rn(d, static_cast<float>(scale)), ml = __fmul_rn(dmin, static_cast<float>(min));
    const uint8_t* qs = b + 16 + (sub / 2) * 32;
    const int shift = (sub % 2) * 4;
#pragma unroll
    for (int j = 0; j < 32; ++j) y[j] = __fsub_rn(__fmul_rn(dl, static_cast<float>((qs[j] >> shift) & 0xf)), ml);
  }
};

// Q5_K: Q4_K plus a fifth bit: bit `sub` of qh[lane].
template <>
struct Decoder<DType::q5_k> : BlockDecoder<256, 176> {
  __device__ __forceinline__ static void chunk(const uint8_t* row, int64_t c, float* y) {
    const uint8_t* b = row + (c / 8) * 176;
    const int sub = static_cast<int>(c % 8);
    const float d = load_f16(b), dmin = load_f16(b + 2);
    int scale, min;
    k4_scale_min(b + 4, sub, scale, min);
    const float dl = __fmul_rn(d, static_cast<float>(scale)), ml = __fmul_rn(dmin, static_cast<float>(min));
    const uint8_t* qh = b + 16;
    const uint8_t* qs = b + 48 + (sub / 2) * 32;
    const int shift = (sub % 2) * 4;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int q = ((qs[j] >> shift) & 0xf) | (((qh[j] >> sub) & 1) << 4);
      y[j] = __fsub_rn(__fmul_rn(dl, static_cast<float>(q)), ml);
    }
  }
};

// Q6_K: per 128-value half, 64 bytes of low nibbles, 32 bytes of 2-bit high parts; 16 int8 scales
// (one per 16 values); f16 d at 208.
template <>
struct Decoder<DType::q6_k> : BlockDecoder<256, 210> {
  __device__ __forceinline__ static void chunk(const uint8_t* row, int64_t c, float* y) {
    const uint8_t* b = row + (c / 8) * 210;
    const int sub = static_cast<int>(c % 8);
    const int half = sub / 4, quarter = sub % 4;
    const uint8_t* ql = b + half * 64 + (quarter % 2) * 32;
    const uint8_t* qh = b + 128 + half * 32;
    const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
    const float d = load_f16(b + 208);
    const float dl0 = __fmul_rn(d, static_cast<float>(scales[sub * 2])),
                dl1 = __fmul_rn(d, static_cast<float>(scales[sub * 2 + 1]));
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int low = quarter < 2 ? (ql[j] & 0xf) : (ql[j] >> 4);
      const int high = (qh[j] >> (2 * quarter)) & 3;
      y[j] = __fmul_rn(j < 16 ? dl0 : dl1, static_cast<float>((low | (high << 4)) - 32));
    }
  }
};

// IQ4_XS: f16 d, 16-bit high scale bits, 4 bytes of low scale bits, 128 bytes of non-linear nibbles.
template <>
struct Decoder<DType::iq4_xs> : BlockDecoder<256, 136> {
  __device__ __forceinline__ static void chunk(const uint8_t* row, int64_t c, float* y) {
    const uint8_t* b = row + (c / 8) * 136;
    const int sub = static_cast<int>(c % 8);
    const float d = load_f16(b);
    const int scales_h = b[2] | (b[3] << 8);
    const int ls = ((b[4 + sub / 2] >> (4 * (sub % 2))) & 0xf) | (((scales_h >> (2 * sub)) & 3) << 4);
    const float dl = __fmul_rn(d, static_cast<float>(ls - 32));
    const uint8_t* q = b + 8 + 16 * sub;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      y[j] = __fmul_rn(dl, static_cast<float>(kIq4NonLinear[q[j] & 0xf]));
      y[j + 16] = __fmul_rn(dl, static_cast<float>(kIq4NonLinear[q[j] >> 4]));
    }
  }
};

// Calls fn(Decoder<T>{}) for the stored type `t`; returns false for types without a decoder. The
// one list of the weight types the CUDA kernels read.
template <typename Fn>
bool dispatch_weight_type(DType t, Fn&& fn) {
  switch (t) {
    case DType::f32: fn(Decoder<DType::f32>{}); return true;
    case DType::f16: fn(Decoder<DType::f16>{}); return true;
    case DType::bf16: fn(Decoder<DType::bf16>{}); return true;
    case DType::f8_e4m3: fn(Decoder<DType::f8_e4m3>{}); return true;
    case DType::q4_0: fn(Decoder<DType::q4_0>{}); return true;
    case DType::q4_1: fn(Decoder<DType::q4_1>{}); return true;
    case DType::q5_0: fn(Decoder<DType::q5_0>{}); return true;
    case DType::q5_1: fn(Decoder<DType::q5_1>{}); return true;
    case DType::iq4_nl: fn(Decoder<DType::iq4_nl>{}); return true;
    case DType::q8_0: fn(Decoder<DType::q8_0>{}); return true;
    case DType::q4_k: fn(Decoder<DType::q4_k>{}); return true;
    case DType::q5_k: fn(Decoder<DType::q5_k>{}); return true;
    case DType::q6_k: fn(Decoder<DType::q6_k>{}); return true;
    case DType::iq4_xs: fn(Decoder<DType::iq4_xs>{}); return true;
    default: return false;
  }
}

// A decoded chunk's 32 values stored in 16-byte pieces where dst allows them (rounded to bf16 for a
// bf16 dst): 32 scalar stores a thread, 64 or 128 bytes apart across a warp, made the dequantisation
// ahead of a cuBLAS call cost more than the GEMM at 256 tokens.
__device__ __forceinline__ void store32(float* dst, const float (&v)[32]) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0) {
#pragma unroll
    for (int j = 0; j < 32; ++j) dst[j] = v[j];
    return;
  }
  auto* d = reinterpret_cast<float4*>(dst);
#pragma unroll
  for (int j = 0; j < 8; ++j) d[j] = make_float4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
}
// Eight values rounded to bf16 in one 16-byte store (dst 16-byte aligned).
__device__ __forceinline__ void store8_bf16(__nv_bfloat16* dst, const float* v) {
  uint4 packed;
  auto* words = reinterpret_cast<__nv_bfloat162*>(&packed);
#pragma unroll
  for (int j = 0; j < 4; ++j) words[j] = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
  *reinterpret_cast<uint4*>(dst) = packed;
}
__device__ __forceinline__ void store32(__nv_bfloat16* dst, const float (&v)[32]) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0) {
#pragma unroll
    for (int j = 0; j < 32; ++j) dst[j] = __float2bfloat16_rn(v[j]);
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) store8_bf16(dst + 8 * j, v + 8 * j);
}

}  // namespace tandem::cuda::detail
