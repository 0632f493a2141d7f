// Engine::load and the CPU engine: weights bound in place, one backend, one KV pool shared by the
// sessions, one forward pass (its scratch reused under a lock, so sessions may run on any thread).
#include "tandem/engine/engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>
#include <map>
#include <mutex>
#include <tuple>
#include <set>
#include <type_traits>
#include <utility>

#include "core/environment.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/op_timing_backend.hpp"
#include "tandem/backend/cuda_backend.hpp"
#include "tandem/engine/forward.hpp"
#include "tandem/engine/plan.hpp"
#include "tandem/engine/repack_budget.hpp"
#include "tandem/engine/scheduler.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_host_tier.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/kv/prefix_cache.hpp"
#include "tandem/model/model_identity.hpp"
#include "tandem/kv/retention.hpp"
#include "tandem/model/model_files.hpp"
#include "tandem/model/weight_roles.hpp"
#include "tandem/text/chat_template.hpp"
#include "tandem/text/tokenizer.hpp"

namespace tandem {

const Placement& Engine::placement() const {
  static const Placement all_cpu;
  return all_cpu;
}

KvPool& Engine::kv_pool() { throw Error(ErrorKind::unsupported, "this engine has no shared KV pool"); }

void Engine::run_batch(std::span<const SequenceChunk>, float*, const std::atomic<bool>*) {
  throw Error(ErrorKind::unsupported, "this engine cannot run a batch of sequences");
}

Scheduler& Engine::scheduler() { throw Error(ErrorKind::unsupported, "this engine has no scheduler"); }
int64_t Engine::adopt_cached_prefix(std::span<const int32_t>, BlockTable&) { return 0; }
void Engine::cache_prefix(std::span<const int32_t>, const BlockTable&) {}
void Engine::make_kv_room(int64_t) {}

uint64_t MemoryReport::total_bytes() const {
  uint64_t total = 0;
  for (const auto& l : lines) total += l.bytes;
  return total;
}

bool MemoryReport::uses_gpu() const {
  return std::any_of(lines.begin(), lines.end(), [](const Line& l) { return l.device.starts_with("cuda"); });
}

std::string MemoryReport::placement_text() const {
  const auto gib = [](uint64_t bytes) { return static_cast<double>(bytes) / (uint64_t{1} << 30); };
  std::vector<std::string> devices;
  for (const Line& l : lines)
    if (std::find(devices.begin(), devices.end(), l.device) == devices.end()) devices.push_back(l.device);
  std::string out;
  for (const std::string& device : devices) {
    std::string parts;
    uint64_t total = 0;
    for (const Line& l : lines) {
      if (l.device != device || l.bytes == 0) continue;
      parts += fmt::format("{}{} {:.2f} GiB{}", parts.empty() ? "" : ", ", l.what, gib(l.bytes),
                           l.mapped ? " mapped" : "");
      total += l.bytes;
    }
    if (parts.empty()) continue;
    out += fmt::format("{}{}: {} ({:.2f} GiB)", out.empty() ? "" : "; ", device, parts, gib(total));
  }
  return out;
}

// tandem plan predicts with the threshold the engine picks.
static_assert(LoadOptions::kStreamExpertsAutoTokens == kStreamExpertsMinTokens);

namespace {

// One line per type of CPU-placed linear weights the fast CPU kernels lack (those layers run on
// the reference path).
std::vector<std::string> reference_fallback_notices(const Weights& weights, const Placement& placement) {
  std::set<DType> types;
  for_each_weight(weights, [&](WeightGroup group, int64_t layer, const auto& item, auto...) {
    if constexpr (std::is_same_v<std::decay_t<decltype(item)>, LinearWeight>)
      if (!item.empty() && placement.device_for(group, layer).kind == DeviceKind::cpu &&
          !cpu_fast_kernel_available(item.weight.dtype))
        types.insert(item.weight.dtype);
  });
  std::vector<std::string> notices;
  for (DType t : types)
    notices.push_back(fmt::format("no fast CPU kernel for {} weights: they run on the reference path", dtype_name(t)));
  return notices;
}

// Whether every MoE layer's routed experts run on a GPU (resident there, not streamed in).
bool routed_experts_all_on_gpu(const ModelConfig& c, const Placement& placement) {
  bool any = false;
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    if (!c.is_moe_layer(layer)) continue;
    if (placement.device_for(WeightGroup::experts, layer).kind != DeviceKind::cuda) return false;
    any = true;
  }
  return any;
}

void check_options(const LoadOptions& o) {
  auto positive = [](int64_t v, const char* name) {
    if (v <= 0)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("load option {} must be positive, got {}", name, v));
  };
  if (o.max_context_tokens != 0) positive(o.max_context_tokens, "max_context_tokens");  // 0: the model's
  positive(o.max_sessions, "max_sessions");
  positive(o.kv_block_tokens, "kv_block_tokens");
  if (o.max_batch_tokens != LoadOptions::kBatchTokensAutomatic) positive(o.max_batch_tokens, "max_batch_tokens");
  if (static_cast<int>(o.kv_type) < 0 || static_cast<int>(o.kv_type) > static_cast<int>(KvType::int4_g64))
    throw Error(ErrorKind::invalid_argument,
                fmt::format("load option kv_type {} is not a KV type", static_cast<int>(o.kv_type)));
  if (!o.kv_policy.empty()) (void)RetentionPolicy::parse(o.kv_policy);
  const auto at_most = [](int64_t v, int64_t limit, const char* what) {
    if (v > limit)
      throw Error(ErrorKind::out_of_range, fmt::format("{} of {} is more than the {} supported", what, v, limit));
  };
  at_most(o.max_batch_tokens, int64_t{1} << 20, "a batch (max_batch_tokens)");
  at_most(o.max_context_tokens, int64_t{1} << 24, "a context (max_context_tokens, the CLI's -c/--ctx)");
  at_most(o.max_sessions, 4096, "max_sessions");
  if (o.stream_experts_min_tokens < LoadOptions::kStreamExpertsAutomatic)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("load option stream_experts_min_tokens {} is not a token count (0: never, -1: automatic)",
                            o.stream_experts_min_tokens));
}

