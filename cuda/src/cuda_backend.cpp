// CudaBackend: the Backend calls of the forward pass on one GPU, over the kernels of
// tandem/cuda/kernels.hpp. Host C++ (no CUDA headers): it needs only the engine's headers, so
// tandem_cuda does not link the engine (the engine links it).
//
// Device-resident: activations are DeviceBuffers in VRAM (allocate), every op reads and writes
// them there on the backend's stream; the only host round trip inside a step is the routed
// experts' ids (a few int32 per token), which the host groups by expert. The KV layers this
// backend runs attention for live in VRAM (kv_attach): the pool's block ids and layout (f32, f16,
// bf16, or fp8/int8 codes with their group scales), written by kv_append and read by the attention
// kernels in place; a copy-on-write block copy of the pool is repeated here (KvPool's block-copy
// listener), raw bytes, scales included, and the prefix cache's tiers move blocks to and from host
// memory through this backend (KvPool's block transfer). A run of blocks coming back from host copies
// that stay put (the host tier) is copied on a stream of its own a layer at a time, each layer's
// copies issued when the layer before it is first used and waited for by the first kernel that
// reads that layer, so a prefix hit's copies run under its suffix's first layers.
#include "tandem/backend/cuda_backend.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string_view>
#include <utility>
#include <span>
#include <vector>

#include "tandem/backend/rope_tables.hpp"
#include "tandem/cuda/blas_gemm.hpp"
#include "tandem/cuda/moe_blas.hpp"
#include "tandem/cuda/cuda_device.hpp"
#include "expert_cache.hpp"
#include "expert_streamer.hpp"
#include "tandem/cuda/kernels.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/kv/kv_pool.hpp"

namespace tandem {
namespace {

// Device scratch, one growing buffer per use.
// Batches of at most this many tokens run the routed experts pair by pair on the device
// (cuda::moe_by_pairs); larger ones group the pairs by expert through the host.
constexpr int64_t kPairwiseMaxTokens = 16;

enum Slot : int { kGate, kUp, kGathered, kDown, kSlots, kScores, kIndex, kRouter, kMla, kBlasWeight, kBlasInput, kCount };

class CudaEvent final : public BackendEvent {
 public:
  explicit CudaEvent(int device) : event(device) {}
  void synchronize() override { event.synchronize(); }
  cuda::Event event;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device), stream_(device), blas_(device) {
    const char* blas = std::getenv("TANDEM_CUDA_BLAS");
    blas_enabled_ = !(blas != nullptr && std::string_view(blas) == "0");
    // The cuBLAS experts' next chunk dequantised beside this chunk's GEMMs (TANDEM_CUDA_MOE_OVERLAP=0: one stream).
    if (const char* overlap = std::getenv("TANDEM_CUDA_MOE_OVERLAP"); !(overlap != nullptr && std::string_view(overlap) == "0"))
      moe_overlap_ = std::make_unique<cuda::MoeBlasOverlap>(device_);
    // For A/B runs: TANDEM_CUDA_Q8_DOT=0 or 1 overrides set_decode_q8.
    if (const char* q8 = std::getenv("TANDEM_CUDA_Q8_DOT"); q8 != nullptr && (q8 == std::string_view("0") || q8 == std::string_view("1")))
      q8_override_ = q8 == std::string_view("1") ? 1 : 0;
    decode_q8_ = q8_override_ == 1;
    // The decode chain's kernels with programmatic dependent launch, the default since the whole CUDA
    // suite passed with it (docs/PERF.md, "Programmatic dependent launch"); TANDEM_CUDA_PDL=0 turns it off.
    const char* pdl = std::getenv("TANDEM_CUDA_PDL");
    stream_.set_dependent_launch(!(pdl != nullptr && std::string_view(pdl) == "0"));
    // TANDEM_CUDA_PREFETCH=0: the decode linears no longer ask L2 for their rows before they wait
    // (Stream::set_prefetch_ahead), for A/B runs.
    const char* prefetch = std::getenv("TANDEM_CUDA_PREFETCH");
    stream_.set_prefetch_ahead(!(prefetch != nullptr && std::string_view(prefetch) == "0"));
    // A decode token's add + RMSNorm folded into the linears after it (add_rms_norm_linears), the
    // default since it measured faster on the H100 (docs/PERF.md, "The fold and the Q6_K head measured");
    // TANDEM_CUDA_FUSED_NORM=0 launches the two steps apart, for A/B runs.
    const char* fused = std::getenv("TANDEM_CUDA_FUSED_NORM");
    fused_norm_ = !(fused != nullptr && std::string_view(fused) == "0");
    // TANDEM_CUDA_GRAPH_REPORT=1 prints each recording's shape (are its dependent launches' edges programmatic?).
    const char* report = std::getenv("TANDEM_CUDA_GRAPH_REPORT");
    report_graphs_ = report != nullptr && std::string_view(report) == "1";
    // The tests' CUDA error inside a step: the n-th dependent launch from now fails (Stream::inject_launch_fault).
    if (const char* fault = std::getenv("TANDEM_CUDA_FAULT_AT_LAUNCH")) stream_.inject_launch_fault(std::atoll(fault));
    // A decode token's router matrix and top-k in one launch (router_and_topk) and its GQA prologue in
    // its projections' launches (gqa_projections): opt-in, TANDEM_CUDA_FUSED_ROUTER=1 and
    // TANDEM_CUDA_FUSED_PROLOGUE=1 — both the same bits and both measured slower on the H100 (docs/PERF.md,
    // "A kernel boundary traded for fences and counters").
    const char* router = std::getenv("TANDEM_CUDA_FUSED_ROUTER");
    fused_router_ = router != nullptr && std::string_view(router) == "1";
    const char* prologue = std::getenv("TANDEM_CUDA_FUSED_PROLOGUE");
    fused_prologue_ = prologue != nullptr && std::string_view(prologue) == "1";
    block_counters_ = allocate_named((2 + kHeadCounters) * sizeof(unsigned), "the fused launches' block counters");
    stream_.zero(block_counters_.data(), block_counters_.bytes());
  }
  ~CudaBackend() override {
    try {
      if (kv_copies_) kv_copies_->synchronize();
      stream_.synchronize();
    } catch (...) {  // a failed step already reported its error
    }
  }

  Device device() const override { return Device::cuda(device_); }
  int threads() const override { return 1; }
  void set_prefill_bf16(bool bf16) { prefill_bf16_ = bf16; }
  void set_decode_q8(bool on) { decode_q8_ = q8_override_ >= 0 ? q8_override_ == 1 : on; }
  void set_fused_norm(bool on) { fused_norm_ = on; }
  void set_fused_router(bool on) { fused_router_ = on; }
  void set_fused_prologue(bool on) { fused_prologue_ = on; }

  // ---- memory, copies, events ----
  DeviceBuffer allocate(size_t bytes) override {
    return DeviceBuffer(this, device(), device_memory(std::max<size_t>(bytes, 1), "activations"), bytes, false);
  }
  DeviceBuffer allocate_host(size_t bytes) override {
    refuse_while_recording("pinned host memory allocated");
    ++allocations_;
    return DeviceBuffer(this, Device::cpu(), cuda::pinned_host_allocate(bytes), bytes, true);
  }
  void free_buffer(void* data, size_t, bool pinned_host) noexcept override {
    if (pinned_host)
      cuda::pinned_host_free(data);
    else
      cuda::device_free(data);
  }
  void copy_to_device(void* dst, const void* src, size_t bytes) override {
    stream_.make_current();
    stream_.copy_to_device(dst, src, bytes);
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    stream_.make_current();
    stream_.copy_to_host_async(dst, src, bytes);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    stream_.make_current();
    stream_.copy_on_device(dst, src, bytes);
  }
  std::unique_ptr<BackendEvent> create_event() override { return std::make_unique<CudaEvent>(device_); }
  void record(BackendEvent& event) override { own(event).event.record(stream_); }
  void wait(BackendEvent& event) override {
    // Another backend's event: a host backend's work is done when its calls return.
    if (auto* e = dynamic_cast<CudaEvent*>(&event)) e->event.wait_on(stream_);
  }
  void synchronize() override {
    refuse_while_recording("a wait for the GPU");
    await_kv_imports();
    stream_.synchronize();
  }

