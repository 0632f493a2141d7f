#include "support/random_weights.hpp"

#include <cstring>
#include <stdexcept>
#include <string>

#include "tandem/formats/dequantize.hpp"

namespace tandem::test {
namespace {

void put_half(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

}  // namespace

std::vector<uint8_t> random_weight_rows(DType type, int64_t rows, int64_t in, std::mt19937& rng, float float_sd,
                                        bool modest_fp8) {
  const auto& tr = dtype_traits(type);
  const int64_t blocks = rows * in / tr.block_elems;
  std::vector<uint8_t> bytes(static_cast<size_t>(blocks * tr.block_bytes));
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : bytes) b = static_cast<uint8_t>(byte(rng));
  std::uniform_real_distribution<float> scale(0.002f, 0.02f);
  std::normal_distribution<float> normal(0.0f, float_sd);
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* p = bytes.data() + b * tr.block_bytes;
    switch (type) {
      case DType::q4_k:
      case DType::q5_k:
        put_half(p, scale(rng));
        put_half(p + 2, scale(rng));
        break;
      case DType::q6_k:
        put_half(p + 208, scale(rng));
        break;
      case DType::iq4_xs:
      case DType::iq4_nl:
      case DType::q8_0:
      case DType::q4_0:
      case DType::q5_0:
        put_half(p, scale(rng));
        break;
      case DType::q4_1:
      case DType::q5_1: {
        const float d = scale(rng);
        put_half(p, d);
        put_half(p + 2, -d * (type == DType::q5_1 ? 16.0f : 8.0f) * std::uniform_real_distribution<float>(0.5f, 1.5f)(rng));
        break;
      }
      case DType::f32: {
        const float v = normal(rng);
        std::memcpy(p, &v, 4);
        break;
      }
      case DType::f16:
        put_half(p, normal(rng));
        break;
      case DType::bf16: {
        const uint16_t h = f32_to_bf16(normal(rng));
        std::memcpy(p, &h, 2);
        break;
      }
      case DType::f8_e4m3:
        if (modest_fp8 && (p[0] & 0x7f) >= 0x60) p[0] &= 0x9f;
        if ((p[0] & 0x7f) == 0x7f) p[0] = 0x3f;  // never NaN
        break;
      default:
        throw std::invalid_argument("random_weight_rows: no generator for " + std::string(dtype_name(type)));
    }
  }
  return bytes;
}

}  // namespace tandem::test