// The host tier's blocks for a pool with device layers (LoadOptions::kv_host_bytes): by default the
// device layers' own bytes, at most a quarter of the machine's memory; 0 without device layers.
int64_t host_tier_blocks(const KvPool& pool, std::optional<uint64_t> asked_bytes) {
  if (!pool.has_device_layers()) return 0;
  uint64_t bytes = 0;
  if (asked_bytes) {
    bytes = *asked_bytes;
    if (bytes > 0 && bytes < pool.block_bytes())
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("--kv-host-size {} bytes holds no KV block: one block of this model takes {} bytes", bytes,
                              pool.block_bytes()));
  } else {
    int64_t device_layers = 0;
    for (int64_t layer = 0; layer < pool.spec().layers; ++layer) device_layers += pool.on_host(layer) ? 0 : 1;
    bytes = static_cast<uint64_t>(pool.spec().blocks) * pool.block_layer_bytes() * static_cast<uint64_t>(device_layers);
    if (const double memory = physical_memory_bytes(); memory > 0)
      bytes = std::min(bytes, static_cast<uint64_t>(memory) / 4);
  }
  return static_cast<int64_t>(bytes / pool.block_bytes());
}

class CpuEngine;

// Takes a unique_lock again when leaving a scope that released it, also by an exception.
struct RelockOnExit {
  std::unique_lock<std::mutex>& lock;
  ~RelockOnExit() {
    if (!lock.owns_lock()) lock.lock();
  }
};

// LoadOptions::max_context_tokens == 0: the model's trained context, at most 4096 tokens (a KV cache
// for a 128k-token context by default would surprise anyone on a small machine).
int64_t default_context_tokens(const ModelConfig& config) {
  constexpr int64_t cap = 4096;
  return config.max_position_embeddings > 0 ? std::min(config.max_position_embeddings, cap) : cap;
}

class EngineSession final : public Session {
 public:
  explicit EngineSession(CpuEngine& engine);
  ~EngineSession() override;

  void prefill(std::span<const int32_t> ids, bool all_logits) override;
  void decode(int32_t id) override {
    const int32_t one[1] = {id};
    prefill(one, false);
  }
  std::span<const float> logits() const override { return logits_; }
  std::span<const float> all_logits() const override { return all_logits_; }
  int64_t position() const override { return static_cast<int64_t>(tokens_.size()); }
  const std::vector<int32_t>& tokens() const override { return tokens_; }
  std::vector<int64_t> cached_positions() const override { return slot_positions_; }
  int64_t cached_prompt_tokens() const override { return cached_tokens_; }
  void reset() override;
  void truncate(int64_t tokens) override;
  void cancel() override { cancel_.store(true); }

 private:
  CpuEngine& engine_;
  BlockTable table_;
  std::vector<int32_t> tokens_;
  // The position each cache slot holds (slot i = position i until a retention policy evicts).
  std::vector<int64_t> slot_positions_;
  RetentionState retention_;
  std::vector<uint64_t> block_keys_;  // prefix-cache keys of the full blocks, in order
  int64_t cached_tokens_ = 0;
  std::vector<float> logits_, all_logits_;
  std::atomic<bool> cancel_{false};
};

