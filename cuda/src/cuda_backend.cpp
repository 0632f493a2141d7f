// CudaBackend: the Backend calls of the forward pass on one GPU, over the kernels of
// tandem/cuda/kernels.hpp. Host C++ (no CUDA headers): it needs only the engine's headers, so
// tandem_cuda does not link the engine (the engine links it). Staging of activations and KV
// blocks per call is the interim described in tandem/backend/cuda_backend.hpp.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <utility>
#include <unordered_map>
#include <vector>

#include "tandem/backend/cuda_backend.hpp"
#include "tandem/cuda/cuda_device.hpp"
#include "tandem/cuda/kernels.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/ops/rope.hpp"

namespace tandem {
namespace {

// Device scratch, one growing buffer per use; each call's buffers are distinct slots.
enum Slot : int { kIn, kOut, kGate, kUp, kWide, kVector, kIndex, kPositions, kTables, kKv, kScores, kSlots, kCount };

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device), stream_(device) {}

  Device device() const override { return Device::cuda(device_); }
  int threads() const override { return 1; }

  void embedding(const TensorView& table, const int32_t* ids, int64_t count, float* out) override {
    stream_.make_current();  // the calling thread may not have used this GPU yet
    if (count <= 0) return;
    const int64_t width = table.shape.back();
    auto* d_ids = upload(kIndex, ids, static_cast<size_t>(count));
    float* d_out = scratch(kOut, count * width);
    cuda::embedding(stream_, table.dtype, resident(table), width, d_ids, count, d_out);
    download(out, d_out, count * width);
  }

  void linear(const LinearWeight& w, const float* x, int64_t rows, float* y) override {
    stream_.make_current();  // the calling thread may not have used this GPU yet
    if (rows <= 0) return;
    const cuda::DeviceWeight dw = weight(w);
    const float* d_x = upload(kIn, x, static_cast<size_t>(rows * dw.in_features));
    float* d_y = scratch(kOut, rows * dw.out_features);
    cuda::linear(stream_, dw, d_x, rows, d_y);
    download(y, d_y, rows * dw.out_features);
  }

