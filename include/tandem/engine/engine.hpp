#pragma once
// Engine: a loaded model (weights in place, backends, KV pool) and the sessions that run on it.
// The C ABI (capi/include/tandem.h) wraps these calls one-to-one.
//
// Thread-safety: an Engine may be shared by threads; each Session is used by one thread at a time;
// Session::cancel() and LoadOptions::cancel may be signalled from any thread.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/backend/cpu_kernels.hpp"
#include "tandem/engine/forward.hpp"
#include "tandem/engine/placement.hpp"
#include "tandem/engine/placement_plan.hpp"
#include "tandem/kv/kv_disk_tier.hpp"
#include "tandem/kv/kv_host_tier.hpp"
#include "tandem/kv/kv_type.hpp"
#include "tandem/model/model_config.hpp"
#include "tandem/model/model_files.hpp"

namespace tandem {

class Tokenizer;
class ChatTemplate;
class Session;
class KvPool;
class BlockTable;
class Scheduler;
struct SequenceChunk;

// What the prefix cache (LoadOptions::kv_prefix_cache) holds.
struct PrefixCacheCounts {
  int64_t blocks = 0;                     // blocks it keeps
  int64_t blocks_held_only_by_cache = 0;  // of those, blocks no sequence or session holds too
  int64_t hit_tokens = 0;                 // tokens sessions and sequences adopted from it since load
  // Its host tier (attention on a GPU, LoadOptions::kv_host_bytes; 0 without one): blocks held, and
  // blocks copied back from it into the KV pool since load.
  int64_t host_tier_blocks = 0;
  int64_t host_tier_loaded_blocks = 0;
};

struct LoadOptions {
  int threads = 0;                    // 0 = one per physical core
  // Per session; requests past it get Error(out_of_range). 0: the model's trained context, at most
  // 4096; options() reports the value chosen.
  int64_t max_context_tokens = 4096;
  int64_t max_sessions = 4;           // the KV pool holds max_sessions × max_context_tokens
  int64_t kv_block_tokens = 16;       // tokens per KV block
  KvType kv_type = KvType::f16;       // KV cache element type (f32 for bit-exact float maths)
  // Retention policy of every session's cache: "" or "full", "sinks:S,W", "h2o:BUDGET",
  // "snapkv:BUDGET" (tandem/kv/retention.hpp). A bounded policy lets a session run past
  // max_context_tokens positions: only the kept tokens (plus one chunk) must fit.
  std::string kv_policy;
  // Keep full KV blocks of finished prompts and let a new session adopt the longest cached prefix
  // of its prompt (tandem/kv/prefix_cache.hpp). Off by default; sessions with a bounded kv_policy
  // and prefills asking for all logits neither adopt nor add blocks.
  bool kv_prefix_cache = false;
  // The prefix cache's SSD tier (tandem/kv/kv_disk_tier.hpp): an existing writable directory and
  // the bytes its records may take. A directory turns the prefix cache on; blocks there survive
  // the process and serve later ones loading the same model with the same KV type.
  std::string kv_disk_dir;
  uint64_t kv_disk_bytes = 0;
  // The prefix cache's host tier (tandem/kv/kv_host_tier.hpp), for the layers whose attention runs
  // on a GPU: pinned host memory the VRAM pool's freed cached blocks go to. nullopt: the GPU
  // layers' KV pool size, at most a quarter of the machine's memory; 0: none. Unused when every
  // attention layer is on the CPU (that pool is host memory already) or without the prefix cache.
  std::optional<uint64_t> kv_host_bytes;
  // Tokens one forward pass may take (prompt chunks). kBatchTokensAutomatic: kDefaultBatchTokens,
  // or kStreamedBatchTokens when routed experts stream to a GPU for prefill (each pass copies every
  // streamed expert over PCIe, so fewer, larger passes copy less) and no --vram-budget planned the
  // buffers, or kGpuExpertsBatchTokens when every layer's routed experts live on a GPU (its cuBLAS
  // path needs many tokens per expert) and the longer pass's buffers fit what a --vram-budget left;
  // never more than max_context_tokens. options() reports the value chosen.
  static constexpr int64_t kBatchTokensAutomatic = 0;
  static constexpr int64_t kDefaultBatchTokens = 512;
  // 8192: DeepSeek-V3's streamed 8k prompt ran at 928 tok/s (61 layers, extrapolated) in one pass and
  // 470 in two 4k passes, each copying every expert again (docs/PERF.md).
  static constexpr int64_t kStreamedBatchTokens = 8192;
  static constexpr int64_t kGpuExpertsBatchTokens = 4096;
  int64_t max_batch_tokens = kBatchTokensAutomatic;
  std::string placement;              // placement rules ("" = defaults, "@FILE"); see docs/PLACEMENT.md
  // The defaults for what no rule places: false, everything on the CPU unless a placement flag asks
  // for the hybrid ones; true (the CLI's and server's choice), on a machine with a usable GPU the
  // hybrid defaults (routed experts on the CPU, the rest on cuda:0) unless this load needs the CPU's
  // attention (a retention policy), a KV or weight type has no CUDA kernel, or they do
  // not fit the GPU's free memory; then everything stays on the CPU and warnings() says why.
  bool gpu_by_default = false;
  PlacementFlags placement_flags;     // -ngl, --cpu-moe, --n-cpu-moe, -ot, --vram-budget (after `placement`)
  bool load_tokenizer = true;         // also load tokenizer + chat template when the model ships them
  // Progress of loading in [0, 1] with a short stage name; called from the loading thread.
  std::function<void(float fraction, std::string_view stage)> progress;
  const std::atomic<bool>* cancel = nullptr;  // loading stops with Error(cancelled) when set
  ModelOverrides overrides;                   // what a file lacks or gets wrong (expert groups, rope base)
  CpuKernels cpu_kernels = CpuKernels::fast;  // fast SIMD kernels, or the reference path (to compare)
  // A decode step that runs wholly on one GPU is recorded once and replayed as one launch (a CUDA
  // graph). false: kernels are launched one by one (TANDEM_CUDA_GRAPHS=0 in the environment too).
  bool cuda_graphs = true;
  // Prefill passes of 32+ tokens multiply on the GPU's tensor cores with bf16 operands (quantised,
  // BF16 and FP8 weights: ~1.6e-3 of an output's RMS, below their own quantisation error); false:
  // float32-accurate 3xTF32 tiles, about 1.6x slower. F32 and F16 weights always take 3xTF32.
  // Prompt chunks of 64+ tokens over an f16/bf16 cache also attend on the tensor cores (flash
  // attention, GQA and DeepSeek's MLA; queries and probabilities in the cache's type), and linears
  // of 256+ tokens go through cuBLAS when it loads (the same bf16 operands); false: neither.
  bool cuda_prefill_bf16 = true;
  // Decode on the GPU multiplies Q4_K/Q6_K weights with activations quantised to int8 (per 32 values,
  // the experts' SiLU-GLU outputs per 8) by dp4a, as llama.cpp's GPU GEMVs do: the float products
  // are bound by converting each weight, not by HBM. The cost on the trained Qwen3-MoE Q4_K_M file
  // is measured by the test "cuda whole model: int8 decode products ..." (NLL within 0.3 %);
  // false: float activations (the CPU's results within float rounding).
  bool cuda_decode_q8 = true;
  // Q4_K and Q6_K weights placed on the CPU are repacked at load into 16-row strips the fast kernels
  // read directly (1.056 × / 1.0095 × their bytes in host memory; the file's mapping stays unchanged, its pages of
  // those weights read once). Prefill no longer gathers each strip per call, decode reads one
  // stream per strip (docs/PERF.md). false: the kernels read the mapped rows. TANDEM_CPU_REPACK=0/1
  // in the environment overrides it.
  bool cpu_repack = true;
  // Expert deferral (tandem/engine/forward.hpp): routed experts per token whose output joins the
  // residual stream one layer later; 0 = off. Error(invalid_argument) unless below the model's top-k.
  int64_t defer_experts = 0;
  // Hybrid prefill: a pass of at least this many tokens whose routed experts live in host memory
  // (placed on the CPU) and whose router runs on a GPU streams each MoE layer's experts over PCIe
  // and computes them on that GPU (the next layer's copy overlapping); 0 = never. The experts are
  // copied into pinned host memory at load (host memory equal to them, beside the mapping).
  // kStreamExpertsAutomatic: kStreamExpertsAutoTokens when those copies take at most 40 % of the
  // machine's memory, else never (48-layer Qwen3-30B-A3B Q4_K_M on the H200 machine, one 4096-token
  // pass: 1,617 tok/s streamed, 302 with the CPU computing the experts).
  // TANDEM_STREAM_EXPERTS_MIN_TOKENS in the environment overrides it.
  static constexpr int64_t kStreamExpertsAutomatic = -1;
  static constexpr int64_t kStreamExpertsAutoTokens = 256;
  int64_t stream_experts_min_tokens = kStreamExpertsAutomatic;
};

// What went where and how much memory it took.
struct MemoryReport {
  struct Line {
    std::string what;    // a weight group's display name ("routed experts", "attention", ...) or "KV pool"
    std::string device;  // "cpu", "cuda:0"
    uint64_t bytes = 0;
    bool mapped = false;  // bytes live in the file mapping (paged in on touch), not allocated
  };
  std::vector<Line> lines;
  uint64_t total_bytes() const;
  // Whether any line is on a GPU.
  bool uses_gpu() const;
  // What went where, one device after another in the order they first appear: "cuda:0: attention
  // 1.20 GiB, KV cache 0.75 GiB (1.95 GiB); cpu: routed experts 15.40 GiB mapped (15.40 GiB)".
  std::string placement_text() const;
};

class Engine {
 public:
  // `path`: a GGUF file (or the first of a split set) or an HF folder (config.json + safetensors).
  static std::unique_ptr<Engine> load(const std::string& path, const LoadOptions& options = {});
  virtual ~Engine() = default;