class CpuEngine final : public Engine {
 public:
  CpuEngine(ModelFiles files, const LoadOptions& options, Placement placement)
      : files_(std::move(files)), options_(options), placement_(std::move(placement)) {
    if (options_.max_context_tokens == 0) options_.max_context_tokens = default_context_tokens(files_.config);
    const bool automatic_batch = options_.max_batch_tokens == LoadOptions::kBatchTokensAutomatic;
    if (automatic_batch)
      options_.max_batch_tokens = std::min(LoadOptions::kDefaultBatchTokens, options_.max_context_tokens);
    if (!options_.kv_policy.empty()) retention_policy_ = RetentionPolicy::parse(options_.kv_policy);
    auto step = [&](float fraction, std::string_view stage) {
      if (options_.cancel && options_.cancel->load()) throw Error(ErrorKind::cancelled, "loading cancelled");
      if (options_.progress) options_.progress(fraction, stage);
    };
    step(0.2f, "binding weights");
    weights_ = bind_weights(files_);
    uint64_t budget_left = UINT64_MAX;  // VRAM a longer pass may still take (a --vram-budget's rest)
    const bool gpu_visible = cuda_forward_available();
    if (options_.placement_flags.any() || (options_.gpu_by_default && gpu_visible)) {
      PlanRequest request;
      request.rules = options_.placement;
      request.flags = options_.placement_flags;
      request.gpu_available = gpu_visible || options_.placement_flags.vram_total_bytes > 0;
      request.gpu_by_default = options_.gpu_by_default && gpu_visible;
      request.max_sessions = options_.max_sessions;
      request.context_tokens = options_.max_context_tokens;
      request.kv_type = options_.kv_type;
      request.max_batch_tokens = options_.max_batch_tokens;
      // Without a budget an automatic pass size may grow to the streamed one below: fit that.
      if (automatic_batch && options_.placement_flags.vram_budget.empty())
        request.max_batch_tokens = std::min(LoadOptions::kStreamedBatchTokens, options_.max_context_tokens);
      request.stream_experts_min_tokens = options_.stream_experts_min_tokens == LoadOptions::kStreamExpertsAutomatic
                                              ? LoadOptions::kStreamExpertsAutoTokens
                                              : options_.stream_experts_min_tokens;
      if (!retention_policy_.is_full())
        request.cpu_attention_reason = fmt::format("--kv-policy {} needs the CPU's attention",
                                                   retention_policy_.to_string());
      PlacementPlan plan = plan_placement(files_, weights_, request);
      if (plan.vram_budget_bytes > 0)
        budget_left = plan.vram_budget_bytes > plan.vram_bytes ? plan.vram_budget_bytes - plan.vram_bytes : 0;
      if (!plan.gpu_defaults_declined.empty())
        files_.warnings.push_back(fmt::format(
            "placement: everything on the cpu, not the hybrid defaults (routed experts on the cpu, the rest on "
            "cuda:0), because {}; --placement chooses (docs/PLACEMENT.md)",
            plan.gpu_defaults_declined));
      placement_ = std::move(plan.placement);
      expert_cache_per_layer_ = plan.expert_cache_per_layer;
    }
    // Every role resolved before anything is allocated; a rule the forward pass cannot honour is an
    // error, never ignored. The forward pass then reads each tensor where the placement put it.
    placement_.check_layers(files_.config.num_layers);
    check_placement_runnable(weights_, placement_);
    if (automatic_batch && routed_experts_all_on_gpu(files_.config, placement_)) {
      const int64_t longer = std::min(LoadOptions::kGpuExpertsBatchTokens, options_.max_context_tokens);
      if (longer > options_.max_batch_tokens &&
          planned_buffer_bytes(files_.config, longer) - planned_buffer_bytes(files_.config, options_.max_batch_tokens) <=
              budget_left)
        options_.max_batch_tokens = longer;
    }
    if (options_.cpu_kernels == CpuKernels::fast)
      for (std::string& notice : reference_fallback_notices(weights_, placement_))
        files_.warnings.push_back(std::move(notice));
    apply_placement(weights_, placement_);
    // A retention policy moves KV rows inside the host planes (BlockTable::compact); a GPU keeps
    // its attention layers' KV in its own memory, which it does not reach yet.
    for (int64_t layer = 0; layer < files_.config.num_layers; ++layer) {
      const Device device = placement_.device_for(WeightGroup::attention, layer);
      if (device.kind != DeviceKind::cuda) continue;
      if (!retention_policy_.is_full())
        throw Error(ErrorKind::unsupported,
                    fmt::format("--kv-policy {} needs attention on the cpu: the CUDA backend keeps the KV cache in "
                                "VRAM, which retention policies cannot compact yet (attention of layer {} is on {})",
                                retention_policy_.to_string(), layer, device.to_string()));
    }
    step(0.5f, "allocating KV cache");
    const ModelConfig& c = files_.config;
    KvPoolSpec spec;
    spec.layout = c.attention == AttentionKind::mla ? KvLayout::mla_latent : KvLayout::gqa;
    spec.layers = c.num_layers;
    spec.values_per_token = c.kv_values_per_token_per_layer();
    spec.block_tokens = options_.kv_block_tokens;
    spec.dtype = options_.kv_type;
    if (spec.layout == KvLayout::mla_latent) spec.rope_values = c.qk_rope_head_dim;
    // A GPU that runs a layer's attention keeps that layer's rows in VRAM: no host copy of them.
    for (int64_t layer = 0; layer < c.num_layers; ++layer)
      spec.device_layers.push_back(placement_.device_for(WeightGroup::attention, layer).kind !=
                                   DeviceKind::cpu);
    spec.blocks =
        options_.max_sessions * ((options_.max_context_tokens + spec.block_tokens - 1) / spec.block_tokens);
    kv_ = std::make_unique<KvPool>(spec);
    backend_ = make_cpu_backend(options_.threads, options_.cpu_kernels);
    // One CUDA backend per GPU the placement names (check_placement_runnable vouched for them).
    for (WeightGroup g : kAllWeightGroups)
      for (int64_t layer = kNoLayer; layer < c.num_layers; ++layer) {  // kNoLayer = -1, then each layer
        const Device device = placement_.device_for(g, layer);
        if (device.kind == DeviceKind::cuda && !gpu_backends_.contains(device.index))
          gpu_backends_.emplace(device.index, make_cuda_backend(device.index));
      }
    if (!options_.kv_disk_dir.empty()) options_.kv_prefix_cache = true;
    if (options_.kv_prefix_cache) {
      // Layers whose KV lives on a GPU: the tiers' host memory is that GPU's pinned memory.
      Backend* kv_gpu = nullptr;
      if (kv_->has_device_layers()) {
        int64_t first_device_layer = 0;
        while (kv_->on_host(first_device_layer)) ++first_device_layer;
        kv_gpu = gpu_backends_.at(placement_.device_for(WeightGroup::attention, first_device_layer).index).get();
      }
      std::unique_ptr<KvDiskTier> disk;
      if (!options_.kv_disk_dir.empty()) {
        KvDiskTierOptions disk_options;
        disk_options.dir = options_.kv_disk_dir;
        disk_options.max_bytes = options_.kv_disk_bytes;
        disk_options.staging_from = kv_gpu;
        disk = std::make_unique<KvDiskTier>(disk_options, model_identity(files_), *kv_);
      }
      // Blocks the VRAM pool frees go to pinned host memory first.
      std::unique_ptr<KvHostTier> host;
      if (const int64_t blocks = host_tier_blocks(*kv_, options_.kv_host_bytes); blocks > 0) {
        step(0.55f, "allocating the KV host tier");
        host = std::make_unique<KvHostTier>(*kv_, blocks, *kv_gpu);
      }
      prefix_cache_ = std::make_unique<PrefixCache>(*kv_, std::move(disk), std::move(host));
    }
    for (auto& [index, gpu] : gpu_backends_) {
      cuda_backend_set_prefill_bf16(*gpu, options_.cuda_prefill_bf16);
      cuda_backend_set_decode_q8(*gpu, options_.cuda_decode_q8);
    }
    if (!gpu_backends_.empty()) {
      // Weights placed on a GPU go there now, so a type without a kernel or a full GPU fails the
      // load, not the first step.
      step(0.6f, "uploading weights to the GPU");
      auto upload_to = [&](WeightGroup g, int64_t layer) -> Backend* {
        const Device device = placement_.device_for(g, layer);
        return device.kind == DeviceKind::cuda ? gpu_backends_.at(device.index).get() : nullptr;
      };
      for_each_weight(weights_, [&](WeightGroup g, int64_t layer, auto&&... item) {
        if constexpr (sizeof...(item) == 1) {  // a LinearWeight
          if (Backend* b = upload_to(g, layer)) b->prepare(g, item...);
        } else if (g == WeightGroup::embedding) {  // the table; the forward pass prepares norms and biases
          if (Backend* b = upload_to(g, layer)) b->prepare_table(g, std::get<0>(std::forward_as_tuple(item...)));
        }
      });
    }
    // TANDEM_PROFILE_OPS: every backend call waited for and timed (a table on stderr at exit).
    if (const char* profile = std::getenv("TANDEM_PROFILE_OPS"); profile != nullptr && *profile != '\0' &&
                                                                  std::string_view(profile) != "0") {
      timed_backends_.emplace(backend_.get(), std::make_unique<OpTimingBackend>(*backend_, "cpu"));
      for (const auto& [index, gpu] : gpu_backends_)
        timed_backends_.emplace(gpu.get(), std::make_unique<OpTimingBackend>(*gpu, fmt::format("cuda:{}", index)));
    }
    // Each role group runs on the backend of the device its placement rule names.
    forward_ = std::make_unique<ForwardPass>(
        c, weights_,
        [this](WeightGroup group, int64_t layer) -> Backend& {
          const Device device = placement_.device_for(group, layer);
          Backend* b = backend_.get();
          if (device.kind != DeviceKind::cpu) {
            const auto it = gpu_backends_.find(device.index);
            if (it == gpu_backends_.end()) throw Error(ErrorKind::internal, "no backend for " + device.to_string());
            b = it->second.get();
          }
          const auto timed = timed_backends_.find(b);
          return timed != timed_backends_.end() ? *timed->second : *b;
        },
        *kv_, options_.max_batch_tokens, options_.defer_experts);
    const char* graphs = std::getenv("TANDEM_CUDA_GRAPHS");
    forward_->set_record_graphs(options_.cuda_graphs && !(graphs != nullptr && std::string_view(graphs) == "0") &&
                                timed_backends_.empty());
    int64_t stream_min = options_.stream_experts_min_tokens;
    if (stream_min < 0)
      stream_min = automatic_stream_experts_min_tokens(forward_->streamable_expert_bytes(), physical_memory_bytes());
    // A token count; 0 turns streaming off.
    if (const auto env = integer_from_environment("TANDEM_STREAM_EXPERTS_MIN_TOKENS", 0, INT64_MAX)) stream_min = *env;
    if (stream_min > 0 && !gpu_backends_.empty()) step(0.7f, "copying streamed experts to pinned memory");
    forward_->set_stream_experts_min_tokens(stream_min);
    repack_cpu_weights(stream_min > 0 && !gpu_backends_.empty() && forward_->streamable_expert_bytes() > 0, step);
    if (expert_cache_per_layer_ > 0) {
      step(0.75f, "filling the GPU expert cache");
      forward_->set_expert_cache(expert_cache_per_layer_);
    }
    if (automatic_batch && stream_min > 0 && forward_->streamable_expert_bytes() > 0 &&
        options_.placement_flags.vram_budget.empty()) {
      options_.max_batch_tokens = std::min(LoadOptions::kStreamedBatchTokens, options_.max_context_tokens);
      forward_->set_max_batch_tokens(options_.max_batch_tokens);
    }
    if (options_.load_tokenizer) {
      step(0.8f, "loading tokenizer");
      load_text_side();
    }
    step(1.0f, "ready");
  }

