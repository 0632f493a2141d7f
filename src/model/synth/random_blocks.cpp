// Random quantised blocks: codes drawn uniformly, scales chosen so the decoded values have the
// requested RMS and (close to) zero mean. No float quantiser is involved, so writing a 100 GB
// model costs little more than writing its bytes.
#include <cmath>
#include <cstring>

#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/model/synth.hpp"

namespace tandem {
namespace {

// splitmix64: tiny, fast, and good enough for weights nobody will train.
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  void bytes(uint8_t* out, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const uint64_t r = next();
      std::memcpy(out + i, &r, 8);
    }
    if (i < n) {
      const uint64_t r = next();
      std::memcpy(out + i, &r, n - i);
    }
  }
  int uniform(int lo, int hi) { return lo + static_cast<int>(next() % static_cast<uint64_t>(hi - lo + 1)); }
  float uniform_float(float a) {  // in [-a, a)
    return a * (static_cast<float>(next() >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }

 private:
  uint64_t state_;
};

void store_f16(uint8_t* at, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(at, &h, 2);
}

// RMS of a uniform code in [0, n) about its mean.
double uniform_code_rms(int n) { return std::sqrt((static_cast<double>(n) * n - 1.0) / 12.0); }

// 6-bit K-quant scales uniform in [32, 63]: their root mean square.
constexpr double kKScaleRms = 48.4;
// IQ4_NL's 16 non-linear levels: their root mean square.
constexpr double kIq4LevelRms = 67.4;

// Q4_K/Q5_K scale/min pairs packed as the 12 bytes of unpack_k4_scales expects.
void pack_k4_scales(const int* scale, const int* min, uint8_t* p) {
  for (int j = 0; j < 4; ++j) {
    p[j] = static_cast<uint8_t>(scale[j] | ((scale[j + 4] >> 4) << 6));
    p[j + 4] = static_cast<uint8_t>(min[j] | ((min[j + 4] >> 4) << 6));
    p[j + 8] = static_cast<uint8_t>((scale[j + 4] & 0xf) | ((min[j + 4] & 0xf) << 4));
  }
}

// Q4_K (bits 4) and Q5_K (bits 5): value = d·scale·q − dmin·min with dmin = 2^bits / 2 · d, so a
// sub-block's min ≈ its scale and its mean is ~0.
void k_quant_block(Random& rng, float rms, int bits, uint8_t* b) {
  const int levels = 1 << bits;
  const double d = rms / (uniform_code_rms(levels) * kKScaleRms);
  const double dmin_ratio = levels / 2.0;
  store_f16(b, static_cast<float>(d));
  store_f16(b + 2, static_cast<float>(d * dmin_ratio));
  int scale[8], min[8];
  for (int j = 0; j < 8; ++j) {
    scale[j] = rng.uniform(32, 63);
    min[j] = static_cast<int>(std::lround((levels - 1) / 2.0 * scale[j] / dmin_ratio));
  }
  pack_k4_scales(scale, min, b + 4);
  rng.bytes(b + 16, bits == 4 ? 128 : 32 + 128);
}

void q6_k_block(Random& rng, float rms, uint8_t* b) {
  rng.bytes(b, 192);  // ql, qh
  auto* scales = reinterpret_cast<int8_t*>(b + 192);
  double sum_sq = 0;
  for (int j = 0; j < 16; ++j) {
    const int s = rng.uniform(32, 127);
    scales[j] = static_cast<int8_t>((rng.next() & 1) ? s : -s);
    sum_sq += s * s;
  }
  store_f16(b + 208, static_cast<float>(rms / (uniform_code_rms(64) * std::sqrt(sum_sq / 16))));
}

void q8_0_block(Random& rng, float rms, uint8_t* b) {
  rng.bytes(b + 2, 32);
  for (int j = 0; j < 32; ++j)
    if (b[2 + j] == 0x80) b[2 + j] = 0x81;  // -128 is outside Q8_0's symmetric range
  store_f16(b, static_cast<float>(rms / uniform_code_rms(255)));
}

void q5_0_block(Random& rng, float rms, uint8_t* b) {
  rng.bytes(b + 2, 20);
  store_f16(b, static_cast<float>(rms / uniform_code_rms(32)));
}

void q5_1_block(Random& rng, float rms, uint8_t* b) {
  rng.bytes(b + 4, 20);
  const double d = rms / uniform_code_rms(32);
  store_f16(b, static_cast<float>(d));
  store_f16(b + 2, static_cast<float>(-15.5 * d));
}

void iq4_nl_block(Random& rng, float rms, uint8_t* b) {
  rng.bytes(b + 2, 16);
  store_f16(b, static_cast<float>(rms / kIq4LevelRms));
}

void iq4_xs_block(Random& rng, float rms, uint8_t* b) {
  rng.bytes(b + 2, 6 + 128);  // scales_h, scales_l, codes: sub-block scales (ls − 32) in [−32, 31]
  store_f16(b, static_cast<float>(rms / (uniform_code_rms(64) * kIq4LevelRms)));
}

}  // namespace

void fill_random_blocks(DType dtype, float rms, uint64_t seed, uint8_t* out, int64_t blocks) {
  Random rng(seed * 0x2545f4914f6cdd1dull + 0x1234567);
  const auto bytes = static_cast<size_t>(dtype_traits(dtype).block_bytes);
  const float uniform_bound = rms * std::sqrt(3.0f);
  for (int64_t i = 0; i < blocks; ++i, out += bytes) {
    switch (dtype) {
      case DType::q4_k: k_quant_block(rng, rms, 4, out); break;
      case DType::q5_k: k_quant_block(rng, rms, 5, out); break;
      case DType::q6_k: q6_k_block(rng, rms, out); break;
      case DType::q8_0: q8_0_block(rng, rms, out); break;
      case DType::q5_0: q5_0_block(rng, rms, out); break;
      case DType::q5_1: q5_1_block(rng, rms, out); break;
      case DType::iq4_nl: iq4_nl_block(rng, rms, out); break;
      case DType::iq4_xs: iq4_xs_block(rng, rms, out); break;
      case DType::f32: {
        const float v = uniform_bound == 0 ? 0.0f : rng.uniform_float(uniform_bound);
        std::memcpy(out, &v, 4);
        break;
      }
      case DType::f16: store_f16(out, rng.uniform_float(uniform_bound)); break;
      case DType::bf16: {
        const uint16_t v = f32_to_bf16(rng.uniform_float(uniform_bound));
        std::memcpy(out, &v, 2);
        break;
      }
      default:
        throw Error(ErrorKind::unsupported, "no random fill for " + std::string(dtype_name(dtype)) + " blocks");
    }
  }
}

}  // namespace tandem