  // ---- recording (CUDA graphs) ----
  class Recording final : public BackendGraph {
   public:
    Recording(CudaBackend& backend, cuda::Graph graph)
        : backend_(backend), graph_(std::move(graph)), allocations_(backend.allocations_) {}
    bool replay() override {
      // Any allocation since the recording may have replaced a buffer it reads or writes.
      if (backend_.allocations_ != allocations_) return false;
      backend_.stream_.make_current();
      backend_.await_kv_imports();  // the graph's kernels reach the KV layers without planes()
      graph_.launch(backend_.stream_);
      return true;
    }

   private:
    CudaBackend& backend_;
    cuda::Graph graph_;
    uint64_t allocations_;
  };
  std::unique_ptr<BackendGraph> record_graph(const std::function<void()>& issue) override {
    stream_.make_current();
    await_kv_imports();  // no wait on the copy stream's events inside the capture
    cuda::Graph::begin_capture(stream_);
    recording_ = true;
    bool issued = true;
    try {
      issue();
    } catch (...) {  // not recordable (or a real error, which the caller's unrecorded run reports)
      issued = false;
    }
    recording_ = false;
    cuda::Graph graph = cuda::Graph::end_capture(stream_);
    if (report_graphs_) {
      const cuda::GraphShape& shape = graph.shape();
      fmt::print(stderr, "cuda graph: {} nodes, {} kernels, {} edges, {} programmatic{}\n", shape.nodes, shape.kernels,
                 shape.edges, shape.programmatic_edges, graph.empty() ? ", not instantiated" : "");
    }
    if (!issued || graph.empty()) return nullptr;
    return std::make_unique<Recording>(*this, std::move(graph));
  }

  const float* prepare_vector(const TensorView& view) override {
    if (view.empty()) return nullptr;
    stream_.make_current();
    return resident_floats(view);
  }

  // ---- KV ----
  void kv_attach(KvPool& kv, int64_t layer) override {
    stream_.make_current();
    if (layer < 0 || layer >= kv.spec().layers)
      throw Error(ErrorKind::internal, fmt::format("CUDA kv_attach: layer {} outside the pool", layer));
    const KvType type = kv.dtype();
    if (!cuda_kv_type_supported(type))
      throw Error(ErrorKind::unsupported,
                  fmt::format("a {} KV cache is not supported by the CUDA backend yet: use --kv-type int8, fp8, f16, "
                              "bf16 or f32, or place attention on the cpu with --placement",
                              kv_type_name(type)));
    if (kv_ != nullptr && kv_ != &kv)
      throw Error(ErrorKind::internal, "CUDA backend: attention layers of two KV pools on one backend");
    const size_t block_bytes = layer_block_bytes(kv);
    if (block_bytes != kv.block_layer_bytes())
      throw Error(ErrorKind::internal, "CUDA backend: the KV pool's layout is not the one its kernels read");
    if (kv_layers_.contains(layer)) return;
    await_kv_imports();  // an import in progress covers the layers it started with
    const size_t bytes = block_bytes * static_cast<size_t>(kv.spec().blocks);
    cuda::DeviceBuffer planes = allocate_named(bytes, "the KV cache of one layer");
    stream_.zero(planes.data(), bytes);
    kv_bytes_ += bytes;
    kv_layers_.emplace(layer, std::move(planes));
    if (kv_ == nullptr) {
      kv_ = &kv;
      copy_listener_ = std::make_shared<KvPool::BlockCopyListener>(
          [this](int32_t from, int32_t to) { copy_kv_block(from, to); });
      kv.add_block_copy_listener(copy_listener_);
      block_transfer_ = std::make_shared<KvBlockTransfer>(*this);
      kv.add_block_transfer(block_transfer_);
    }
  }
  void kv_append(KvPool& kv, int64_t layer, int64_t plane, const AttentionBatch& batch, const float* rows,
                 int64_t row_stride) override {
    stream_.make_current();
    if (batch.tokens <= 0) return;
    check_batch(kv, batch);
    if (plane < 0 || plane >= kv.planes())
      throw Error(ErrorKind::internal, fmt::format("CUDA kv_append: plane {} of {}", plane, kv.planes()));
    cuda::kv_append(stream_, planes(layer), paged(kv, layer), plane, batch.tokens, batch.positions, batch.block_tables,
                    batch.table_stride, rows, row_stride, kv.row_width());
  }

  void kv_append_pair(KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* k_rows, const float* v_rows,
                      int64_t row_stride) override {
    stream_.make_current();
    if (batch.tokens <= 0) return;
    check_batch(kv, batch);
    if (kv.planes() != 2) throw Error(ErrorKind::internal, "CUDA kv_append_pair: the pool has one plane");
    cuda::kv_append_pair(stream_, planes(layer), paged(kv, layer), batch.tokens, batch.positions, batch.block_tables,
                         batch.table_stride, k_rows, v_rows, row_stride, kv.row_width());
  }

  // ---- ops ----
  void embedding(const TensorView& table, const int32_t* ids, int64_t count, float* out) override {
    stream_.make_current();
    if (count <= 0) return;
    if (!cuda::weight_type_supported(table.dtype)) throw unsupported_embedding(table.dtype);
    cuda::embedding(stream_, table.dtype, resident(table), table.shape.back(), ids, count, out);
  }

  void linear(const LinearWeight& w, const float* x, int64_t rows, float* y) override {
    stream_.make_current();
    if (rows <= 0) return;
    if (blas_linear(w, x, rows, y)) return;
    cuda::linear(stream_, weight(w), x, rows, y, math_for(w.weight.dtype), decode_q8_);
  }

  void linears(const LinearWeight* const* ws, float* const* ys, int count, const float* x, int64_t rows) override {
    constexpr int kMaxAtOnce = 8;
    if (rows >= kBlasMinRows || count > kMaxAtOnce) return Backend::linears(ws, ys, count, x, rows);
    stream_.make_current();
    if (rows <= 0) return;
    cuda::DeviceWeight device[kMaxAtOnce];
    cuda::TensorCoreMath maths[kMaxAtOnce];
    for (int i = 0; i < count; ++i) {
      device[i] = weight(*ws[i]);
      maths[i] = math_for(ws[i]->weight.dtype);
    }
    cuda::linears(stream_, device, ys, count, x, rows, maths, decode_q8_);
  }

  void add_rms_norm_linears(float* hidden, const float* delta, const float* norm_weight, int64_t rows, int64_t dim,
                            double eps, float* normed, const LinearWeight* const* ws, float* const* ys,
                            int count) override {
    constexpr int kMaxAtOnce = 4;
    if (fused_norm_ && rows == 1 && count <= kMaxAtOnce && norm_weight != nullptr) {
      stream_.make_current();
      cuda::DeviceWeight device[kMaxAtOnce];
      for (int i = 0; i < count; ++i) device[i] = weight(*ws[i]);
      // The first matrices of one type fold the norm into their launch; the others (a Q6_K v after
      // Q4_K q and k, on the Q4_K_M mix's "more bits" layers) read the row it writes to `normed`.
      int first = 1;
      while (first < count && device[first].type == device[0].type) ++first;
      const cuda::AddRmsNorm norm{hidden, delta, norm_weight, dim, eps, normed, norm_counter()};
      if (cuda::norm_linears(stream_, device, ys, first, norm, decode_q8_)) {
        if (first < count) linears(ws + first, ys + first, count - first, normed, rows);
        return;
      }
    }
    Backend::add_rms_norm_linears(hidden, delta, norm_weight, rows, dim, eps, normed, ws, ys, count);
  }