  const ModelConfig& config() const override { return files_.config; }
  const LoadOptions& options() const override { return options_; }
  const Tokenizer* tokenizer() const override { return tokenizer_.get(); }
  const ChatTemplate* chat_template() const override { return chat_template_.get(); }
  std::vector<std::string> warnings() const override { return files_.warnings; }
  int64_t replayed_passes() const override { return forward_->replayed_passes(); }
  int64_t streamed_expert_layers() const override { return forward_->streamed_expert_layers(); }
  int64_t stream_experts_min_tokens() const override { return forward_->stream_experts_min_tokens(); }
  ForwardPass::ExpertCacheStats expert_cache_stats() override {
    std::lock_guard lock(mutex_);
    return forward_->expert_cache_stats();
  }
  int64_t refresh_expert_cache() override {
    std::lock_guard lock(mutex_);
    return forward_->refresh_expert_cache(kExpertCacheRefreshTokens);
  }
  std::optional<KvDiskStats> kv_disk_stats() override {
    std::lock_guard lock(mutex_);
    if (!prefix_cache_ || !prefix_cache_->disk()) return std::nullopt;
    prefix_cache_->disk()->flush();  // counts the writes in flight as they end
    return prefix_cache_->disk()->stats();
  }
  std::optional<KvHostStats> kv_host_stats() override {
    std::lock_guard lock(mutex_);
    if (!prefix_cache_ || !prefix_cache_->host()) return std::nullopt;
    return prefix_cache_->host()->stats();
  }
  void evict_prefix_cache() override {
    std::lock_guard lock(mutex_);
    if (!prefix_cache_) return;
    prefix_cache_->drop_unreferenced();
    if (prefix_cache_->host()) prefix_cache_->host()->clear();
    if (prefix_cache_->disk()) prefix_cache_->disk()->drop_page_cache();
  }
  void evict_prefix_cache_to_host() override {
    std::lock_guard lock(mutex_);
    if (prefix_cache_) prefix_cache_->drop_unreferenced();
  }

