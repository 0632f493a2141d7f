#pragma once
// The routed experts of a large prefill pass through cuBLAS. The grouped tile kernels
// (cuda::moe_grouped) dequantise an expert's rows again for every 64 of its pairs and reach ~45
// TFLOP/s; with hundreds of pairs per expert it pays to dequantise each hit expert once to bf16 and
// let cuBLAS multiply: gate and up as one [2·intermediate, hidden] GEMM per expert, then the down
// projection, over the pairs gathered in expert order (operands bf16, accumulation and outputs
// float32 — the bf16 tiles' rounding, in another order), experts with the same (padded) number of
// pairs in one batched call. The grouping needs the counts on the host
// (cuBLAS takes sizes from the host), so one call waits for the stream once; prefill only.
// The hit experts go in chunks ordered by their padded pair counts, so that a chunk's experts share
// few sizes and its batched calls are few and large; with a MoeBlasOverlap each chunk is dequantised
// on a second stream into one of two buffers while the GEMMs of the chunk before run.
#include <cstdint>
#include <vector>

#include "tandem/backend/cuda_working_memory.hpp"
#include "tandem/cuda/cuda_device.hpp"

namespace tandem::cuda {

class BlasGemm;
struct ExpertTable;

// When this path is taken and how its scratch is laid out: tandem/backend/cuda_working_memory.hpp
// (shared with the placement planner).
inline constexpr int64_t kBlasMoePairsPerExpert = kCudaBlasMoePairsPerExpert;
inline constexpr int64_t kBlasMoeWeightChunkBytes = kCudaBlasMoeWeightChunkBytes;

// Whether the shapes suit this path (hidden and intermediate multiples of 32; gate and up one type).
bool moe_blas_fits(const ExpertTable& table, int64_t hidden) noexcept;
int64_t moe_blas_scratch_bytes(const ExpertTable& table, int64_t tokens, int64_t hidden, int64_t top_k,
                               int64_t chunk_bytes = kBlasMoeWeightChunkBytes);

// The host side's grouping, kept between calls (no allocation per call once grown).
struct MoeBlasHost {
  struct Batch {
    int64_t chunk, pointer, count, rows;  // first hit index of its chunk, offset in pointers, experts, rows each
  };
  std::vector<int32_t> ids, index, hit;  // hit: the hit experts in chunk order (by padded count)
  std::vector<int64_t> padded, begin, fill;  // per expert: padded pair count, first grouped row
  std::vector<void*> pointers;
  std::vector<Batch> batches;
};

// The second stream and the events that order the two weight buffers' reuse; owned by the caller.
struct MoeBlasOverlap {
  explicit MoeBlasOverlap(int device);
  Stream side;
  Event start;             // the main stream's work before the call (ids, index and pointers copied)
  Event dequantised[2];    // buffer b holds its chunk
  Event consumed[2];       // the GEMMs of buffer b's chunk are done with it
};

// out[t] = Σ_s weights[t, s] · down_e(silu(gate_e · x[t]) · up_e · x[t]), e = ids[t, s], summed in
// slot order; an id outside the table leaves its pair out. scratch: moe_blas_scratch_bytes, 256-byte
// aligned, sized with the same chunk_bytes. Requires moe_blas_fits and blas.available(). With
// `overlap`, the dequantisation runs on overlap->side (the results are the same bits either way).
void moe_blas(Stream& stream, BlasGemm& blas, const ExpertTable& table, const float* x, int64_t tokens,
              int64_t hidden, const int32_t* ids, const float* weights, int64_t top_k, void* scratch,
              MoeBlasHost& host, float* out, int64_t chunk_bytes = kBlasMoeWeightChunkBytes,
              MoeBlasOverlap* overlap = nullptr);

}  // namespace tandem::cuda