  void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride, double eps,
                float* out) override {
    stream_.make_current();  // the calling thread may not have used this GPU yet
    if (rows <= 0) return;
    const int64_t span = (rows - 1) * stride + dim;
    float* d_x = upload(kIn, x, static_cast<size_t>(span));
    const float* d_w = upload(kVector, weight, static_cast<size_t>(dim));
    cuda::rms_norm(stream_, d_x, d_w, rows, dim, stride, eps, d_x);
    if (out == x || stride == dim) {
      download(out, d_x, span);
      return;
    }
    // Only the normalised values: the gaps between rows of `out` keep what they held.
    std::vector<float> host(static_cast<size_t>(span));
    download(host.data(), d_x, span);
    for (int64_t r = 0; r < rows; ++r) std::copy_n(host.data() + r * stride, dim, out + r * stride);
  }

  void rope(const RotaryEmbedding& rope, float* data, int64_t rows, int64_t row_stride, int64_t heads,
            int64_t head_stride, const int64_t* positions) override {
    stream_.make_current();  // the calling thread may not have used this GPU yet
    if (rows <= 0 || heads <= 0) return;
    const int64_t span = (rows - 1) * row_stride + (heads - 1) * head_stride + rope.rotary_dim();
    float* d_data = upload(kIn, data, static_cast<size_t>(span));
    const int64_t* d_pos = upload(kPositions, positions, static_cast<size_t>(rows));
    const std::vector<double>& freq = rope.inverse_frequencies();
    const double* d_freq = upload(kVector, freq.data(), freq.size());
    cuda::rope(stream_, d_data, rows, row_stride, heads, head_stride, d_pos, d_freq, rope.rotary_dim(),
               rope.layout() == RopeLayout::neox, rope.attention_factor());
    download(data, d_data, span);  // in place: values outside the rotated parts come back unchanged
  }

  void gqa_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q, int64_t heads,
                     int64_t kv_heads, int64_t head_dim, float softmax_scale, float* out) override {
    stream_.make_current();  // the calling thread may not have used this GPU yet
    if (batch.tokens <= 0) return;
    const cuda::DeviceBatch db = stage_batch(kv, layer, batch);
    const float* d_q = upload(kIn, q, static_cast<size_t>(batch.tokens * heads * head_dim));
    float* d_scores = scratch(kScores, cuda::attention_scratch_floats(db, heads));
    float* d_out = scratch(kOut, batch.tokens * heads * head_dim);
    cuda::gqa_attention(stream_, paged(kv), db, d_q, heads, kv_heads, head_dim, softmax_scale, d_scores, d_out);
    download(out, d_out, batch.tokens * heads * head_dim);
  }

  void mla_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q_latent,
                     const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                     float* out) override {
    stream_.make_current();  // the calling thread may not have used this GPU yet
    if (batch.tokens <= 0) return;
    const cuda::DeviceBatch db = stage_batch(kv, layer, batch);
    const float* d_ql = upload(kIn, q_latent, static_cast<size_t>(batch.tokens * heads * kv_lora));
    const float* d_qr = upload(kGate, q_rope, static_cast<size_t>(batch.tokens * heads * rope_dim));
    float* d_scores = scratch(kScores, cuda::attention_scratch_floats(db, heads));
    float* d_out = scratch(kOut, batch.tokens * heads * kv_lora);
    cuda::mla_attention(stream_, paged(kv), db, d_ql, d_qr, heads, kv_lora, rope_dim, softmax_scale, d_scores,
                        d_out);
    download(out, d_out, batch.tokens * heads * kv_lora);
  }

  void mla_absorb_query(const LinearWeight& kv_b, const MlaShape& s, const float* q, int64_t tokens,
                        float* q_latent) override {
    stream_.make_current();  // the calling thread may not have used this GPU yet
    if (tokens <= 0) return;
    const float* d_kv_b = dequantized(kv_b);
    const float* d_q = upload(kIn, q, static_cast<size_t>(tokens * s.heads * (s.nope + s.rope)));
    float* d_out = scratch(kOut, tokens * s.heads * s.kv_lora);
    cuda::mla_absorb_query(stream_, d_kv_b, s.heads, s.nope, s.rope, s.v, s.kv_lora, d_q, tokens, d_out);
    download(q_latent, d_out, tokens * s.heads * s.kv_lora);
  }

  void mla_expand_values(const LinearWeight& kv_b, const MlaShape& s, const float* attended, int64_t tokens,
                         float* out) override {
    stream_.make_current();  // the calling thread may not have used this GPU yet
    if (tokens <= 0) return;
    const float* d_kv_b = dequantized(kv_b);
    const float* d_a = upload(kIn, attended, static_cast<size_t>(tokens * s.heads * s.kv_lora));
    float* d_out = scratch(kOut, tokens * s.heads * s.v);
    cuda::mla_expand_values(stream_, d_kv_b, s.heads, s.nope, s.v, s.kv_lora, d_a, tokens, d_out);
    download(out, d_out, tokens * s.heads * s.v);
  }

  void silu_glu_mlp(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down, const float* x,
                    int64_t tokens, FeedForwardWorkspace&, float* out) override {
    stream_.make_current();  // the calling thread may not have used this GPU yet
    if (tokens <= 0) return;
    const cuda::DeviceWeight g = weight(gate), u = weight(up), d = weight(down);
    const float* d_x = upload(kIn, x, static_cast<size_t>(tokens * g.in_features));
    float* d_gate = scratch(kGate, tokens * g.out_features);
    float* d_up = scratch(kUp, tokens * u.out_features);
    float* d_out = scratch(kOut, tokens * d.out_features);
    cuda::linear(stream_, g, d_x, tokens, d_gate);
    cuda::linear(stream_, u, d_x, tokens, d_up);
    cuda::silu_glu(stream_, d_gate, d_up, tokens * g.out_features, d_gate);
    cuda::linear(stream_, d, d_gate, tokens, d_out);
    download(out, d_out, tokens * d.out_features);
  }

  void moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                          const int32_t* expert_ids, const float* weights, int64_t top_k, FeedForwardWorkspace&,
                          float* out) override {
    stream_.make_current();  // the calling thread may not have used this GPU yet
    if (tokens <= 0) return;
    const auto count = static_cast<int64_t>(experts.count());
    const int64_t pairs = tokens * top_k;
    // Counting sort of (token, slot) pairs by expert, as ops/moe.cpp; the tokens' rows gathered in
    // that order on the host, so each expert reads one contiguous slice.
    std::vector<int64_t> begin(static_cast<size_t>(count + 1), 0);
    for (int64_t r = 0; r < pairs; ++r) {
      const int32_t e = expert_ids[r];
      if (e < 0 || e >= count)
        throw Error(ErrorKind::internal, fmt::format("MoE: expert id {} outside [0, {})", e, count));
      ++begin[static_cast<size_t>(e) + 1];
    }
    for (int64_t e = 0; e < count; ++e) begin[static_cast<size_t>(e + 1)] += begin[static_cast<size_t>(e)];
    std::vector<int64_t> fill(begin.begin(), begin.end() - 1);
    std::vector<int32_t> slot_of(static_cast<size_t>(pairs));
    gathered_.resize(static_cast<size_t>(pairs * hidden));
    for (int64_t r = 0; r < pairs; ++r) {
      const int64_t i = fill[static_cast<size_t>(expert_ids[r])]++;
      slot_of[static_cast<size_t>(i)] = static_cast<int32_t>(r);
      std::copy_n(x + (r / top_k) * hidden, hidden, gathered_.data() + i * hidden);
    }
    const float* d_x = upload(kIn, gathered_.data(), gathered_.size());
    const int32_t* d_slot_of = upload(kIndex, slot_of.data(), slot_of.size());
    const float* d_weights = upload(kVector, weights, static_cast<size_t>(pairs));
    float* d_down = scratch(kOut, pairs * hidden);
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
      cuda::linear(stream_, g, d_x + b * hidden, n, d_gate);
      cuda::linear(stream_, u, d_x + b * hidden, n, d_up);
      cuda::silu_glu(stream_, d_gate, d_up, n * g.out_features, d_gate);
      cuda::linear(stream_, d, d_gate, n, d_down + b * hidden);
    }
    float* d_slots = scratch(kSlots, pairs * hidden);
    cuda::scatter_rows(stream_, d_down, d_slot_of, pairs, hidden, d_slots);
    float* d_out = scratch(kWide, tokens * hidden);
    cuda::weighted_sum_slots(stream_, d_slots, d_weights, tokens, top_k, hidden, d_out);
    download(out, d_out, tokens * hidden);
  }

  void upload_weight(const LinearWeight& w) {
    stream_.make_current();
    (void)weight(w);
  }
  void upload_table(const TensorView& table) {
    stream_.make_current();
    if (!cuda::weight_type_supported(table.dtype))
      throw Error(ErrorKind::unsupported,
                  fmt::format("the CUDA backend cannot read an embedding stored as {} yet; place it on the CPU "
                              "with --placement (e.g. 'embedding=cpu')",
                              dtype_name(table.dtype)));
    (void)resident(table);
  }
  uint64_t weight_bytes() const { return weight_bytes_; }

  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) override {
    if (n > 0) fn(0, n, 0);
  }
  void synchronize() override { stream_.synchronize(); }

 private:
  // ---- host ⇄ device staging ----
  template <typename T>
  T* upload(Slot slot, const T* host, size_t count) {
    auto* d = static_cast<T*>(scratch_bytes(slot, count * sizeof(T)));
    stream_.copy_to_device(d, host, count * sizeof(T));
    return d;
  }
  void download(float* host, const float* device, int64_t count) {
    stream_.copy_to_host(host, device, static_cast<size_t>(count) * sizeof(float));
  }
  float* scratch(Slot slot, int64_t floats) {
    return static_cast<float*>(scratch_bytes(slot, static_cast<size_t>(std::max<int64_t>(floats, 1)) * sizeof(float)));
  }
  void* scratch_bytes(Slot slot, size_t bytes) {
    cuda::DeviceBuffer& b = scratch_[slot];
    if (b.bytes() < bytes) {
      const size_t grown = std::max(bytes, b.bytes() * 2);
      stream_.synchronize();  // earlier work on the stream may still read the old buffer
      b = cuda::DeviceBuffer();
      b = allocate(grown, "working memory");
    }
    return b.data();
  }
  cuda::DeviceBuffer allocate(size_t bytes, const char* what) {
    try {
      return cuda::DeviceBuffer(device_, bytes);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::out_of_memory) throw;
      const cuda::DeviceInfo info = cuda::device_info(device_);
      throw Error(ErrorKind::out_of_memory,
                  fmt::format("cuda:{} is out of memory: {} needs {} bytes, {} of {} are free ({} bytes of weights "
                              "uploaded so far); place fewer roles on it with --placement (e.g. experts=cpu)",
                              device_, what, bytes, info.free_bytes, info.total_bytes, weight_bytes_));
    }
  }

  // ---- weights, uploaded once ----
  const void* resident(const TensorView& v) {
    if (v.data == nullptr) throw Error(ErrorKind::internal, "CUDA backend: a weight without data");
    auto it = weights_.find({v.data, v.nbytes});
    if (it == weights_.end()) {
      cuda::DeviceBuffer b = allocate(v.nbytes, "a weight");
      stream_.copy_to_device(b.data(), v.data, v.nbytes);
      weight_bytes_ += v.nbytes;
      it = weights_.emplace(HostRange{v.data, v.nbytes}, std::move(b)).first;
    }
    return it->second.data();
  }
  // A small tensor (bias, FP8 block scales) as float32 on the device, converted once.
  const float* resident_floats(const TensorView& v) {
    auto it = floats_.find({v.data, v.nbytes});
    if (it == floats_.end()) {
      const int64_t n = v.shape.elements();
      std::vector<float> host(static_cast<size_t>(n));
      dequantize_row(v.dtype, v.data, host.data(), n);
      cuda::DeviceBuffer b = allocate(host.size() * sizeof(float), "a bias or scale table");
      stream_.copy_to_device(b.data(), host.data(), host.size() * sizeof(float));
      weight_bytes_ += b.bytes();
      it = floats_.emplace(HostRange{v.data, v.nbytes}, std::move(b)).first;
    }
    return static_cast<const float*>(it->second.data());
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
  // kv_b as float32 [rows, kv_lora], dequantised on the device per call (not kept).
  const float* dequantized(const LinearWeight& w) {
    const cuda::DeviceWeight d = weight(w);
    float* out = scratch(kWide, d.out_features * d.in_features);
    cuda::dequantize_rows(stream_, d, 0, d.out_features, out);
    return out;
  }

  // ---- the KV blocks a batch reads ----
  cuda::PagedKv paged(const KvPool& kv) const {
    cuda::PagedKv p;
    p.layer_base = scratch_[kKv].data();
    p.type = kv.dtype();
    p.block_tokens = kv.spec().block_tokens;
    p.row_bytes = static_cast<int64_t>(kv.row_bytes());
    p.block_stride = kv.planes() * p.block_tokens * p.row_bytes;
    return p;
  }
  // Copies this layer's part of every block the batch reads into a compact device array (blocks
  // renumbered in first-use order) and uploads positions and renumbered block tables.
  cuda::DeviceBatch stage_batch(const KvPool& kv, int64_t layer, const AttentionBatch& batch) {
    // The kernels read f32/f16/bf16 rows; quantised KV and a retention policy's attention sums run
    // on the CPU for now.
    if (kv_type_is_quantised(kv.dtype()))
      throw Error(ErrorKind::unsupported,
                  fmt::format("CUDA attention: a {} KV cache is read on the CPU only (use --kv-type f16, bf16 or f32, "
                              "or place attention on the cpu)",
                              kv_type_name(kv.dtype())));
    if (batch.attention_rows != nullptr)
      throw Error(ErrorKind::unsupported,
                  "CUDA attention: the h2o and snapkv KV policies need the CPU's attention (place attention on the cpu)");
    const int64_t bt = kv.spec().block_tokens;
    const auto block_bytes = static_cast<size_t>(kv.planes() * bt) * kv.row_bytes();
    int64_t stride = 1, max_context = 1;
    for (int64_t t = 0; t < batch.tokens; ++t) {
      stride = std::max(stride, batch.positions[t] / bt + 1);
      max_context = std::max(max_context, batch.positions[t] + 1);
    }
    std::unordered_map<int32_t, int32_t> compact;
    std::vector<int32_t> tables(static_cast<size_t>(batch.tokens * stride), 0);
    kv_staging_.clear();
    for (int64_t t = 0; t < batch.tokens; ++t) {
      const std::vector<int32_t>& blocks = batch.tables[t]->blocks();
      const int64_t used = batch.positions[t] / bt + 1;
      if (used > static_cast<int64_t>(blocks.size()))
        throw Error(ErrorKind::internal, "CUDA attention: a position past its block table");
      for (int64_t b = 0; b < used; ++b) {
        const int32_t id = blocks[static_cast<size_t>(b)];
        auto [it, fresh] = compact.emplace(id, static_cast<int32_t>(compact.size()));
        if (fresh) {
          const std::byte* src = kv.row(id, layer, 0, 0);
          kv_staging_.insert(kv_staging_.end(), src, src + block_bytes);
        }
        tables[static_cast<size_t>(t * stride + b)] = it->second;
      }
    }
    upload(kKv, kv_staging_.data(), kv_staging_.size());
    cuda::DeviceBatch db;
    db.tokens = batch.tokens;
    db.positions = upload(kPositions, batch.positions, static_cast<size_t>(batch.tokens));
    db.block_tables = upload(kTables, tables.data(), tables.size());
    db.table_stride = stride;
    db.max_context = max_context;
    return db;
  }

  int device_;
  cuda::Stream stream_;
  // Device copies by the host bytes they were made from (a view is its data pointer and size).
  using HostRange = std::pair<const void*, uint64_t>;
  std::map<HostRange, cuda::DeviceBuffer> weights_, floats_;
  uint64_t weight_bytes_ = 0;
  cuda::DeviceBuffer scratch_[kCount];
  std::vector<float> gathered_;
  std::vector<std::byte> kv_staging_;
};

}  // namespace

void cuda_backend_upload(Backend& backend, const LinearWeight& weight) {
  if (auto* cuda = dynamic_cast<CudaBackend*>(&backend); cuda != nullptr && !weight.empty()) cuda->upload_weight(weight);
}

void cuda_backend_upload(Backend& backend, const TensorView& table) {
  if (auto* cuda = dynamic_cast<CudaBackend*>(&backend); cuda != nullptr && !table.empty()) cuda->upload_table(table);
}

uint64_t cuda_backend_weight_bytes(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda != nullptr ? cuda->weight_bytes() : 0;
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