  const Placement& placement() const override { return placement_; }

  MemoryReport memory_report() const override {
    MemoryReport r;
    // Host weights stay in the file mapping (paged in on touch); weights placed on a GPU were copied
    // there at load (these bytes, allocated: not mapped).
    for (const PlacedBytes& p : place_weights(weights_, placement_))
      r.lines.push_back({weight_group_display_name(p.group), p.device.to_string(), p.bytes,
                         p.device.kind == DeviceKind::cpu});
    // Q4_K and Q6_K matrices the CPU backend repacked into strips at load (LoadOptions::cpu_repack).
    if (const int64_t repacked = cpu_backend_repacked_bytes(*backend_); repacked > 0)
      r.lines.push_back({"repacked CPU weights", Device::cpu().to_string(), static_cast<uint64_t>(repacked), false});
    r.lines.push_back({"KV pool", kv_->spec().device.to_string(), kv_->bytes(), false});
    // The KV layers whose attention runs on a GPU also live in its memory.
    for (const auto& [index, gpu] : gpu_backends_)
      if (const uint64_t bytes = cuda_backend_kv_bytes(*gpu); bytes > 0)
        r.lines.push_back({"KV cache", Device::cuda(index).to_string(), bytes, false});
    // Their prefix cache's blocks freed from VRAM, in pinned host memory.
    if (prefix_cache_ && prefix_cache_->host() && prefix_cache_->host()->bytes() > 0)
      r.lines.push_back({"KV host tier", Device::cpu().to_string(), prefix_cache_->host()->bytes(), false});
    // The SSD tier's staging chunks for reading records back into a GPU's layers.
    if (prefix_cache_ && prefix_cache_->disk() && prefix_cache_->disk()->staging_bytes() > 0)
      r.lines.push_back({"KV disk tier staging", Device::cpu().to_string(), prefix_cache_->disk()->staging_bytes(), false});
    return r;
  }

  std::unique_ptr<Session> new_session() override {
    {
      std::lock_guard lock(mutex_);
      if (open_sessions_ >= options_.max_sessions)
        throw Error(ErrorKind::out_of_memory,
                    fmt::format("cannot open a session: all {} sessions (max_sessions) are open",
                                options_.max_sessions));
      ++open_sessions_;
    }
    refresh_expert_cache();  // a new request: hold what the earlier ones routed to most
    return std::make_unique<EngineSession>(*this);
  }

