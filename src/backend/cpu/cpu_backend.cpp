// The CPU backend: on a hwloc-pinned thread pool, the fast quantised kernels (FastCpuOps) for
// linear layers, MLPs and routed experts whose weight types have one, the reference operators
// from ops/ for the rest (and for everything with CpuKernels::reference).
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <utility>
#include <vector>

#include "backend/cpu/fast_attention.hpp"
#include "backend/cpu/fast_ops.hpp"
#include "core/environment.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/cpu/reference/attention.hpp"
#include "tandem/backend/cpu/reference/expert_deferral.hpp"
#include "tandem/backend/cpu/reference/linear.hpp"
#include "tandem/backend/cpu/reference/mla.hpp"
#include "tandem/backend/cpu/reference/moe.hpp"
#include "tandem/backend/cpu/reference/norm.hpp"
#include "tandem/backend/cpu/reference/rope.hpp"
#include "tandem/backend/cpu/reference/router.hpp"
#include "tandem/backend/thread_pool.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_pool.hpp"

namespace tandem {
namespace {

constexpr std::align_val_t kBufferAlignment{64};

// Work on the CPU is done when its call returns, but for submitted routed experts: an event marks
// the last task submitted before it (0: none) and waits for it on the pool.
class CpuEvent final : public BackendEvent {
 public:
  explicit CpuEvent(ThreadPool& pool) : pool_(pool) {}
  void synchronize() override {
    if (ticket_ != 0) pool_.join(ticket_);
  }
  void mark(uint64_t ticket) { ticket_ = ticket; }

 private:
  ThreadPool& pool_;
  uint64_t ticket_ = 0;
};

// The plain-data view of a batch's sequences the host kernels read (AttentionBatch).
void check_tables(const KvPool& kv, const AttentionBatch& batch, const char* op) {
  if (batch.tokens > 0 && (batch.block_tables == nullptr || batch.table_stride <= 0))
    throw Error(ErrorKind::internal, fmt::format("{}: a batch without block tables", op));
  if (batch.tokens > 0 && kv.per_channel_plane(0) && batch.open_rows == nullptr)
    throw Error(ErrorKind::internal, fmt::format("{}: an int4 cache's batch without open-rows slots", op));
}

// TANDEM_CPU_SPIN_US=N: how long the pool's idle threads poll before they sleep (ThreadPool).
int spin_microseconds_from_environment() {
  return static_cast<int>(integer_from_environment("TANDEM_CPU_SPIN_US", 0, ThreadPool::kMaxSpinMicroseconds)
                              .value_or(ThreadPool::kDefaultSpinMicroseconds));
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, CpuKernels kernels)
      : pool_(threads, spin_microseconds_from_environment()), router_scratch_(static_cast<size_t>(pool_.size())) {
    if (kernels == CpuKernels::fast) {
      fast_.emplace(pool_, kernels::best_isa_level());
      flash_.emplace(pool_, fast_->level());
    }
  }

  ~CpuBackend() override {
    try {
      drain();       // a submitted task uses the kernels and workspaces destroyed below
    } catch (...) {  // its failure was the caller's to collect
    }
  }

  Device device() const override { return Device::cpu(); }
  int threads() const override { return pool_.size(); }