  // Prefill batches of kBlasMinRows+ tokens with bf16 math multiply through cuBLAS when it loads
  // (TANDEM_CUDA_BLAS=0: never): the same bf16 operands as the tiles, the weight dequantised to bf16
  // once per call into working memory (weights of more than kBlasMaxWeightValues values, the output
  // matrix of a large vocabulary, stay on the tiles).
  static constexpr int64_t kBlasMinRows = kCudaBlasMinRows;  // tandem/backend/cuda_working_memory.hpp
  static constexpr int64_t kBlasMaxWeightValues = kCudaBlasMaxWeightValues;
  // F32 weights (the routers' matrices) are multiplied in float32 as stored, without a copy: the
  // tf32x3 tiles they took ran at ~10 TFLOP/s (the Qwen3 router at 4,096 tokens: 200 µs, Nsight
  // Compute, H100).
  bool blas_linear(const LinearWeight& w, const float* x, int64_t rows, float* y) {
    if (!blas_enabled_ || rows < kBlasMinRows) return false;
    if (w.weight.dtype == DType::f32) {
      const cuda::DeviceWeight dw = weight(w);
      if (dw.bias != nullptr || dw.block_scales != nullptr || !blas_.available()) return false;
      blas_.gemm_f32(stream_, static_cast<const float*>(dw.data), x, rows, dw.out_features, dw.in_features, y);
      return true;
    }
    if (math_for(w.weight.dtype) != cuda::TensorCoreMath::bf16) return false;
    const cuda::DeviceWeight dw = weight(w);
    if (dw.bias != nullptr || dw.in_features % 32 != 0 || dw.out_features * dw.in_features > kBlasMaxWeightValues ||
        !blas_.available())
      return false;
    void* w16 = scratch_bytes(kBlasWeight, static_cast<size_t>(dw.out_features * dw.in_features) * 2);
    void* x16 = scratch_bytes(kBlasInput, static_cast<size_t>(rows * dw.in_features) * 2);
    cuda::dequantize_bf16(stream_, dw, w16);
    cuda::round_bf16(stream_, x, rows * dw.in_features, x16);
    blas_.gemm_bf16(stream_, w16, x16, rows, dw.out_features, dw.in_features, y);
    return true;
  }

  // Prefill passes averaging kBlasMoePairsPerExpert+ pairs per expert, bf16 math: the hit experts
  // dequantised to bf16 once and multiplied by cuBLAS (cuda::moe_blas; it waits for the stream once,
  // so never while recording a graph).
  bool blas_moe(const cuda::ExpertTable& table, const float* x, int64_t tokens, int64_t hidden,
                const int32_t* expert_ids, const float* weights, int64_t top_k, float* out) {
    if (!blas_enabled_ || recording_ || tokens * top_k < cuda::kBlasMoePairsPerExpert * table.experts ||
        math_for(table) != cuda::TensorCoreMath::bf16 || !cuda::moe_blas_fits(table, hidden) || !blas_.available())
      return false;
    void* work = scratch_bytes(kGathered, static_cast<size_t>(cuda::moe_blas_scratch_bytes(table, tokens, hidden, top_k)));
    cuda::moe_blas(stream_, blas_, table, x, tokens, hidden, expert_ids, weights, top_k, work, moe_blas_host_, out,
                   cuda::kBlasMoeWeightChunkBytes, moe_overlap_.get());
    return true;
  }

  void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride, double eps,
                float* out) override {
    stream_.make_current();
    if (rows <= 0) return;
    if (weight == nullptr || dim <= 0 || stride < dim)
      throw Error(ErrorKind::internal, fmt::format("CUDA rms_norm: dim {} stride {} or no weight", dim, stride));
    cuda::rms_norm(stream_, x, weight, rows, dim, stride, eps, out);
  }

  void rope(const RopeParams& rope, float* data, int64_t rows, int64_t row_stride, int64_t heads,
            int64_t head_stride, const int64_t* positions) override {
    stream_.make_current();
    if (rows <= 0 || heads <= 0) return;
    const PreparedRope& prepared = prepared_rope(rope);
    cuda::rope(stream_, data, rows, row_stride, heads, head_stride, positions,
               static_cast<const double*>(prepared.table.data()), rope.rotary_dim,
               rope.layout == RopeLayout::neox, prepared.attention_factor);
  }

  void add_rms_norm(float* hidden, const float* delta, const float* weight, int64_t rows, int64_t dim, double eps,
                    float* out) override {
    stream_.make_current();
    if (rows <= 0) return;
    if (weight == nullptr || dim <= 0)
      throw Error(ErrorKind::internal, fmt::format("CUDA add_rms_norm: dim {} or no weight", dim));
    cuda::add_rms_norm(stream_, hidden, delta, weight, rows, dim, eps, out);
  }

  void head_norm_rope(const RopeParams& rope, float* data, int64_t rows, int64_t heads, int64_t head_dim,
                      const float* norm_weight, double eps, const int64_t* positions) override {
    stream_.make_current();
    if (rows <= 0 || heads <= 0) return;
    const PreparedRope& prepared = prepared_rope(rope);
    cuda::head_norm_rope(stream_, data, rows, heads, head_dim, norm_weight, eps, positions,
                         static_cast<const double*>(prepared.table.data()), rope.rotary_dim,
                         rope.layout == RopeLayout::neox, prepared.attention_factor);
  }

  void gqa_prologue(const RopeParams& rope, const GqaHeads& h, KvPool& kv, int64_t layer,
                    const AttentionBatch& batch) override {
    stream_.make_current();
    if (batch.tokens <= 0) return;
    check_batch(kv, batch);
    if (!cuda::gqa_prologue_fused(kv.dtype(), h.head_dim) || kv.planes() != 2 ||
        kv.row_width() != h.kv_heads * h.head_dim || rope.rotary_dim > h.head_dim)  // the three calls name what is wrong
      return Backend::gqa_prologue(rope, h, kv, layer, batch);
    const PreparedRope& prepared = prepared_rope(rope);
    cuda::gqa_prologue(stream_, h.q, h.k, h.v, batch.tokens, h.heads, h.kv_heads, h.head_dim, h.q_norm, h.k_norm, h.eps,
                       h.positions,
                       static_cast<const double*>(prepared.table.data()), rope.rotary_dim,
                       rope.layout == RopeLayout::neox, prepared.attention_factor, planes(layer), paged(kv, layer),
                       batch.positions, batch.block_tables, batch.table_stride);
  }

  // A decode token's projections with the prologue in their launches (cuda::gqa_projections) where
  // the int8 decode kernels read them and the norm, if pending, may fold.
  void gqa_projections(const LinearWeight& q, const LinearWeight& k, const LinearWeight& v, const NormFirst& norm,
                       const RopeParams& rope, const GqaHeads& h, KvPool& kv, int64_t layer,
                       const AttentionBatch& batch) override {
    if (fused_prologue_ && decode_q8_ && batch.tokens == 1 && (norm.weight == nullptr || fused_norm_) &&
        h.heads + h.kv_heads <= kHeadCounters && cuda::gqa_prologue_fused(kv.dtype(), h.head_dim) &&
        kv.planes() == 2 && kv.row_width() == h.kv_heads * h.head_dim && rope.rotary_dim <= h.head_dim &&
        batch.positions != nullptr && batch.block_tables != nullptr) {
      stream_.make_current();
      check_batch(kv, batch);
      const PreparedRope& prepared = prepared_rope(rope);
      const cuda::DeviceWeight ws[3] = {weight(q), weight(k), weight(v)};
      float* const ys[3] = {h.q, h.k, h.v};
      const cuda::AddRmsNorm fold = folded(norm);
      cuda::GqaTail tail;
      tail.heads = h.heads;
      tail.kv_heads = h.kv_heads;
      tail.head_dim = h.head_dim;
      tail.q_norm = h.q_norm;
      tail.k_norm = h.k_norm;
      tail.eps = h.eps;
      tail.rope_position = h.positions;
      tail.inv_freq = static_cast<const double*>(prepared.table.data());
      tail.half = rope.rotary_dim < 2 ? 0 : rope.rotary_dim / 2;
      tail.neox = rope.layout == RopeLayout::neox;
      tail.attention_factor = prepared.attention_factor;
      tail.layer_base = planes(layer);
      tail.kv = paged(kv, layer);
      tail.slot = batch.positions;
      tail.block_table = batch.block_tables;
      tail.arrivals = head_counters();
      if (cuda::gqa_projections(stream_, ws, ys, fold, norm.normed, tail)) return;
    }
    Backend::gqa_projections(q, k, v, norm, rope, h, kv, layer, batch);
  }