  KvPool& kv_pool() override { return *kv_; }
  void run_batch(std::span<const SequenceChunk> batch, float* logits, const std::atomic<bool>* cancel) override {
    std::lock_guard lock(mutex_);
    forward_->run(batch, logits, cancel);
  }

  Scheduler& scheduler() override {
    std::lock_guard lock(scheduler_mutex_);
    if (!scheduler_)
      scheduler_ = std::make_unique<Scheduler>(*this, tokenizer_.get(),
                                               SchedulerOptions{.max_running = options_.max_sessions});
    return *scheduler_;
  }

  int64_t adopt_cached_prefix(std::span<const int32_t> tokens, BlockTable& table) override {
    std::lock_guard lock(mutex_);
    if (!prefix_cache_ || tokens.size() < 2 || !retention_policy_.is_full()) return 0;
    const std::vector<uint64_t> keys = prefix_cache_->block_keys(tokens.first(tokens.size() - 1));
    for (const int32_t block : prefix_cache_->adopt(keys)) table.adopt(*kv_, block);
    const int64_t adopted = static_cast<int64_t>(table.blocks().size()) * kv_->spec().block_tokens;
    prefix_hit_tokens_ += adopted;
    return adopted;
  }
  void cache_prefix(std::span<const int32_t> tokens, const BlockTable& table) override {
    std::lock_guard lock(mutex_);
    if (!prefix_cache_ || !retention_policy_.is_full()) return;
    const std::vector<uint64_t> keys = prefix_cache_->block_keys(tokens);
    const size_t full = std::min(keys.size(), table.blocks().size());
    try {
      prefix_cache_->insert(std::span<const uint64_t>(keys).first(full),
                            std::span<const int32_t>(table.blocks()).first(full));
    } catch (const std::exception&) {
      // Caching is an optimisation: a block that cannot be kept is computed again later.
    }
  }
  void make_kv_room(int64_t blocks) override {
    std::lock_guard lock(mutex_);
    if (prefix_cache_) prefix_cache_->make_room(blocks);
  }
  PrefixCacheCounts prefix_cache_counts() override {
    std::lock_guard lock(mutex_);
    if (!prefix_cache_) return {};
    PrefixCacheCounts counts{prefix_cache_->cached_blocks(), prefix_cache_->idle_blocks(), prefix_hit_tokens_};
    if (const KvHostTier* host = prefix_cache_->host()) {
      const KvHostStats s = host->stats();
      counts.host_tier_blocks = s.blocks;
      counts.host_tier_loaded_blocks = s.loaded;
    }
    return counts;
  }

 private:
  friend class EngineSession;

  // LoadOptions::cpu_repack: the CPU backend repacks the Q4_K and Q6_K matrices placed on the CPU into 16-row
  // strips (Backend::prepare), with int8 copies for AMX prefill where it makes them. Not the routed
  // experts when prefill streams them to a GPU (the CPU then only decodes them, and their pinned
  // copies already take memory). When the copies would take more than kRepackMemoryShare of the
  // machine's memory, the int8 copies are dropped first, then everything (a warning says which).
  template <class Step>
  void repack_cpu_weights(bool experts_streamed, Step& step) {
    if (options_.cpu_kernels != CpuKernels::fast || !cpu_repack_enabled(options_.cpu_repack)) return;
    const auto copy_bytes = [&](WeightGroup g, int64_t layer, const LinearWeight& w) -> int64_t {
      if (placement_.device_for(g, layer).kind != DeviceKind::cpu || (experts_streamed && g == WeightGroup::experts))
        return 0;
      return cpu_backend_repack_bytes(*backend_, g, w);
    };
    const auto total_bytes = [&] {
      double bytes = 0;
      for_each_weight(std::as_const(weights_), [&](WeightGroup g, int64_t layer, auto&&... item) {
        if constexpr (sizeof...(item) == 1) bytes += static_cast<double>(copy_bytes(g, layer, item...));
      });
      return bytes;
    };
    const double bytes = total_bytes();
    if (bytes == 0) return;
    const double memory = physical_memory_bytes();
    if (!repack_fits(bytes, memory, cpu_repack_forced())) {
      cpu_backend_set_int8_copies(*backend_, false);  // then total_bytes() is what the strips alone take
      const RepackBudget budget = repack_budget(bytes, total_bytes(), memory, cpu_repack_forced());
      files_.warnings.push_back(budget.warning);
      if (budget.choice == RepackChoice::none) return;
    }
    step(0.72f, "repacking CPU weights");
    for_each_weight(std::as_const(weights_), [&](WeightGroup g, int64_t layer, auto&&... item) {
      if constexpr (sizeof...(item) == 1)
        if (copy_bytes(g, layer, item...) > 0) {
          if (options_.cancel && options_.cancel->load()) throw Error(ErrorKind::cancelled, "loading cancelled");
          backend_->prepare(g, item...);
        }
    });
  }