  // Host memory is this backend's memory: buffers are aligned host allocations, copies memcpy.
  DeviceBuffer allocate(size_t bytes) override { return host_buffer(bytes, false); }
  DeviceBuffer allocate_host(size_t bytes) override { return host_buffer(bytes, true); }
  void free_buffer(void* data, size_t, bool) noexcept override {
    try {
      drain();       // submitted work may still use the buffer
    } catch (...) {  // its failure was the caller's to collect
    }
    ::operator delete(data, kBufferAlignment);
  }
  void copy_to_device(void* dst, const void* src, size_t bytes) override { copy(dst, src, bytes); }
  void copy_to_host(void* dst, const void* src, size_t bytes) override { copy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override {
    drain();
    if (bytes > 0 && dst != src) std::memmove(dst, src, bytes);
  }
  std::unique_ptr<BackendEvent> create_event() override { return std::make_unique<CpuEvent>(pool_); }
  void record(BackendEvent& event) override {
    if (auto* e = dynamic_cast<CpuEvent*>(&event)) e->mark(last_submitted_.load(std::memory_order_acquire));
  }
  void wait(BackendEvent&) override {}  // this backend's later calls wait for its own work anyway
  void synchronize() override { drain(); }

  // Q4_K and Q6_K matrices the fast kernels serve are repacked into 16-row strips (FastCpuOps::prepare).
  void prepare(WeightGroup role, const LinearWeight& w) override {
    if (fast_) fast_->prepare(w, int8_copy_for(role));
  }
  void set_int8_copies(bool on) { int8_copies_ = on; }
  int64_t repacked_bytes() const { return fast_ ? fast_->repacked_bytes() : 0; }
  int64_t repack_bytes(WeightGroup role, const LinearWeight& w) const {
    return fast_ ? fast_->repack_bytes(w, int8_copy_for(role)) : 0;
  }
  // The output head multiplies one token a prompt (and the embedding is gathered): no int8 copy for them.
  bool int8_copy_for(WeightGroup role) const {
    return int8_copies_ && role != WeightGroup::output && role != WeightGroup::embedding;
  }

  const float* prepare_vector(const TensorView& view) override {
    if (view.empty()) return nullptr;
    std::lock_guard lock(prepared_mutex_);
    auto it = prepared_.find({view.data, view.nbytes});
    if (it == prepared_.end())
      it = prepared_.emplace(std::pair{view.data, view.nbytes}, dequantize_to_vector(view)).first;
    return it->second.data();
  }

  // The pool's own host planes are where the reference attention reads, whatever the KV type.
  void kv_attach(KvPool&, int64_t) override {}
  void kv_append(KvPool& kv, int64_t layer, int64_t plane, const AttentionBatch& batch, const float* rows,
                 int64_t row_stride) override {
    drain();
    check_tables(kv, batch, "kv_append");
    for (int64_t t = 0; t < batch.tokens; ++t)
      kv.write_position(batch.block_tables + t * batch.table_stride, open_rows_of(batch, t), layer, plane,
                        batch.positions[t], rows + t * row_stride);
  }

  void router_topk(const RoutingParams& params, const float* logits, int64_t tokens, const float* selection_bias,
                   int32_t* expert_ids, float* weights) override {
    drain();
    std::lock_guard lock(router_mutex_);
    const int64_t n = params.experts, k = params.top_k;
    if (tokens * n < 4096 || pool_.size() == 1)
      return route_tokens_to_experts(params, logits, tokens, selection_bias, expert_ids, weights, router_scratch_[0]);
    pool_.parallel_for(tokens, [&](int64_t t0, int64_t t1, int worker) {
      route_tokens_to_experts(params, logits + t0 * n, t1 - t0, selection_bias, expert_ids + t0 * k, weights + t0 * k,
                              router_scratch_[static_cast<size_t>(worker)]);
    });
  }
  void split_deferred_experts(const int32_t* expert_ids, const float* weights, int64_t tokens, int64_t top_k,
                              int64_t defer, int32_t* kept_ids, float* kept_weights, int32_t* deferred_ids,
                              float* deferred_weights) override {
    drain();
    tandem::split_deferred_experts(expert_ids, weights, tokens, top_k, defer, kept_ids, kept_weights, deferred_ids,
                                   deferred_weights);
  }
  void add(const float* a, const float* b, int64_t count, float* out) override {
    drain();
    over_rows(count, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) out[i] = a[i] + b[i];
    });
  }
  void gated_add(float* acc, const float* x, const float* gate_logits, int64_t rows, int64_t width) override {
    drain();
    over_rows(rows, width, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float g = gate_logits == nullptr ? 1.0f : 1.0f / (1.0f + std::exp(-gate_logits[r]));
        for (int64_t i = 0; i < width; ++i) acc[r * width + i] += g * x[r * width + i];
      }
    });
  }
  void gather_rows(const float* src, int64_t src_stride, const int32_t* rows, int64_t count, int64_t width,
                   float* dst, int64_t dst_stride) override {
    drain();
    for (int64_t i = 0; i < count; ++i) {
      const int64_t r = rows == nullptr ? i : rows[i];
      std::memmove(dst + i * dst_stride, src + r * src_stride, static_cast<size_t>(width) * sizeof(float));
    }
  }

  void embedding(const TensorView& table, const int32_t* ids, int64_t count, float* out) override {
    drain();
    embedding_lookup(table, ids, count, out);
  }
  void linear(const LinearWeight& w, const float* x, int64_t rows, float* y) override {
    drain();
    if (fast_ && fast_->supports(w))
      fast_->linear(w, x, rows, y);
    else
      tandem::linear(&pool_, w, x, rows, y);
  }
  void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride, double eps,
                float* out) override {
    drain();
    over_rows(rows, dim, [&](int64_t r0, int64_t r1) {
      tandem::rms_norm(x + r0 * stride, weight, r1 - r0, dim, stride, eps, out + r0 * stride);
    });
  }
  void rope(const RopeParams& rope, float* data, int64_t rows, int64_t row_stride, int64_t heads,
            int64_t head_stride, const int64_t* positions) override {
    drain();
    const RotaryEmbedding& rotary = prepared_rope(rope);
    over_rows(rows, heads * rope.rotary_dim, [&](int64_t r0, int64_t r1) {
      rotary.apply(data + r0 * row_stride, r1 - r0, row_stride, heads, head_stride, positions + r0);
    });
  }
  void gqa_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q,
                     int64_t heads, int64_t kv_heads, int64_t head_dim, float softmax_scale,
                     float* out) override {
    drain();
    check_tables(kv, batch, "gqa_attention");
    if (flash_ && fast_gqa_attention_supports(batch, heads, kv_heads, head_dim))
      return flash_->gqa(kv, layer, batch, q, heads, kv_heads, head_dim, softmax_scale, out);
    tandem::gqa_attention(pool_, kv, layer, batch, q, heads, kv_heads, head_dim, softmax_scale, out);
  }
  void mla_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q_latent,
                     const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim,
                     float softmax_scale, float* out) override {
    drain();
    check_tables(kv, batch, "mla_attention");
    if (flash_ && fast_mla_attention_supports(batch, heads, kv_lora))
      return flash_->mla(kv, layer, batch, q_latent, q_rope, heads, kv_lora, rope_dim, softmax_scale, out);
    tandem::mla_attention(pool_, kv, layer, batch, q_latent, q_rope, heads, kv_lora, rope_dim, softmax_scale,
                          out);
  }
  void mla_absorb_query(const LinearWeight& kv_b, const MlaShape& shape, const float* q, int64_t tokens,
                        float* q_latent) override {
    drain();
    if (fast_ && fast_->mla_absorb_query(kv_b, shape, q, tokens, q_latent)) return;
    tandem::mla_absorb_query(pool_, kv_b, shape, q, tokens, q_latent);
  }
  void mla_expand_values(const LinearWeight& kv_b, const MlaShape& shape, const float* attended,
                         int64_t tokens, float* out) override {
    drain();
    if (fast_ && fast_->mla_expand_values(kv_b, shape, attended, tokens, out)) return;
    tandem::mla_expand_values(pool_, kv_b, shape, attended, tokens, out);
  }
  void silu_glu_mlp(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down,
                    const float* x, int64_t tokens, float* out) override {
    drain();
    if (fast_ && fast_->silu_glu_mlp(gate, up, down, x, tokens, out)) return;
    std::lock_guard lock(ffn_mutex_);
    tandem::silu_glu_mlp(&pool_, gate, up, down, x, tokens, ffn_ws_, out);
  }
  void moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                          const int32_t* expert_ids, const float* weights, int64_t top_k,
                          float* out) override {
    drain();
    routed_experts(experts, x, tokens, hidden, expert_ids, weights, top_k, out);
  }
  void moe_routed_experts_submit(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                                 const int32_t* expert_ids, const float* weights, int64_t top_k,
                                 float* out) override {
    // Tasks run in submission order: no drain. The pool's driver worker runs it with the others.
    last_submitted_.store(pool_.submit([this, &experts, x, tokens, hidden, expert_ids, weights, top_k, out] {
      routed_experts(experts, x, tokens, hidden, expert_ids, weights, top_k, out);
    }),
                          std::memory_order_release);
  }
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) override {
    drain();
    pool_.parallel_for(n, fn);
  }

 private:
  // The reference rotation for `params`, its tables built the first time they are asked for.
  // fn(r0, r1) over [0, rows) on the pool when the rows hold enough values to pay for a dispatch
  // (each row is computed as the single-threaded operator would: the same bits at any thread count).
  template <typename Fn>
  void over_rows(int64_t rows, int64_t values_per_row, Fn&& fn) {
    constexpr int64_t kValuesPerDispatch = 16384;
    if (pool_.size() == 1 || rows < 2 || rows * values_per_row < kValuesPerDispatch) return fn(0, rows);
    const int64_t chunk = std::max<int64_t>(1, kValuesPerDispatch / 4 / std::max<int64_t>(1, values_per_row));
    pool_.parallel_for((rows + chunk - 1) / chunk, [&](int64_t begin, int64_t end, int) {
      fn(begin * chunk, std::min(rows, end * chunk));
    });
  }

  const RotaryEmbedding& prepared_rope(const RopeParams& params) {
    std::lock_guard lock(prepared_mutex_);
    for (const RotaryEmbedding& r : ropes_)
      if (r.params() == params) return r;
    return ropes_.emplace_back(params);
  }
  // Waits for the routed experts submitted so far (rethrowing their failure): every other call
  // runs after them, as on a stream.
  void drain() {
    if (const uint64_t last = last_submitted_.load(std::memory_order_acquire); last != 0) pool_.join(last);
  }
  void routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                      const int32_t* expert_ids, const float* weights, int64_t top_k, float* out) {
    if (fast_ && fast_->moe_routed_experts(experts, x, tokens, hidden, expert_ids, weights, top_k, out))
      return;
    std::lock_guard lock(ffn_mutex_);
    tandem::moe_routed_experts(&pool_, experts, x, tokens, hidden, expert_ids, weights, top_k, ffn_ws_, out);
  }

  DeviceBuffer host_buffer(size_t bytes, bool pinned) {
    const size_t size = std::max<size_t>(bytes, 1);
    void* data = ::operator new(size, kBufferAlignment, std::nothrow);
    if (data == nullptr)
      throw Error(ErrorKind::out_of_memory, fmt::format("cannot allocate {} bytes of host memory", size));
    return DeviceBuffer(this, Device::cpu(), data, size, pinned);
  }

  ThreadPool pool_;
  std::optional<FastCpuOps> fast_;  // empty: the reference path only
  std::optional<CpuFlashAttention> flash_;
  std::mutex prepared_mutex_, router_mutex_;
  bool int8_copies_ = cpu_int8_enabled();  // TANDEM_CPU_INT8; the engine's memory guard may turn it off
  std::map<std::pair<const void*, uint64_t>, std::vector<float>> prepared_;  // by the view's bytes
  std::deque<RotaryEmbedding> ropes_;  // one per RopeParams value seen (a model has one or two)
  std::vector<RouterScratch> router_scratch_;  // per pool worker
  std::mutex ffn_mutex_;  // the reference MLP/MoE workspace below serves one call at a time
  FeedForwardWorkspace ffn_ws_;
  std::atomic<uint64_t> last_submitted_{0};  // the pool's ticket of the last routed experts submitted
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads, CpuKernels kernels) {
  return std::make_unique<CpuBackend>(threads, kernels);
}