  void gqa_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q, int64_t heads,
                     int64_t kv_heads, int64_t head_dim, float softmax_scale, float* out) override {
    stream_.make_current();
    if (batch.tokens <= 0) return;
    check_batch(kv, batch);
    const cuda::DeviceBatch db = device_batch(batch);
    const cuda::PagedKv pkv = paged(kv, layer);
    if (prefill_bf16_ && cuda::flash_attention_supported(db, heads, kv_heads, head_dim, pkv)) {
      const int64_t floats = cuda::flash_attention_scratch_floats(db, heads, head_dim);
      cuda::flash_gqa_attention(stream_, pkv, db, q, heads, kv_heads, head_dim, softmax_scale,
                                floats > 0 ? scratch(kScores, floats) : nullptr, out);
      return;
    }
    float* d_scores = scratch(kScores, cuda::gqa_attention_scratch_floats(db, heads, kv_heads, head_dim));
    cuda::gqa_attention(stream_, pkv, db, q, heads, kv_heads, head_dim, softmax_scale, d_scores, out);
  }

  void mla_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q_latent,
                     const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                     float* out) override {
    stream_.make_current();
    if (batch.tokens <= 0) return;
    check_batch(kv, batch);
    const cuda::DeviceBatch db = device_batch(batch);
    float* d_scores = scratch(kScores, cuda::mla_attention_scratch_floats(db, heads, kv_lora));
    cuda::mla_attention(stream_, paged(kv, layer), db, q_latent, q_rope, heads, kv_lora, rope_dim, softmax_scale,
                        d_scores, out);
  }

  bool mla_prefill_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const LinearWeight& kv_b,
                             const MlaShape& s, const float* q, float softmax_scale, float* out) override {
    stream_.make_current();
    if (!prefill_bf16_ || batch.tokens <= 0 || batch.attention_rows != nullptr) return false;
    check_batch(kv, batch);
    const cuda::DeviceBatch db = device_batch(batch);
    const cuda::PagedKv pkv = paged(kv, layer);
    if (!cuda::flash_mla_supported(db, s.heads, s.nope, s.rope, s.v, s.kv_lora, pkv)) return false;
    void* work = scratch_bytes(kMla, cuda::flash_mla_scratch_bytes(db, s.heads, s.kv_lora));
    cuda::flash_mla_prefill(stream_, pkv, db, weight(kv_b), math_for(kv_b.weight.dtype), q, s.heads, s.nope, s.rope,
                            s.v, s.kv_lora, softmax_scale, work, out);
    return true;
  }

  void mla_absorb_query(const LinearWeight& kv_b, const MlaShape& s, const float* q, int64_t tokens,
                        float* q_latent) override {
    stream_.make_current();
    if (tokens <= 0) return;
    cuda::mla_absorb_query(stream_, weight(kv_b), s.heads, s.nope, s.rope, s.v, s.kv_lora, q, tokens, q_latent);
  }

  void mla_expand_values(const LinearWeight& kv_b, const MlaShape& s, const float* attended, int64_t tokens,
                         float* out) override {
    stream_.make_current();
    if (tokens <= 0) return;
    cuda::mla_expand_values(stream_, weight(kv_b), s.heads, s.nope, s.v, s.kv_lora, attended, tokens, out);
  }

  void silu_glu_mlp(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down,
                    const float* x, int64_t tokens, float* out) override {
    stream_.make_current();
    if (tokens <= 0) return;
    const cuda::DeviceWeight g = weight(gate), u = weight(up), d = weight(down);
    float* d_gate = scratch(kGate, tokens * g.out_features);
    float* d_up = scratch(kUp, tokens * u.out_features);
    cuda::linear(stream_, g, x, tokens, d_gate, math_for(g.type), decode_q8_);
    cuda::linear(stream_, u, x, tokens, d_up, math_for(u.type), decode_q8_);
    cuda::silu_glu(stream_, d_gate, d_up, tokens * g.out_features, d_gate);
    cuda::linear(stream_, d, d_gate, tokens, out, math_for(d.type), decode_q8_);
  }

  // Queued on the stream like every call: the event the caller records after it is the wait.
  void moe_routed_experts_submit(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                                 const int32_t* expert_ids, const float* weights, int64_t top_k,
                                 float* out) override {
    moe_routed_experts(experts, x, tokens, hidden, expert_ids, weights, top_k, out);
  }

  void moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                          const int32_t* expert_ids, const float* weights, int64_t top_k,
                          float* out) override {
    stream_.make_current();
    if (tokens <= 0) return;
    const auto count = static_cast<int64_t>(experts.count());
    const int64_t pairs = tokens * top_k;
    // Few tokens (decode): pair by pair on the device. Many: grouped by expert on the device, so
    // each expert's rows are read once per tile of its tokens. Neither goes through the host.
    // Experts in host memory that this backend caches: the cache's table (the ids are the held ones).
    const auto cached = expert_caches_.find(&experts);
    if (const cuda::ExpertTable* table =
            cached != expert_caches_.end() ? &cached->second->table() : expert_table(experts)) {
      if (tokens <= kPairwiseMaxTokens) {
        const int64_t act_floats = cuda::pairwise_act_floats(*table, hidden, pairs, decode_q8_);
        float* d_act = scratch(kGate, act_floats);
        if (cuda::pairwise_aligned(x, d_act))
          return cuda::moe_by_pairs(stream_, *table, x, tokens, hidden, expert_ids, weights, top_k, d_act, act_floats,
                                    out, decode_q8_);
      } else if (blas_moe(*table, x, tokens, hidden, expert_ids, weights, top_k, out)) {
        return;
      } else {
        void* work = scratch_bytes(kGathered, static_cast<size_t>(cuda::moe_grouped_scratch_bytes(*table, tokens,
                                                                                                  hidden, top_k)));
        return cuda::moe_grouped(stream_, *table, x, tokens, hidden, expert_ids, weights, top_k, work, out,
                                 cuda::GroupedTiles::automatic, math_for(*table));
      }
    }
    // Experts whose weights differ in type or shape: the ids come to the host (pairs int32) to group the (token, slot) pairs by expert, a counting
    // sort as ops/moe.cpp; the rows are gathered on the device in that order, so each expert reads
    // one contiguous slice.
    host_ids_.resize(static_cast<size_t>(pairs));
    stream_.copy_to_host(host_ids_.data(), expert_ids, host_ids_.size() * sizeof(int32_t));  // waits
    std::vector<int64_t>& begin = begin_;
    begin.assign(static_cast<size_t>(count + 1), 0);
    for (int64_t r = 0; r < pairs; ++r) {
      const int32_t e = host_ids_[static_cast<size_t>(r)];
      if (e < 0 || e >= count)
        throw Error(ErrorKind::internal, fmt::format("MoE: expert id {} outside [0, {})", e, count));
      ++begin[static_cast<size_t>(e) + 1];
    }
    for (int64_t e = 0; e < count; ++e) begin[static_cast<size_t>(e + 1)] += begin[static_cast<size_t>(e)];
    fill_.assign(begin.begin(), begin.end() - 1);
    // index[0, pairs): the (token, slot) pair of each grouped row; index[pairs, 2·pairs): its token.
    index_.resize(static_cast<size_t>(2 * pairs));
    for (int64_t r = 0; r < pairs; ++r) {
      const int64_t i = fill_[static_cast<size_t>(host_ids_[static_cast<size_t>(r)])]++;
      index_[static_cast<size_t>(i)] = static_cast<int32_t>(r);
      index_[static_cast<size_t>(pairs + i)] = static_cast<int32_t>(r / top_k);
    }
    auto* d_index = static_cast<int32_t*>(scratch_bytes(kIndex, index_.size() * sizeof(int32_t)));
    stream_.copy_to_device(d_index, index_.data(), index_.size() * sizeof(int32_t));
    float* d_x = scratch(kGathered, pairs * hidden);
    cuda::gather_rows(stream_, x, hidden, d_index + pairs, pairs, hidden, d_x, hidden);
    float* d_down = scratch(kDown, pairs * hidden);
    int64_t widest = 1;
    for (int64_t e = 0; e < count; ++e) widest = std::max(widest, experts.gate[static_cast<size_t>(e)].out_features());
    float* d_gate = scratch(kGate, pairs * widest);
    float* d_up = scratch(kUp, pairs * widest);
    for (int64_t e = 0; e < count; ++e) {
      const int64_t b = begin[static_cast<size_t>(e)], n = begin[static_cast<size_t>(e + 1)] - b;
      if (n == 0) continue;
      const cuda::DeviceWeight g = weight(experts.gate[static_cast<size_t>(e)]);
      const cuda::DeviceWeight u = weight(experts.up[static_cast<size_t>(e)]);
      const cuda::DeviceWeight d = weight(experts.down[static_cast<size_t>(e)]);
      cuda::linear(stream_, g, d_x + b * hidden, n, d_gate, math_for(g.type));
      cuda::linear(stream_, u, d_x + b * hidden, n, d_up, math_for(u.type));
      cuda::silu_glu(stream_, d_gate, d_up, n * g.out_features, d_gate);
      cuda::linear(stream_, d, d_gate, n, d_down + b * hidden, math_for(d.type));
    }
    float* d_slots = scratch(kSlots, pairs * hidden);
    cuda::scatter_rows(stream_, d_down, d_index, pairs, hidden, d_slots);
    cuda::weighted_sum_slots(stream_, d_slots, weights, tokens, top_k, hidden, out);
  }

  bool cache_experts(const ExpertWeights& experts, std::span<const int32_t> ids) override {
    stream_.make_current();
    refuse_while_recording("experts cached");
    auto found = expert_caches_.find(&experts);
    if (found == expert_caches_.end()) {
      if (ids.empty()) return false;
      std::unique_ptr<cuda::ExpertCache> cache;
      try {
        cache = cuda::ExpertCache::make(device_, experts, static_cast<int64_t>(ids.size()));
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::out_of_memory) throw;
        return false;  // no room: the layer's experts stay on the CPU
      }
      if (!cache) return false;
      weight_bytes_ += cache->bytes();
      found = expert_caches_.emplace(&experts, std::move(cache)).first;
    }
    found->second->hold(ids, stream_);
    return true;
  }

  void split_cached_experts(const ExpertWeights& experts, const int32_t* ids, int64_t pairs, int32_t* held,
                            int32_t* rest, uint32_t* counts) override {
    stream_.make_current();
    const auto found = expert_caches_.find(&experts);
    if (found == expert_caches_.end())
      throw Error(ErrorKind::internal, "CUDA split_cached_experts: these experts are not cached here");
    cuda::split_cached_experts(stream_, ids, pairs, found->second->held_map(), found->second->table().experts, held,
                               rest, counts);
  }

  void prepare_streamed_experts(const ExpertWeights& experts) override {
    if (!streamer_) streamer_ = std::make_unique<cuda::ExpertStreamer>(device_);
    streamer_->mirror(experts);
  }

  bool stream_routed_experts(const ExpertWeights& experts, const ExpertWeights* next, const float* x, int64_t tokens,
                             int64_t hidden, const int32_t* expert_ids, const float* weights, int64_t top_k,
                             float* out) override {
    stream_.make_current();
    if (tokens <= 0) return true;
    refuse_while_recording("experts streamed in");
    if (!streamer_) streamer_ = std::make_unique<cuda::ExpertStreamer>(device_);
    const cuda::ExpertTable* table = streamer_->acquire(experts, stream_);
    if (table == nullptr) return false;
    if (!blas_moe(*table, x, tokens, hidden, expert_ids, weights, top_k, out)) {
      void* work = scratch_bytes(kGathered, static_cast<size_t>(cuda::moe_grouped_scratch_bytes(*table, tokens, hidden,
                                                                                                top_k)));
      cuda::moe_grouped(stream_, *table, x, tokens, hidden, expert_ids, weights, top_k, work, out,
                        cuda::GroupedTiles::automatic, math_for(*table));
    }
    streamer_->release(stream_);
    if (next != nullptr) streamer_->prefetch(*next, stream_);
    return true;
  }

  // A pending norm as the fused launches take it (none: hidden null, the launch reads normed).
  cuda::AddRmsNorm folded(const NormFirst& norm) {
    if (norm.weight == nullptr) return {};
    return {norm.hidden, norm.delta, norm.weight, norm.dim, norm.eps, norm.normed, norm_counter()};
  }
  static cuda::RouterSpec router_spec(const RoutingParams& p) {
    cuda::RouterSpec spec;
    spec.kind = static_cast<int>(p.kind);
    spec.experts = p.experts;
    spec.top_k = p.top_k;
    spec.n_group = p.n_group;
    spec.topk_group = p.topk_group;
    spec.norm_topk_prob = p.norm_topk_prob;
    spec.routed_scaling_factor = p.routed_scaling_factor;
    return spec;
  }
  // A decode token's norm (when folding is on), router matrix and top-k in one launch where
  // cuda::linear_route takes them.
  void router_and_topk(const RoutingParams& p, const LinearWeight& router, const NormFirst& norm, int64_t tokens,
                       float* logits, const float* selection_bias, int32_t* expert_ids, float* weights) override {
    if (fused_router_ && tokens == 1 && (norm.weight == nullptr || fused_norm_)) {
      stream_.make_current();
      const cuda::DeviceWeight w = weight(router);
      const cuda::AddRmsNorm fold = folded(norm);
      const cuda::RouteAfter route{router_spec(p), selection_bias, expert_ids, weights, route_counter()};
      if (cuda::linear_route(stream_, w, logits, fold, norm.normed, route)) return;
    }
    Backend::router_and_topk(p, router, norm, tokens, logits, selection_bias, expert_ids, weights);
  }

  void router_topk(const RoutingParams& p, const float* logits, int64_t tokens, const float* selection_bias,
                   int32_t* expert_ids, float* weights) override {
    stream_.make_current();
    if (tokens <= 0) return;
    const cuda::RouterSpec spec = router_spec(p);
    auto* d_scratch = static_cast<double*>(
        scratch_bytes(kRouter, static_cast<size_t>(tokens * (2 * p.experts + p.n_group + p.top_k)) * sizeof(double)));
    cuda::router_topk(stream_, spec, logits, tokens, selection_bias, d_scratch, expert_ids, weights);
  }

  void split_deferred_experts(const int32_t* expert_ids, const float* weights, int64_t tokens, int64_t top_k,
                              int64_t defer, int32_t* kept_ids, float* kept_weights, int32_t* deferred_ids,
                              float* deferred_weights) override {
    stream_.make_current();
    cuda::split_deferred_experts(stream_, expert_ids, weights, tokens, top_k, defer, kept_ids, kept_weights,
                                 deferred_ids, deferred_weights);
  }
  void add(const float* a, const float* b, int64_t count, float* out) override {
    stream_.make_current();
    cuda::add(stream_, a, b, count, out);
  }
  void gated_add(float* acc, const float* x, const float* gate_logits, int64_t rows, int64_t width) override {
    stream_.make_current();
    cuda::gated_add(stream_, acc, x, gate_logits, rows, width);
  }
  void gather_rows(const float* src, int64_t src_stride, const int32_t* rows, int64_t count, int64_t width,
                   float* dst, int64_t dst_stride) override {
    stream_.make_current();
    cuda::gather_rows(stream_, src, src_stride, rows, count, width, dst, dst_stride);
  }

  void prepare(WeightGroup, const LinearWeight& w) override {
    if (w.empty()) return;
    stream_.make_current();
    (void)weight(w);
  }
  void prepare_table(WeightGroup, const TensorView& table) override {
    if (table.empty()) return;
    stream_.make_current();
    if (!cuda::weight_type_supported(table.dtype)) throw unsupported_embedding(table.dtype);
    (void)resident(table);
  }
  uint64_t weight_bytes() const { return weight_bytes_; }
  uint64_t kv_bytes() const { return kv_bytes_; }

  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) override {
    if (n > 0) fn(0, n, 0);
  }

 private:
  static Error unsupported_embedding(DType type) {
    return Error(ErrorKind::unsupported,
                 fmt::format("the CUDA backend cannot read an embedding stored as {} yet; place it on the CPU "
                             "with --placement (e.g. 'embedding=cpu')",
                             dtype_name(type)));
  }
  CudaEvent& own(BackendEvent& event) {
    auto* e = dynamic_cast<CudaEvent*>(&event);
    if (e == nullptr) throw Error(ErrorKind::internal, "CUDA backend: recording an event another backend made");
    return *e;
  }

  // ---- device memory ----
  void refuse_while_recording(const char* what) const {
    if (recording_) throw Error(ErrorKind::internal, fmt::format("CUDA graph: {} while recording", what));
  }
  void* device_memory(size_t bytes, const char* what) {
    refuse_while_recording("device memory allocated");
    ++allocations_;
    try {
      return cuda::device_allocate(device_, bytes);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::out_of_memory) throw;
      throw out_of_memory(bytes, what);
    }
  }
  cuda::DeviceBuffer allocate_named(size_t bytes, const char* what) {
    refuse_while_recording("device memory allocated");
    ++allocations_;
    try {
      return cuda::DeviceBuffer(device_, bytes);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::out_of_memory) throw;
      throw out_of_memory(bytes, what);
    }
  }
  Error out_of_memory(size_t bytes, const char* what) const {
    const cuda::DeviceInfo info = cuda::device_info(device_);
    return Error(ErrorKind::out_of_memory,
                 fmt::format("cuda:{} is out of memory: {} needs {} bytes, {} of {} are free ({} bytes of weights and "
                             "{} of KV cache on it so far); place fewer roles on it with --placement (e.g. "
                             "experts=cpu) or shrink --ctx-size/--parallel",
                             device_, what, bytes, info.free_bytes, info.total_bytes, weight_bytes_, kv_bytes_));
  }
  float* scratch(Slot slot, int64_t floats) {
    return static_cast<float*>(scratch_bytes(slot, static_cast<size_t>(std::max<int64_t>(floats, 1)) * sizeof(float)));
  }
  void* scratch_bytes(Slot slot, size_t bytes) {
    cuda::DeviceBuffer& b = scratch_[slot];
    if (b.bytes() < bytes) {
      const size_t grown = std::max(bytes, b.bytes() * 2);
      refuse_while_recording("working memory grown");
      stream_.synchronize();  // earlier work on the stream may still read the old buffer
      b = cuda::DeviceBuffer();
      b = allocate_named(grown, "working memory");
    }
    return b.data();
  }

  // ---- weights, uploaded once ----
  const void* resident(const TensorView& v) {
    if (v.data == nullptr) throw Error(ErrorKind::internal, "CUDA backend: a weight without data");
    std::lock_guard lock(weights_mutex_);
    auto it = weights_.find({v.data, v.nbytes});
    if (it == weights_.end()) {
      cuda::DeviceBuffer b = allocate_named(v.nbytes, "a weight");
      stream_.copy_to_device(b.data(), v.data, v.nbytes);
      weight_bytes_ += v.nbytes;
      it = weights_.emplace(HostRange{v.data, v.nbytes}, std::move(b)).first;
    }
    return it->second.data();
  }
  // A small tensor (bias, FP8 block scales, a norm weight) as float32 on the device, converted once.
  const float* resident_floats(const TensorView& v) {
    std::lock_guard lock(weights_mutex_);
    auto it = floats_.find({v.data, v.nbytes});
    if (it == floats_.end()) {
      const int64_t n = v.shape.elements();
      std::vector<float> host(static_cast<size_t>(n));
      dequantize_row(v.dtype, v.data, host.data(), n);
      cuda::DeviceBuffer b = allocate_named(host.size() * sizeof(float), "a bias, scale or norm table");
      stream_.copy_to_device(b.data(), host.data(), host.size() * sizeof(float));
      weight_bytes_ += b.bytes();
      it = floats_.emplace(HostRange{v.data, v.nbytes}, std::move(b)).first;
    }
    return static_cast<const float*>(it->second.data());
  }
  // The RoPE tables of `params` in VRAM, built and uploaded the first time they are asked for.
  struct PreparedRope {
    RopeParams params;
    cuda::DeviceBuffer table;  // the inverse frequencies, double
    double attention_factor = 1.0;
  };
  const PreparedRope& prepared_rope(const RopeParams& params) {
    std::lock_guard lock(weights_mutex_);
    for (const PreparedRope& r : ropes_)
      if (r.params == params) return r;
    const RopeTables tables = rope_tables(params);
    const size_t bytes = tables.inverse_frequencies.size() * sizeof(double);
    // Kept only once whole: an allocation refused while a graph is recorded leaves nothing behind.
    PreparedRope r;
    r.params = params;
    r.attention_factor = tables.attention_factor;
    r.table = allocate_named(std::max<size_t>(bytes, 8), "a RoPE table");
    stream_.copy_to_device(r.table.data(), tables.inverse_frequencies.data(), bytes);
    return ropes_.emplace_back(std::move(r));
  }
  // The tensor cores' math for a weight type: F32 and F16 weights ask for float32 compute (3xTF32),
  // as do all types when bf16 prefill is off; the rest carry more error than bf16 operands add.
  cuda::TensorCoreMath math_for(DType t) const {
    return prefill_bf16_ && t != DType::f32 && t != DType::f16 ? cuda::TensorCoreMath::bf16
                                                                : cuda::TensorCoreMath::tf32x3;
  }
  cuda::TensorCoreMath math_for(const cuda::ExpertTable& t) const {
    return math_for(t.gate_type) == cuda::TensorCoreMath::bf16 && math_for(t.down_type) == cuda::TensorCoreMath::bf16
               ? cuda::TensorCoreMath::bf16
               : cuda::TensorCoreMath::tf32x3;
  }

  cuda::DeviceWeight weight(const LinearWeight& w) {
    if (w.empty() || w.weight.shape.rank != 2)
      throw Error(ErrorKind::internal, "CUDA backend: a linear weight that is not a matrix");
    if (!cuda::weight_type_supported(w.weight.dtype))
      throw Error(ErrorKind::unsupported,
                  fmt::format("the CUDA backend cannot read weights stored as {} yet; place the roles holding them "
                              "on the CPU with --placement (e.g. '*=cpu')",
                              dtype_name(w.weight.dtype)));
    cuda::DeviceWeight d;
    d.type = w.weight.dtype;
    d.data = resident(w.weight);
    d.out_features = w.out_features();
    d.in_features = w.in_features();
    if (!w.scale_inv.empty()) d.block_scales = resident_floats(w.scale_inv);
    if (!w.bias.empty()) d.bias = resident_floats(w.bias);
    return d;
  }
  // The device table of a layer's expert pointers, made once; null when the experts are not alike
  // (gate and up of one stored type, down of one, the same shapes in every expert, no bias), which the pairwise
  // kernels need.
  // The entry is kept only once decided: a table whose allocation is refused while a graph is
  // recorded (or fails) leaves nothing behind, so a later call makes it — kept half-made, it read as
  // "not alike" for good and moved the layer to other kernels (other bits) after one failed recording.
  const cuda::ExpertTable* expert_table(const ExpertWeights& experts) {
    const auto found = expert_tables_.find(&experts);
    if (found != expert_tables_.end()) return found->second.usable ? &found->second.table : nullptr;
    ExpertTableEntry entry;
    const auto not_alike = [&]() -> const cuda::ExpertTable* {
      expert_tables_.emplace(&experts, ExpertTableEntry{});
      return nullptr;
    };
    const auto count = static_cast<int64_t>(experts.count());
    if (count == 0 || experts.up.size() != experts.gate.size() || experts.down.size() != experts.gate.size())
      return not_alike();
    std::vector<const void*> pointers(static_cast<size_t>(6 * count), nullptr);
    cuda::ExpertTable& t = entry.table;
    bool scaled = false;
    for (int64_t e = 0; e < count; ++e) {
      const auto i = static_cast<size_t>(e);
      const cuda::DeviceWeight g = weight(experts.gate[i]), u = weight(experts.up[i]), d = weight(experts.down[i]);
      if (e == 0) {
        t.experts = count;
        t.intermediate = g.out_features;
        t.gate_type = g.type;
        t.up_type = u.type;
        t.down_type = d.type;
        scaled = g.block_scales != nullptr;
      }
      const bool alike = g.type == t.gate_type && u.type == t.up_type && d.type == t.down_type &&
                         g.type == u.type && g.out_features == t.intermediate &&
                         u.out_features == t.intermediate && d.in_features == t.intermediate &&
                         u.in_features == g.in_features && d.out_features == g.in_features && g.bias == nullptr &&
                         u.bias == nullptr && d.bias == nullptr && (g.block_scales != nullptr) == scaled &&
                         (u.block_scales != nullptr) == scaled && (d.block_scales != nullptr) == scaled;
      if (!alike) return not_alike();
      pointers[i] = g.data;
      pointers[static_cast<size_t>(count) + i] = u.data;
      pointers[static_cast<size_t>(2 * count) + i] = d.data;
      pointers[static_cast<size_t>(3 * count) + i] = g.block_scales;
      pointers[static_cast<size_t>(4 * count) + i] = u.block_scales;
      pointers[static_cast<size_t>(5 * count) + i] = d.block_scales;
      if (e == 0) {
        t.gate_row_bytes = static_cast<int64_t>(row_bytes(g.type, g.in_features).value_or(0));
        t.up_row_bytes = static_cast<int64_t>(row_bytes(u.type, u.in_features).value_or(0));
        t.down_row_bytes = static_cast<int64_t>(row_bytes(d.type, d.in_features).value_or(0));
        if (t.gate_row_bytes == 0 || t.up_row_bytes == 0 || t.down_row_bytes == 0) return not_alike();
      }
    }
    entry.pointers = allocate_named(pointers.size() * sizeof(void*), "the experts' pointer tables");
    stream_.copy_to_device(entry.pointers.data(), pointers.data(), pointers.size() * sizeof(void*));
    const auto* base = static_cast<const void* const*>(entry.pointers.data());
    t.gate = base;
    t.up = base + count;
    t.down = base + 2 * count;
    if (scaled) {
      const auto* scales = reinterpret_cast<const float* const*>(base);
      t.gate_scales = scales + 3 * count;
      t.up_scales = scales + 4 * count;
      t.down_scales = scales + 5 * count;
    }
    entry.usable = true;
    return &expert_tables_.emplace(&experts, std::move(entry)).first->second.table;
  }

  // kv_b as float32 [rows, kv_lora], dequantised on the device per call (not kept).

  // ---- the KV layers in VRAM ----
  static size_t layer_block_bytes(const KvPool& kv) {
    return static_cast<size_t>(kv.planes() * kv.spec().block_tokens) * kv.row_bytes();
  }
  void* planes(int64_t layer) {
    const auto it = kv_layers_.find(layer);
    if (it == kv_layers_.end())
      throw Error(ErrorKind::internal, fmt::format("CUDA backend: KV layer {} was not attached to this GPU", layer));
    await_kv_layer(layer);
    return it->second.data();
  }
  cuda::PagedKv paged(const KvPool& kv, int64_t layer) {
    cuda::PagedKv p;
    p.layer_base = planes(layer);
    p.type = kv.dtype();
    p.block_tokens = kv.spec().block_tokens;
    p.row_bytes = static_cast<int64_t>(kv.row_bytes());
    p.block_stride = static_cast<int64_t>(layer_block_bytes(kv));
    p.rope_values = kv_type_is_quantised(kv.dtype()) ? kv.spec().rope_values : 0;  // the f16 tail of MLA rows
    return p;
  }
  void check_batch(const KvPool& kv, const AttentionBatch& batch) const {
    if (&kv != kv_) throw Error(ErrorKind::internal, "CUDA attention: a KV pool this backend was not attached to");
    if (batch.attention_rows != nullptr)
      throw Error(ErrorKind::unsupported,
                  "CUDA attention: the h2o and snapkv KV policies need the CPU's attention (place attention on the cpu)");
    if (batch.block_tables == nullptr || batch.table_stride <= 0 || batch.positions == nullptr ||
        batch.max_context <= 0 || batch.max_context > batch.table_stride * kv.spec().block_tokens)
      throw Error(ErrorKind::internal, "CUDA attention: a batch without device block tables");
  }
  static cuda::DeviceBatch device_batch(const AttentionBatch& batch) {
    cuda::DeviceBatch db;
    db.tokens = batch.tokens;
    db.positions = batch.positions;
    db.block_tables = batch.block_tables;
    db.table_stride = batch.table_stride;
    db.max_context = batch.max_context;
    db.one_sequence = batch.one_sequence;
    return db;
  }
  void copy_kv_block(int32_t from, int32_t to) {
    stream_.make_current();
    await_kv_imports();
    const size_t bytes = layer_block_bytes(*kv_);
    for (auto& [layer, buffer] : kv_layers_) {
      auto* base = static_cast<std::byte*>(buffer.data());
      stream_.copy_on_device(base + static_cast<size_t>(to) * bytes, base + static_cast<size_t>(from) * bytes, bytes);
    }
  }

  // A block's planes of the layers in VRAM to and from host memory (the prefix cache's host and
  // disk tiers), in KvPool::export_block's layout: layer l at l · layer_block_bytes. Synchronous:
  // the host bytes are complete (to_host) or free to reuse (from_host) on return.
  void kv_block_to_host(int32_t block, std::byte* host) {
    stream_.make_current();
    await_kv_imports();  // the block may be one still arriving, or `host` a source still being read
    const size_t bytes = layer_block_bytes(*kv_);
    for (auto& [layer, buffer] : kv_layers_)
      stream_.copy_to_host_async(
          host + static_cast<size_t>(layer) * bytes,
          static_cast<const std::byte*>(buffer.data()) + static_cast<size_t>(block) * bytes, bytes);
    stream_.synchronize();
  }
  void kv_block_from_host(int32_t block, const std::byte* host) {
    kv_blocks_from_host(std::span<const int32_t>(&block, 1), std::span<const std::byte* const>(&host, 1),
                        HostCopies::reused);
  }
  // kv_block_from_host of each blocks[i] from hosts[i], on kv_copies_ after the work queued so far on
  // stream_: a layer's copies in one batch (a prefix run of 500 blocks over 48 layers was 24,000 copy
  // calls and 500 waits). Reused host copies: all issued and waited for here. Kept ones: issued a
  // layer at a time as the layers are reached (await_kv_layer).
  void kv_blocks_from_host(std::span<const int32_t> blocks, std::span<const std::byte* const> hosts,
                           HostCopies copies) {
    stream_.make_current();
    if (!kv_copies_) {
      kv_copies_ = std::make_unique<cuda::Stream>(device_);
      kv_import_start_ = std::make_unique<cuda::Event>(device_);
    }
    issue_kv_import(kAllLayers);  // an earlier import's copies go first (the two may share a block)
    kv_import_start_->record(stream_);
    kv_import_start_->wait_on(*kv_copies_);
    const size_t n = std::min(blocks.size(), hosts.size());
    kv_import_ = KvImport{{blocks.begin(), blocks.begin() + static_cast<std::ptrdiff_t>(n)},
                          {hosts.begin(), hosts.begin() + static_cast<std::ptrdiff_t>(n)}, 0};
    if (copies == HostCopies::kept) return;
    issue_kv_import(kAllLayers);
    kv_copies_->synchronize();
    kv_layers_awaited_.clear();  // every copy issued so far is complete
  }
  // The pending import's copies of the attached layers up to `last`, each layer's one batch on
  // kv_copies_ followed by its arrival event (awaited by stream_ at the layer's first use).
  static constexpr int64_t kAllLayers = std::numeric_limits<int64_t>::max();
  void issue_kv_import(int64_t last) {
    if (!kv_import_) return;
    KvImport& pending = *kv_import_;
    const size_t bytes = layer_block_bytes(*kv_);
    auto it = kv_layers_.lower_bound(pending.next_layer);
    for (; it != kv_layers_.end() && it->first <= last; ++it) {
      copy_dsts_.clear();
      copy_srcs_.clear();
      for (size_t i = 0; i < pending.blocks.size(); ++i) {
        copy_dsts_.push_back(static_cast<std::byte*>(it->second.data()) + static_cast<size_t>(pending.blocks[i]) * bytes);
        copy_srcs_.push_back(pending.hosts[i] + static_cast<size_t>(it->first) * bytes);
      }
      copy_sizes_.assign(copy_dsts_.size(), bytes);
      kv_copies_->copy_many_to_device(copy_dsts_.data(), copy_srcs_.data(), copy_sizes_.data(), copy_dsts_.size());
      kv_layer_arrived_.try_emplace(it->first, device_).first->second.record(*kv_copies_);
      kv_layers_awaited_.insert(it->first);
      pending.next_layer = it->first + 1;
    }
    if (it == kv_layers_.end()) kv_import_.reset();
  }
  // Before stream_'s work on layer `layer`: the pending import's copies of it and of the next attached
  // layer are issued (the next layer's run while this one computes), and stream_ waits for this layer's.
  void await_kv_layer(int64_t layer) {
    if (kv_import_) {
      const auto next = kv_layers_.upper_bound(layer);
      issue_kv_import(next == kv_layers_.end() ? layer : next->first);
    }
    if (kv_layers_awaited_.erase(layer) != 0) kv_layer_arrived_.at(layer).wait_on(stream_);
  }
  // Every import issued, and stream_'s later work after all of them: before work that reaches the
  // layers without planes() (a graph, a block copy, a copy to the host).
  void await_kv_imports() {
    issue_kv_import(kAllLayers);
    for (const int64_t layer : kv_layers_awaited_) kv_layer_arrived_.at(layer).wait_on(stream_);
    kv_layers_awaited_.clear();
  }
  // Every import issued and complete (its host copies free to change).
  void settle_kv_imports() {
    if (!kv_copies_) return;
    stream_.make_current();
    issue_kv_import(kAllLayers);
    kv_copies_->synchronize();
    kv_layers_awaited_.clear();
  }
  class KvBlockTransfer final : public KvPool::BlockTransfer {
   public:
    explicit KvBlockTransfer(CudaBackend& backend) : backend_(backend) {}
    bool holds_layer(int64_t layer) const override { return backend_.kv_layers_.contains(layer); }
    void to_host(int32_t block, std::byte* host) override { backend_.kv_block_to_host(block, host); }
    void from_host(int32_t block, const std::byte* host) override { backend_.kv_block_from_host(block, host); }
    void from_host_many(std::span<const int32_t> blocks, std::span<const std::byte* const> hosts,
                        HostCopies copies) override {
      backend_.kv_blocks_from_host(blocks, hosts, copies);
    }
    void settle() override { backend_.settle_kv_imports(); }

   private:
    CudaBackend& backend_;
  };

  int device_;
  cuda::Stream stream_;
  bool prefill_bf16_ = true;  // see cuda_backend_set_prefill_bf16
  cuda::BlasGemm blas_;
  cuda::MoeBlasHost moe_blas_host_;
  std::unique_ptr<cuda::MoeBlasOverlap> moe_overlap_;  // null: TANDEM_CUDA_MOE_OVERLAP=0
  // An import from kept host copies whose later layers are not issued yet (kv_blocks_from_host).
  struct KvImport {
    std::vector<int32_t> blocks;
    std::vector<const std::byte*> hosts;
    int64_t next_layer = 0;  // the first layer whose copies are not issued
  };
  std::unique_ptr<cuda::Stream> kv_copies_;  // the imports' copies, made at the first
  std::unique_ptr<cuda::Event> kv_import_start_;
  std::optional<KvImport> kv_import_;
  std::map<int64_t, cuda::Event> kv_layer_arrived_;  // recorded after a layer's copies
  std::set<int64_t> kv_layers_awaited_;  // layers with copies issued that stream_ has not waited for
  std::vector<void*> copy_dsts_;  // issue_kv_import's batch
  std::vector<const void*> copy_srcs_;
  std::vector<size_t> copy_sizes_;
  bool blas_enabled_ = true;
  bool decode_q8_ = false;  // see cuda_backend_set_decode_q8
  int q8_override_ = -1;    // TANDEM_CUDA_Q8_DOT: -1 none, else 0 or 1
  bool fused_norm_ = true;
  bool fused_router_ = false;
  bool fused_prologue_ = false;
  bool report_graphs_ = false;
  // The block counters of cuda::norm_linears (and linear_route's norm) and of linear_route's routing,
  // left zeroed by their kernels.
  cuda::DeviceBuffer block_counters_;
  unsigned* norm_counter() { return static_cast<unsigned*>(block_counters_.data()); }
  unsigned* route_counter() { return static_cast<unsigned*>(block_counters_.data()) + 1; }
  static constexpr int64_t kHeadCounters = 1024;  // gqa_projections' per-head counters (query and key heads)
  unsigned* head_counters() { return static_cast<unsigned*>(block_counters_.data()) + 2; }
  bool recording_ = false;
  uint64_t allocations_ = 0;  // device and pinned allocations so far (recordings check it)
  // Device copies by the host bytes they were made from (a view is its data pointer and size).
  using HostRange = std::pair<const void*, uint64_t>;
  std::mutex weights_mutex_;
  std::map<HostRange, cuda::DeviceBuffer> weights_, floats_;
  std::deque<PreparedRope> ropes_;  // one per RopeParams value seen
  uint64_t weight_bytes_ = 0, kv_bytes_ = 0;
  cuda::DeviceBuffer scratch_[kCount];
  const KvPool* kv_ = nullptr;
  std::map<int64_t, cuda::DeviceBuffer> kv_layers_;
  std::shared_ptr<KvPool::BlockCopyListener> copy_listener_;
  std::shared_ptr<KvBlockTransfer> block_transfer_;
  struct ExpertTableEntry {
    cuda::DeviceBuffer pointers;
    cuda::ExpertTable table;
    bool usable = false;
  };
  std::map<const ExpertWeights*, ExpertTableEntry> expert_tables_;
  std::unique_ptr<cuda::ExpertStreamer> streamer_;  // experts in host memory, streamed for prefill
  std::map<const ExpertWeights*, std::unique_ptr<cuda::ExpertCache>> expert_caches_;  // held hot experts
  std::vector<int32_t> host_ids_, index_;
  std::vector<int64_t> begin_, fill_;
};

}  // namespace

