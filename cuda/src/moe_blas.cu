// The routed experts of a large prefill pass through cuBLAS (see moe_blas.hpp): the host groups the
// (token, slot) pairs by expert, the device gathers their rows as bf16 in that order, each chunk of
// hit experts is dequantised to bf16 in two launches, cuBLAS multiplies the experts of one padded size
// together, and weighted_sum_slots adds each token's slots in slot order. With a MoeBlasOverlap the
// dequantisation of chunk k + 1 (a second stream, the other buffer) runs beside chunk k's GEMMs.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "bf16_rows.cuh"
#include "dequant.cuh"
#include "launch.cuh"
#include "silu_glu.cuh"
#include "staged_rows.cuh"
#include "tandem/cuda/blas_gemm.hpp"
#include "tandem/cuda/kernels.hpp"
#include "tandem/cuda/moe_blas.hpp"

namespace tandem::cuda {

using detail::dispatch_weight_type;

namespace {

constexpr int kRowsPerBlock = 8;  // one warp per row in the dequantisation

// xg[position[p]] = bf16(x[p / top_k]) for each (token, slot) pair p that is not left out; 8 values
// a thread (two 16-byte loads, one 16-byte store) where the rows allow.
__global__ void gather_bf16_kernel(const float* x, int64_t hidden, const int32_t* position, int64_t top_k,
                                   __nv_bfloat16* xg) {
  const int64_t p = blockIdx.x;
  const int32_t row = position[p];
  if (row < 0) return;
  const float* src = x + (p / top_k) * hidden;
  __nv_bfloat16* dst = xg + static_cast<int64_t>(row) * hidden;
  if (hidden % 8 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
    for (int64_t j = threadIdx.x * int64_t{8}; j < hidden; j += blockDim.x * int64_t{8}) {
      const float4 a = *reinterpret_cast<const float4*>(src + j), b = *reinterpret_cast<const float4*>(src + j + 4);
      const float y[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
      detail::store8_bf16(dst + j, y);
    }
    return;
  }
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = __float2bfloat16_rn(src[j]);
}

// One matrix of expert hit[first + blockIdx.y] as bf16, at out + blockIdx.y · 3·I·H: part 0 is gate
// [I, H] then up [I, H] (one [2I, H] matrix), part 1 down [H, I] after them. One warp per row: Q4_K
// and Q6_K a block at a time (bf16_rows.cuh), other types lanes over 32-value chunks, 64 bytes stored
// per chunk.
template <typename D>
__global__ void dequantize_experts_kernel(ExpertTable table, int part, const int32_t* hit, int64_t first,
                                          int64_t hidden, __nv_bfloat16* out) {
  const int64_t e = hit[first + blockIdx.y];
  const int64_t inter = table.intermediate;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int64_t rows = part == 0 ? 2 * inter : hidden, width = part == 0 ? hidden : inter;
  if (r >= rows) return;
  const uint8_t* row;
  const float* scales;
  int64_t o = r;
  if (part == 0) {
    const bool up = r >= inter;
    o = up ? r - inter : r;
    row = static_cast<const uint8_t*>(up ? table.up[e] : table.gate[e]) + o * (up ? table.up_row_bytes : table.gate_row_bytes);
    scales = up ? (table.up_scales ? table.up_scales[e] : nullptr) : (table.gate_scales ? table.gate_scales[e] : nullptr);
  } else {
    row = static_cast<const uint8_t*>(table.down[e]) + o * table.down_row_bytes;
    scales = table.down_scales ? table.down_scales[e] : nullptr;
  }
  __nv_bfloat16* dst = out + static_cast<int64_t>(blockIdx.y) * 3 * inter * hidden + (part == 0 ? 0 : 2 * inter * hidden) +
                       r * width;
  if constexpr (detail::Bf16Rows<D>::available) {
    if (scales == nullptr && width % 256 == 0 && detail::Bf16Rows<D>::aligned(row, dst)) {
      detail::Bf16Rows<D>::blocks(row, 0, width / 256, 1, static_cast<int>(threadIdx.x % 32), dst);
      return;
    }
  }
  const int64_t scale_cols = (width + detail::kFp8Block - 1) / detail::kFp8Block;
  float v[32];
  for (int64_t c = threadIdx.x % 32; c < width / 32; c += 32) {
    D::chunk(row, c, v);
    if (scales != nullptr) {
      const float s = scales[(o / detail::kFp8Block) * scale_cols + (c * 32) / detail::kFp8Block];
#pragma unroll
      for (int j = 0; j < 32; ++j) v[j] = __fmul_rn(v[j], s);
    }
    detail::store32(dst + c * 32, v);
  }
}

// act[i, o] = bf16(silu(gu[i, o]) · gu[i, I + o]), as the bf16 tiles' SiLU (moe_grouped.cu); 8 outputs a
// thread where inter is a multiple of 8 (gu and act then 16-byte aligned rows: the scratch is 256-aligned).
__global__ void silu_glu_bf16_kernel(const float* gu, int64_t rows, int64_t inter, __nv_bfloat16* act) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  if (inter % 8 == 0) {
    const int64_t groups = inter / 8, n = rows * groups;
    for (int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; k < n; k += stride) {
      const int64_t i = k / groups, o = (k % groups) * 8;
      const float* g = gu + i * 2 * inter + o;
      const float4 g0 = *reinterpret_cast<const float4*>(g), g1 = *reinterpret_cast<const float4*>(g + 4);
      const float4 u0 = *reinterpret_cast<const float4*>(g + inter), u1 = *reinterpret_cast<const float4*>(g + inter + 4);
      const float y[8] = {detail::silu_glu(g0.x, u0.x), detail::silu_glu(g0.y, u0.y),
                          detail::silu_glu(g0.z, u0.z), detail::silu_glu(g0.w, u0.w),
                          detail::silu_glu(g1.x, u1.x), detail::silu_glu(g1.y, u1.y),
                          detail::silu_glu(g1.z, u1.z), detail::silu_glu(g1.w, u1.w)};
      detail::store8_bf16(act + i * inter + o, y);
    }
    return;
  }
  const int64_t n = rows * inter;
  for (int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; k < n; k += stride) {
    const int64_t i = k / inter, o = k % inter;
    act[k] = __float2bfloat16_rn(detail::silu_glu(gu[i * 2 * inter + o], gu[i * 2 * inter + inter + o]));
  }
}

CudaMoeBlasLayout layout(const ExpertTable& table, int64_t tokens, int64_t hidden, int64_t top_k, int64_t chunk_bytes) {
  return cuda_moe_blas_layout(table.experts, table.intermediate, tokens, hidden, top_k, chunk_bytes);
}

}  // namespace

MoeBlasOverlap::MoeBlasOverlap(int device)
    : side(device), start(device), dequantised{Event(device), Event(device)}, consumed{Event(device), Event(device)} {}

bool moe_blas_fits(const ExpertTable& table, int64_t hidden) noexcept {
  return table.experts > 0 && table.gate_type == table.up_type && hidden > 0 && hidden % 32 == 0 &&
         table.intermediate > 0 && table.intermediate % 32 == 0 && weight_type_supported(table.gate_type) &&
         weight_type_supported(table.down_type);
}

int64_t moe_blas_scratch_bytes(const ExpertTable& table, int64_t tokens, int64_t hidden, int64_t top_k,
                               int64_t chunk_bytes) {
  return layout(table, tokens, hidden, top_k, chunk_bytes).total;
}

void moe_blas(Stream& stream, BlasGemm& blas, const ExpertTable& table, const float* x, int64_t tokens,
              int64_t hidden, const int32_t* ids, const float* weights, int64_t top_k, void* scratch,
              MoeBlasHost& host, float* out, int64_t chunk_bytes, MoeBlasOverlap* overlap) {
  if (tokens <= 0) return;
  if (!moe_blas_fits(table, hidden))
    throw Error(ErrorKind::internal, text("cuda::moe_blas: unsuitable experts (hidden ", hidden, ", intermediate ",
                                          table.intermediate, ", gate/up/down ", dtype_name(table.gate_type), "/",
                                          dtype_name(table.up_type), "/", dtype_name(table.down_type), ")"));
  const int64_t pairs = tokens * top_k, inter = table.intermediate, experts = table.experts;
  const CudaMoeBlasLayout l = layout(table, tokens, hidden, top_k, chunk_bytes);
  if (l.rows > INT32_MAX)
    throw Error(ErrorKind::out_of_range, text("cuda::moe_blas: ", tokens, " tokens × top-", top_k,
                                              " need more grouped rows than int32 positions hold"));
  auto* base = static_cast<unsigned char*>(scratch);
  auto* index = reinterpret_cast<int32_t*>(base + l.index);  // position [pairs] | hit [experts]
  auto* pointers = reinterpret_cast<void**>(base + l.pointers);
  auto* xg = reinterpret_cast<__nv_bfloat16*>(base + l.xg);
  auto* gu = reinterpret_cast<float*>(base + l.gu);
  auto* act = reinterpret_cast<__nv_bfloat16*>(base + l.act);
  auto* y = reinterpret_cast<float*>(base + l.y);
  auto* w = reinterpret_cast<__nv_bfloat16*>(base + l.w);

  // The grouping on the host (cuBLAS takes its sizes from there): each hit expert's rows, padded, the
  // hit experts ordered by that size (stable: by id among equals) and their rows laid out in that order,
  // so that a chunk is a run of rows and its experts share few sizes.
  host.ids.resize(static_cast<size_t>(pairs));
  stream.copy_to_host(host.ids.data(), ids, host.ids.size() * sizeof(int32_t));  // waits for the router
  host.padded.assign(static_cast<size_t>(experts), 0);
  for (const int32_t e : host.ids)
    if (e >= 0 && e < experts) ++host.padded[static_cast<size_t>(e)];
  host.hit.clear();
  for (int64_t e = 0; e < experts; ++e) {
    int64_t& n = host.padded[static_cast<size_t>(e)];
    if (n == 0) continue;
    n = (n + kCudaMoeRowAlign - 1) / kCudaMoeRowAlign * kCudaMoeRowAlign;
    host.hit.push_back(static_cast<int32_t>(e));
  }
  const auto padded = [&](int32_t e) { return host.padded[static_cast<size_t>(e)]; };
  std::stable_sort(host.hit.begin(), host.hit.end(), [&](int32_t a, int32_t b) { return padded(a) < padded(b); });
  host.begin.assign(static_cast<size_t>(experts), 0);
  int64_t next_row = 0;
  for (const int32_t e : host.hit) {
    host.begin[static_cast<size_t>(e)] = next_row;
    next_row += padded(e);
  }
  host.index.resize(static_cast<size_t>(pairs + experts));
  int32_t* position = host.index.data();
  host.fill = host.begin;
  for (int64_t p = 0; p < pairs; ++p) {
    const int32_t e = host.ids[static_cast<size_t>(p)];
    position[p] = e >= 0 && e < experts ? static_cast<int32_t>(host.fill[static_cast<size_t>(e)]++) : -1;
  }
  std::copy(host.hit.begin(), host.hit.end(), position + pairs);

  // The batched GEMMs: per chunk of hit experts, each run of one padded row count; per batch six
  // pointer arrays (gate/up weight, rows in, rows out; down the same). Chunk k's weights go to buffer
  // k mod 2 when the dequantisation overlaps, else always to buffer 0.
  const auto hits = static_cast<int64_t>(host.hit.size());
  const int64_t expert_values = 3 * inter * hidden, buffer_values = l.chunk_bytes / 2;
  const auto buffer_of = [&](int64_t c0) { return overlap != nullptr ? (c0 / l.chunk_experts) % 2 : int64_t{0}; };
  host.pointers.clear();
  host.batches.clear();
  for (int64_t c0 = 0; c0 < hits; c0 += l.chunk_experts) {
    const int64_t c1 = std::min(hits, c0 + l.chunk_experts);
    __nv_bfloat16* chunk_w = w + buffer_of(c0) * buffer_values;
    for (int64_t i = c0; i < c1;) {
      int64_t k = i;
      while (k < c1 && padded(host.hit[static_cast<size_t>(k)]) == padded(host.hit[static_cast<size_t>(i)])) ++k;
      const int64_t n = k - i;
      host.batches.push_back({c0, static_cast<int64_t>(host.pointers.size()), n, padded(host.hit[static_cast<size_t>(i)])});
      const size_t at = host.pointers.size();
      host.pointers.resize(at + static_cast<size_t>(6 * n));
      void** ptr = host.pointers.data() + at;
      for (int64_t q = 0; q < n; ++q) {
        const int64_t j = i + q;
        const int64_t row = host.begin[static_cast<size_t>(host.hit[static_cast<size_t>(j)])];
        __nv_bfloat16* weights_j = chunk_w + (j - c0) * expert_values;
        ptr[q] = weights_j;
        ptr[n + q] = xg + row * hidden;
        ptr[2 * n + q] = gu + row * 2 * inter;
        ptr[3 * n + q] = weights_j + 2 * inter * hidden;
        ptr[4 * n + q] = act + row * inter;
        ptr[5 * n + q] = y + row * hidden;
      }
      i = k;
    }
  }
  stream.copy_to_device(index, host.index.data(), host.index.size() * sizeof(int32_t));
  if (!host.pointers.empty())
    stream.copy_to_device(pointers, host.pointers.data(), host.pointers.size() * sizeof(void*));

  cudaStream_t s = detail::native(stream);
  Stream& dequantising = overlap != nullptr ? overlap->side : stream;
  if (overlap != nullptr) {  // the side stream starts after the copies above and the work before them
    overlap->start.record(stream);
    overlap->start.wait_on(overlap->side);
  }
  gather_bf16_kernel<<<detail::grid_dim(pairs, "moe_blas gather"), 256, 0, s>>>(x, hidden, index, top_k, xg);
  detail::check_launch("moe_blas gather");
  const int32_t* d_hit = index + pairs;
  size_t batch = 0;
  for (int64_t c0 = 0; c0 < hits; c0 += l.chunk_experts) {
    const int64_t c1 = std::min(hits, c0 + l.chunk_experts), b = buffer_of(c0);
    if (overlap != nullptr && c0 >= 2 * l.chunk_experts) overlap->consumed[b].wait_on(overlap->side);
    for (int part = 0; part < 2; ++part) {
      const int64_t rows = part == 0 ? 2 * inter : hidden;
      const dim3 grid(detail::grid_dim((rows + kRowsPerBlock - 1) / kRowsPerBlock, "moe_blas dequantise"),
                      detail::grid_dim(c1 - c0, "moe_blas dequantise (experts)", 65535));
      const DType type = part == 0 ? table.gate_type : table.down_type;
      const bool known = dispatch_weight_type(type, [&](auto decoder) {
        dequantize_experts_kernel<decltype(decoder)><<<grid, kRowsPerBlock * 32, 0, detail::native(dequantising)>>>(
            table, part, d_hit, c0, hidden, w + b * buffer_values);
      });
      if (!known) throw Error(ErrorKind::unsupported, text("cuda::moe_blas: no kernel for ", dtype_name(type)));
    }
    detail::check_launch("moe_blas dequantise");
    if (overlap != nullptr) {
      overlap->dequantised[b].record(overlap->side);
      overlap->dequantised[b].wait_on(stream);
    }
    size_t end = batch;
    while (end < host.batches.size() && host.batches[end].chunk == c0) ++end;
    for (size_t k = batch; k < end; ++k) {
      const MoeBlasHost::Batch& g = host.batches[k];
      void* const* ptr = pointers + g.pointer;
      blas.gemm_bf16_batched(stream, ptr, ptr + g.count, reinterpret_cast<float* const*>(ptr + 2 * g.count), g.count,
                             g.rows, 2 * inter, hidden);
    }
    const int32_t last_expert = host.hit[static_cast<size_t>(c1 - 1)];
    const int64_t first = host.begin[static_cast<size_t>(host.hit[static_cast<size_t>(c0)])];
    const int64_t last = host.begin[static_cast<size_t>(last_expert)] + padded(last_expert);
    const int64_t per_thread = inter % 8 == 0 ? 8 : 1;  // silu_glu_bf16_kernel's outputs a thread
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(((last - first) * inter / per_thread + 255) / 256, 8192));
    silu_glu_bf16_kernel<<<blocks, 256, 0, s>>>(gu + first * 2 * inter, last - first, inter, act + first * inter);
    detail::check_launch("moe_blas silu");
    for (size_t k = batch; k < end; ++k) {
      const MoeBlasHost::Batch& g = host.batches[k];
      void* const* ptr = pointers + g.pointer + 3 * g.count;
      blas.gemm_bf16_batched(stream, ptr, ptr + g.count, reinterpret_cast<float* const*>(ptr + 2 * g.count), g.count,
                             g.rows, hidden, inter);
    }
    if (overlap != nullptr) overlap->consumed[b].record(stream);
    batch = end;
  }
  weighted_sum_slots(stream, y, weights, tokens, top_k, hidden, out, index);
}

}  // namespace tandem::cuda