  virtual const ModelConfig& config() const = 0;
  virtual const LoadOptions& options() const = 0;
  virtual MemoryReport memory_report() const = 0;
  virtual const Tokenizer* tokenizer() const = 0;         // nullptr when the model has none
  virtual const ChatTemplate* chat_template() const = 0;  // nullptr when the model has none
  // What loading worked around (missing GGUF keys, no tokenizer): for the user to see.
  virtual std::vector<std::string> warnings() const { return {}; }
  // The KV disk tier's counters once its writes in flight are done (LoadOptions::kv_disk_dir);
  // nullopt without one.
  virtual std::optional<KvDiskStats> kv_disk_stats() { return std::nullopt; }
  // The KV host tier's counters (LoadOptions::kv_host_bytes); nullopt without one.
  virtual std::optional<KvHostStats> kv_host_stats() { return std::nullopt; }
  // Forward passes replayed from a recording (a CUDA graph) so far (LoadOptions::cuda_graphs).
  virtual int64_t replayed_passes() const { return 0; }
  // MoE layers whose host-memory experts were streamed to a GPU for a prefill so far
  // (LoadOptions::stream_experts_min_tokens).
  virtual int64_t streamed_expert_layers() const { return 0; }
  // The pass size from which they stream, as resolved at load (automatic, the option or
  // TANDEM_STREAM_EXPERTS_MIN_TOKENS); 0: never.
  virtual int64_t stream_experts_min_tokens() const { return 0; }
  // The GPU expert cache (PlacementFlags::expert_cache; ForwardPass::set_expert_cache): its layers,
  // experts held per layer and how many routed pairs its held experts took so far.
  virtual ForwardPass::ExpertCacheStats expert_cache_stats() { return {}; }
  // Between requests (a new session, the scheduler admitting work after being idle): each cached
  // layer holds its most routed experts from now on, once kExpertCacheRefreshTokens tokens ran since
  // the last refresh. Returns the experts copied to the GPU.
  static constexpr int64_t kExpertCacheRefreshTokens = 64;
  virtual int64_t refresh_expert_cache() { return 0; }
  // Frees the prefix cache's blocks no session holds from the KV pool and empties the host tier;
  // with a disk tier, also asks the kernel to drop its files from the page cache, so the next hits
  // read from the device (KvDiskStats::page_cache_resident says how far that worked). For
  // benchmarks of the tiers.
  virtual void evict_prefix_cache() {}
  // Frees the prefix cache's blocks no session holds from the KV pool only: with a host tier (a
  // GPU's pool) they move there, and the next hits are copied back from it. For benchmarks.
  virtual void evict_prefix_cache_to_host() {}
  // Where each weight role lives: LoadOptions::placement resolved at load (an engine that predates
  // placement reports everything on the CPU).
  virtual const Placement& placement() const;