int64_t cpu_backend_repacked_bytes(const Backend& backend) noexcept {
  const auto* cpu = dynamic_cast<const CpuBackend*>(&backend);
  return cpu ? cpu->repacked_bytes() : 0;
}

void cpu_backend_set_int8_copies(Backend& backend, bool on) {
  if (auto* cpu = dynamic_cast<CpuBackend*>(&backend)) cpu->set_int8_copies(on);
}

int64_t cpu_backend_repack_bytes(const Backend& backend, WeightGroup role, const LinearWeight& w) {
  const auto* cpu = dynamic_cast<const CpuBackend*>(&backend);
  return cpu ? cpu->repack_bytes(role, w) : 0;
}

std::string_view cpu_kernels_name(CpuKernels kernels) noexcept {
  return kernels == CpuKernels::fast ? "fast" : "reference";
}

std::optional<CpuKernels> parse_cpu_kernels(std::string_view name) noexcept {
  if (name == "fast") return CpuKernels::fast;
  if (name == "reference") return CpuKernels::reference;
  return std::nullopt;
}

bool cpu_fast_kernel_available(DType type) noexcept { return kernels::weight_kind_for(type).has_value(); }

std::string_view cpu_kernel_isa() noexcept { return kernels::isa_level_name(kernels::best_isa_level()); }

bool cpu_repack_enabled(bool requested) {
  return integer_from_environment("TANDEM_CPU_REPACK", 0, 1).value_or(requested ? 1 : 0) == 1;
}

bool cpu_repack_forced() { return integer_from_environment("TANDEM_CPU_REPACK", 0, 1).has_value(); }

bool cpu_int8_enabled() { return integer_from_environment("TANDEM_CPU_INT8", 0, 1).value_or(1) == 1; }

}  // namespace tandem