  void load_text_side() {
    // The tokenizer and chat template are optional for inference by ids: a model without them (or
    // one whose files the text layer cannot read yet) still loads.
    try {
      if (files_.format == ModelFiles::Format::gguf && files_.gguf)
        tokenizer_ = Tokenizer::from_gguf(*files_.gguf);
      else
        tokenizer_ = Tokenizer::load(files_.directory);
    } catch (const std::exception& e) {
      files_.warnings.push_back(std::string("no tokenizer: ") + e.what());
    }
    try {
      chat_template_ = ChatTemplate::load(files_.path);
    } catch (const std::exception& e) {
      files_.warnings.push_back(std::string("no chat template: ") + e.what());
    }
  }

  ModelFiles files_;
  LoadOptions options_;
  Placement placement_;
  Weights weights_;
  std::unique_ptr<KvPool> kv_;
  std::unique_ptr<Backend> backend_;
  std::map<int, std::unique_ptr<Backend>> gpu_backends_;  // by GPU index
  std::map<const Backend*, std::unique_ptr<OpTimingBackend>> timed_backends_;  // TANDEM_PROFILE_OPS
  // After kv_ and the backends: destroyed first, releasing its blocks and its host tier's pinned
  // memory (a GPU backend's) while both are there.
  std::unique_ptr<PrefixCache> prefix_cache_;
  std::unique_ptr<ForwardPass> forward_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ChatTemplate> chat_template_;
  RetentionPolicy retention_policy_;
  int64_t expert_cache_per_layer_ = 0;  // the plan's GPU expert cache (0: none)
  std::mutex mutex_;  // session count, the prefix cache, the sessions' tables and the forward pass's scratch
  int64_t open_sessions_ = 0;
  int64_t prefix_hit_tokens_ = 0;  // under mutex_
  std::mutex scheduler_mutex_;
  std::unique_ptr<Scheduler> scheduler_;  // last: stopped first, while everything it uses is alive
};

EngineSession::EngineSession(CpuEngine& engine) : engine_(engine), retention_(engine.retention_policy_) {
  logits_.assign(static_cast<size_t>(engine.config().vocab_size), 0.0f);
}

EngineSession::~EngineSession() {
  std::lock_guard lock(engine_.mutex_);
  table_.release(*engine_.kv_);
  --engine_.open_sessions_;
}

void EngineSession::reset() {
  std::lock_guard lock(engine_.mutex_);
  table_.release(*engine_.kv_);
  tokens_.clear();
  slot_positions_.clear();
  retention_.truncate(0);
  block_keys_.clear();
  all_logits_.clear();
  std::fill(logits_.begin(), logits_.end(), 0.0f);
}

void EngineSession::truncate(int64_t tokens) {
  if (tokens < 0 || tokens > position())
    throw Error(ErrorKind::out_of_range,
                fmt::format("truncate: cannot keep {} tokens of a session holding {}", tokens, position()));
  std::lock_guard lock(engine_.mutex_);
  // Slots hold ascending positions: keep those before `tokens`.
  const auto slots = static_cast<int64_t>(
      std::lower_bound(slot_positions_.begin(), slot_positions_.end(), tokens) - slot_positions_.begin());
  table_.truncate(*engine_.kv_, slots);
  slot_positions_.resize(static_cast<size_t>(slots));
  retention_.truncate(slots);
  block_keys_.resize(std::min(block_keys_.size(), static_cast<size_t>(slots / engine_.kv_->spec().block_tokens)));
  tokens_.resize(static_cast<size_t>(tokens));
  all_logits_.clear();
  std::fill(logits_.begin(), logits_.end(), 0.0f);
}