uint64_t cuda_backend_weight_bytes(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda != nullptr ? cuda->weight_bytes() : 0;
}

uint64_t cuda_backend_kv_bytes(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda != nullptr ? cuda->kv_bytes() : 0;
}

void cuda_backend_set_prefill_bf16(Backend& backend, bool bf16) {
  if (auto* cuda = dynamic_cast<CudaBackend*>(&backend)) cuda->set_prefill_bf16(bf16);
}

void cuda_backend_set_decode_q8(Backend& backend, bool on) {
  if (auto* cuda = dynamic_cast<CudaBackend*>(&backend)) cuda->set_decode_q8(on);
}

void cuda_backend_set_fused_norm(Backend& backend, bool on) {
  if (auto* cuda = dynamic_cast<CudaBackend*>(&backend)) cuda->set_fused_norm(on);
}

void cuda_backend_set_fused_router(Backend& backend, bool on) {
  if (auto* cuda = dynamic_cast<CudaBackend*>(&backend)) cuda->set_fused_router(on);
}

void cuda_backend_set_fused_prologue(Backend& backend, bool on) {
  if (auto* cuda = dynamic_cast<CudaBackend*>(&backend)) cuda->set_fused_prologue(on);
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  const int count = cuda::device_count();
  if (device < 0 || device >= count)
    throw Error(ErrorKind::invalid_argument,
                count == 0 ? fmt::format("cuda:{} requested, but no CUDA device is visible to this process (no GPU, "
                                         "or no driver); use --placement '*=cpu'",
                                         device)
                           : fmt::format("cuda:{} requested, but this machine has {} CUDA device{} (cuda:0-{})",
                                         device, count, count == 1 ? "" : "s", count - 1));
  return std::make_unique<CudaBackend>(device);
}

}  // namespace tandem