  // Throws Error(out_of_memory) when max_sessions are already open.
  virtual std::unique_ptr<Session> new_session() = 0;

  // For a scheduler batching many sequences (engine/scheduler.hpp): the KV pool their block tables
  // draw from, and one forward pass over chunks of several sequences (ForwardPass::run's contract),
  // serialised with the sessions' passes. An engine without them throws Error(unsupported).
  virtual KvPool& kv_pool();
  virtual void run_batch(std::span<const SequenceChunk> batch, float* logits, const std::atomic<bool>* cancel);

  // The engine's own scheduler, started at first use (max_running = max_sessions): every Session's
  // forward passes go through it, so sessions used from several threads share steps instead of
  // taking turns; sequences may be submitted to it too. Error(unsupported) without one.
  virtual Scheduler& scheduler();

  // The prefix cache for a scheduler's sequences; without one they do nothing. adopt_cached_prefix
  // puts into an empty `table` the cached blocks of the longest cached whole-block prefix of
  // `tokens` (the last token always left to run) and returns the tokens they hold; cache_prefix
  // adds the full blocks of `tokens` that `table` holds; make_kv_room frees cached blocks no table
  // holds until the pool has `blocks` free or none is left to free.
  virtual int64_t adopt_cached_prefix(std::span<const int32_t> tokens, BlockTable& table);
  virtual void cache_prefix(std::span<const int32_t> tokens, const BlockTable& table);
  virtual void make_kv_room(int64_t blocks);
  virtual PrefixCacheCounts prefix_cache_counts() { return {}; }
};

// One sequence: its KV blocks, position and last logits.
class Session {
 public:
  virtual ~Session() = default;

