#pragma once
// What the routed-expert kernels need of a layer's experts to read them through one ExpertTable:
// gate and up of one stored type, down of one, the same shapes in every expert, no biases, block
// scales on all or none, bytes present (tandem/backend/cuda_expert_layout.hpp, which tandem plan asks
// too). Shared by the streamer and the expert cache, which lay the experts out in VRAM themselves.
// Host code only.
#include <optional>

#include "tandem/cuda/kernels.hpp"
#include "tandem/model/weights.hpp"

namespace tandem::cuda {

struct ExpertShape {
  ExpertTable table;    // experts, intermediate, types and row bytes (no pointers)
  bool scaled = false;  // FP8 block scales on every matrix
};

// The experts' shape when they are alike as above, else nullopt.
std::optional<ExpertShape> alike_expert_shape(const ExpertWeights& experts);

}  // namespace tandem::cuda
