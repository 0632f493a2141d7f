#pragma once
// Random weight matrices and a layer of random routed experts in a stored type (over
// random_weight_rows), for the kernel and MoE tests.
#include <cstdint>
#include <random>
#include <vector>

#include "support/random_weights.hpp"
#include "tandem/model/weights.hpp"

namespace tandem::test {

// Random rows of `type`: random quants, small block scales, no NaN or Inf (random_weight_rows's
// float_sd and modest_fp8), and for FP8 block scales drawn from [fp8_scale_min, fp8_scale_max].
struct RandomMatrix {
  std::vector<uint8_t> bytes;
  std::vector<float> scales;  // FP8 block scales [ceil(rows/128), ceil(in/128)]
  LinearWeight weight;

  RandomMatrix(DType type, int64_t rows, int64_t in, std::mt19937& rng, float float_sd = 0.1f, bool modest_fp8 = true,
               float fp8_scale_min = 0.01f, float fp8_scale_max = 0.05f)
      : bytes(random_weight_rows(type, rows, in, rng, float_sd, modest_fp8)) {
    weight.weight.dtype = type;
    weight.weight.shape = Shape{rows, in};
    weight.weight.data = bytes.data();
    weight.weight.nbytes = bytes.size();
    if (type == DType::f8_e4m3) {
      const int64_t sr = (rows + 127) / 128, sc = (in + 127) / 128;
      std::uniform_real_distribution<float> s(fp8_scale_min, fp8_scale_max);
      for (int64_t i = 0; i < sr * sc; ++i) scales.push_back(s(rng));
      weight.scale_inv.dtype = DType::f32;
      weight.scale_inv.shape = Shape{sr, sc};
      weight.scale_inv.data = scales.data();
      weight.scale_inv.nbytes = scales.size() * 4;
    }
  }
};

struct RandomExperts {
  std::vector<RandomMatrix> matrices;  // gate, up, down of each expert
  ExpertWeights weights;

  RandomExperts(int64_t count, int64_t hidden, int64_t inter, DType gate_type, DType down_type, std::mt19937& rng) {
    matrices.reserve(static_cast<size_t>(3 * count));
    for (int64_t e = 0; e < count; ++e) {
      matrices.emplace_back(gate_type, inter, hidden, rng);
      matrices.emplace_back(gate_type, inter, hidden, rng);
      matrices.emplace_back(down_type, hidden, inter, rng);
    }
    for (int64_t e = 0; e < count; ++e) {
      weights.gate.push_back(matrices[static_cast<size_t>(3 * e)].weight);
      weights.up.push_back(matrices[static_cast<size_t>(3 * e + 1)].weight);
      weights.down.push_back(matrices[static_cast<size_t>(3 * e + 2)].weight);
    }
  }
};

}  // namespace tandem::test