void EngineSession::prefill(std::span<const int32_t> ids, bool all_logits) {
  if (ids.empty()) throw Error(ErrorKind::invalid_argument, "prefill: no token ids given");
  const LoadOptions& o = engine_.options_;
  const int64_t vocab = engine_.config().vocab_size;
  const int64_t start = position();
  const int64_t n = static_cast<int64_t>(ids.size());
  const auto slots_before = static_cast<int64_t>(slot_positions_.size());
  // A bounded retention policy checks each chunk against the context (the cache is cut back
  // between chunks); without one, the whole prompt must fit.
  const bool bounded = !retention_.policy().is_full();
  const auto check_fits = [&](int64_t slots, int64_t more) {
    if (slots + more > o.max_context_tokens)
      throw Error(ErrorKind::out_of_range,
                  fmt::format("{} tokens would not fit the session's context of {} tokens (the CLI's -c/--ctx, "
                              "max_context_tokens in the API)",
                              slots + more, o.max_context_tokens));
  };
  if (!bounded) check_fits(slots_before, n);
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("token id {} at index {} is outside the vocabulary [0, {})", ids[i], i, vocab));

  std::unique_lock lock(engine_.mutex_);
  KvPool& kv = *engine_.kv_;
  const int64_t bt = kv.spec().block_tokens;
  PrefixCache* cache = bounded ? nullptr : engine_.prefix_cache_.get();
  // Cached blocks no session holds give way when this session needs blocks (one more for a
  // copy-on-write of a shared partial block).
  const auto make_room = [&](int64_t slots) {
    if (engine_.prefix_cache_)
      engine_.prefix_cache_->make_room((slots + bt - 1) / bt - static_cast<int64_t>(table_.blocks().size()) + 1);
  };
  // A new sequence adopts the longest cached prefix of its prompt (whole blocks, leaving at least
  // one token to run for the logits).
  cached_tokens_ = 0;
  if (cache && !all_logits && slots_before == 0) {
    const std::vector<uint64_t> keys = cache->block_keys(ids.first(static_cast<size_t>(n - 1)));
    for (const int32_t block : cache->adopt(keys)) table_.adopt(kv, block);
    block_keys_.assign(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(table_.blocks().size()));
    cached_tokens_ = static_cast<int64_t>(table_.blocks().size()) * bt;
    engine_.prefix_hit_tokens_ += cached_tokens_;
    for (int64_t p = 0; p < cached_tokens_; ++p) slot_positions_.push_back(p);
  }
  if (!bounded) {
    make_room(slots_before + n);
    table_.reserve(kv, slots_before + n);
    // A block shared with another table (a shared prefix) is copied before this session writes
    // into it.
    table_.make_writable(kv, slots_before + cached_tokens_, slots_before + n);
  }
  if (all_logits)
    all_logits_.assign(static_cast<size_t>(n * vocab), 0.0f);
  else
    all_logits_.clear();
  // Long prompts go through in chunks of max_batch_tokens; each chunk's KV is in the cache before
  // the next one attends to it (and a retention policy has cut the cache back).
  bool evicted = false;
  try {
    for (int64_t done = cached_tokens_; done < n;) {
      const int64_t chunk = std::min(o.max_batch_tokens, n - done);
      const auto slots = static_cast<int64_t>(slot_positions_.size());
      if (bounded) {
        check_fits(slots, chunk);
        make_room(slots + chunk);
        table_.reserve(kv, slots + chunk);
        table_.make_writable(kv, slots, slots + chunk);
      }
      SequenceChunk c{ids.subspan(static_cast<size_t>(done), static_cast<size_t>(chunk)), start + done,
                      &table_, all_logits};
      c.start_slot = slots;
      c.attention_rows = retention_.attention_rows(chunk, slots + chunk);
      // Earlier chunks only fill the cache unless all logits are asked for; their one logits row
      // is discarded. The pass runs in the engine's scheduler, beside other sessions' chunks; the
      // engine's lock is not held meanwhile.
      {
        lock.unlock();
        const RelockOnExit relock{lock};
        engine_.scheduler().run_chunk(c, all_logits ? all_logits_.data() + done * vocab : logits_.data(),
                                      &cancel_);
      }
      for (int64_t i = 0; i < chunk; ++i) slot_positions_.push_back(start + done + i);
      retention_.observe(chunk, slots + chunk);
      const std::vector<int64_t> kept = retention_.evict(slots + chunk);
      if (!kept.empty()) {
        table_.compact(kv, kept);
        for (size_t i = 0; i < kept.size(); ++i) slot_positions_[i] = slot_positions_[static_cast<size_t>(kept[i])];
        slot_positions_.resize(kept.size());
        evicted = true;
      }
      done += chunk;
    }
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::cancelled) cancel_.store(false);
    // The session stays as it was before this call; after an eviction that cannot be undone, it
    // is emptied.
    if (evicted) {
      table_.release(kv);
      tokens_.clear();
      slot_positions_.clear();
      retention_.truncate(0);
      block_keys_.clear();
    } else {
      table_.truncate(kv, slots_before);
      slot_positions_.resize(static_cast<size_t>(slots_before));
      retention_.truncate(slots_before);
      block_keys_.resize(std::min(block_keys_.size(), static_cast<size_t>(slots_before / bt)));
    }
    cached_tokens_ = 0;
    throw;
  }
  if (all_logits) std::copy_n(all_logits_.data() + (n - 1) * vocab, vocab, logits_.data());
  tokens_.insert(tokens_.end(), ids.begin(), ids.end());
  // Every block this session filled joins the prefix cache (its keys chain from the first block).
  if (cache) {
    const auto full = static_cast<size_t>(position() / bt);
    if (full > block_keys_.size()) {
      for (size_t b = block_keys_.size(); b < full; ++b)
        block_keys_.push_back(PrefixCache::chain_key(
            b == 0 ? 0 : block_keys_[b - 1],
            std::span<const int32_t>(tokens_).subspan(b * static_cast<size_t>(bt), static_cast<size_t>(bt))));
      cache->insert(block_keys_, std::span<const int32_t>(table_.blocks()).first(full));
    }
  }
}

}  // namespace

std::unique_ptr<Engine> Engine::load(const std::string& path, const LoadOptions& options) {
  check_options(options);
  if (options.cancel && options.cancel->load()) throw Error(ErrorKind::cancelled, "loading cancelled");
  if (options.progress) options.progress(0.0f, "opening model files");
  // Rules are parsed before the files are opened, so a typo fails fast.
  // Without a GPU (or LoadOptions::gpu_by_default) the defaults keep every role on the CPU; rules and
  // flags that name cuda use it where it is built and a GPU is present (docs/PLACEMENT.md).
  Placement placement = Placement::parse(options.placement, /*gpu_available=*/false);
  ModelFiles files = open_model_files(path, options.overrides);
  return std::make_unique<CpuEngine>(std::move(files), options, std::move(placement));
}

}  // namespace tandem
