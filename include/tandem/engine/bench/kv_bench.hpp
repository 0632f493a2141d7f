#pragma once
// `tandem bench kv`: what the prefix cache saves. Time to first token (the prefill of an N-token
// prompt, its last logits included) from a cold cache, and with the prompt's first M tokens cached
// in the host tier (the KV pool's prefix cache, adopted by a new session); then the decode speed
// of each session, so the cost of decoding over adopted blocks shows; then the same with the
// prefix read back from the SSD tier (a second engine with LoadOptions::kv_disk_dir: a writer
// session fills the prefix, which is written through to disk; the host tier is dropped and the
// records' pages are dropped from the page cache — Engine::evict_prefix_cache — before the timed
// session adopts it). Each is the median over the repetitions; every repetition uses fresh random
// token ids, so nothing else is cached. The cold and host figures come from an engine without the
// disk tier (no write-through cost in them).
//
// With attention on a GPU (KvBenchOptions::placement), the KV pool is VRAM: the prefix still there
// is timed as the device tier, the host figure adopts it from the host tier (the pool's idle cached
// blocks moved there first — Engine::evict_prefix_cache_to_host), and the disk figure drops both
// before adopting from the SSD tier.
#include <cstdint>
#include <string>

#include "tandem/kv/kv_type.hpp"
#include "tandem/model/model_config.hpp"

namespace tandem {

struct KvBenchOptions {
  std::string model_path;
  int64_t prompt_tokens = 4064;  // N (+ decode_tokens: the trained models' 4096 context)
  int64_t cached_tokens = 3936;  // M: rounded down to whole KV blocks, below N
  int64_t decode_tokens = 32;    // decode steps timed after each prefill
  int threads = 0;               // 0: one per physical core
  int reps = 3;
  KvType kv_type = KvType::f16;
  uint64_t seed = 1;
  // Where the disk tier's records go: a fresh subdirectory of this (removed afterwards); "" = the
  // system's temporary directory (often tmpfs, that is memory: disk_fs says).
  std::string disk_dir;
  std::string placement;  // LoadOptions::placement ("" = all on the CPU)
  static constexpr int kMaxReps = 100;
};

struct KvBenchResult {
  int64_t cached_tokens = 0;  // M as used (whole blocks)
  double ttft_cold_s = 0, ttft_host_s = 0;
  double decode_tok_s_cold = 0, decode_tok_s_host = 0;
  double ttft_disk_s = 0, decode_tok_s_disk = 0;
  bool device_tier = false;  // attention on a GPU: the pool is VRAM, below it the host tier
  double ttft_device_s = 0, decode_tok_s_device = 0;  // the prefix in VRAM (device_tier only)
  std::string disk_fs;  // file system type of disk_dir ("ext4", "tmpfs", ...)
  std::string disk_io;  // "io_uring" or the preadv/pwritev fallback and why
  double disk_read_direct = 0;  // of the records read back, the fraction read with O_DIRECT
  // Fraction of the records' bytes still in the page cache when the timed reads began (the
  // largest over the repetitions): 0 = read from the device.
  double disk_page_cache_resident = 0;
  // Cold prefill FLOPs over the uncached suffix's FLOPs: the speed-up a compute-bound prefill
  // could reach (projections, experts and attention counted from the config).
  double speedup_limit = 0;
};

// Multiply-adds of prefilling positions [first, last) of one sequence: per token, the projections,
// the routed (top-k) and shared experts or dense MLP; per (query, key) pair, the attention.
double prefill_flops(const ModelConfig& config, int64_t first, int64_t last);

// Error(out_of_range) for N outside 2..65536, M outside 0..N-1, decode tokens outside 1..4096 or
// reps outside 1..kMaxReps; errors from loading the model pass through.
KvBenchResult run_kv_bench(const KvBenchOptions& options);

}  // namespace tandem