  // Appends `ids` and runs them through the model. Afterwards logits() is the last position's
  // row; with all_logits, all_logits() holds one row per id of this call.
  virtual void prefill(std::span<const int32_t> ids, bool all_logits = false) = 0;
  virtual void decode(int32_t id) = 0;                     // prefill of one token
  virtual std::span<const float> logits() const = 0;       // [vocab]
  virtual std::span<const float> all_logits() const = 0;   // [T, vocab] of the last prefill
  virtual int64_t position() const = 0;                    // tokens in the cache
  virtual const std::vector<int32_t>& tokens() const = 0;  // tokens in the cache
  // Positions whose KV the cache holds, ascending: all of [0, position()) unless a retention
  // policy (LoadOptions::kv_policy) evicted some.
  virtual std::vector<int64_t> cached_positions() const {
    std::vector<int64_t> all(static_cast<size_t>(position()));
    for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
    return all;
  }
  virtual void reset() = 0;                                // forget everything, free KV blocks
  // Tokens the last prefill took from the prefix cache instead of computing them.
  virtual int64_t cached_prompt_tokens() const { return 0; }
  // Keeps the first `tokens` positions and forgets the rest, returning the KV blocks past them;
  // logits() and all_logits() are cleared until the next prefill. Error(out_of_range) when
  // `tokens` is negative or more than position().
  virtual void truncate(int64_t tokens) = 0;

  // Asks a running prefill/decode to stop with Error(cancelled): at the next layer boundary when
  // its pass runs alone, at the end of its step when it shares one with other sequences.
  virtual void cancel() = 0;
};

}  // namespace tandem
