#include "tandem/engine/bench/kv_bench.hpp"

#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <random>
#include <vector>

#include "tandem/engine/engine.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_disk_tier.hpp"
#include "tandem/kv/kv_pool.hpp"

namespace tandem {
namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

double prefill_flops(const ModelConfig& c, int64_t first, int64_t last) {
  const auto H = static_cast<double>(c.hidden_size);
  const auto heads = static_cast<double>(c.num_heads);
  double attention_proj = 0, per_pair = 0;
  if (c.attention == AttentionKind::mla) {
    const double q_head = static_cast<double>(c.qk_nope_head_dim + c.qk_rope_head_dim);
    const auto lora = static_cast<double>(c.kv_lora_rank), rope = static_cast<double>(c.qk_rope_head_dim);
    const double q = c.q_lora_rank > 0 ? H * static_cast<double>(c.q_lora_rank) + static_cast<double>(c.q_lora_rank) * heads * q_head
                                       : H * heads * q_head;
    attention_proj = q + H * (lora + rope) + heads * static_cast<double>(c.qk_nope_head_dim) * lora +
                     heads * static_cast<double>(c.v_head_dim) * lora + heads * static_cast<double>(c.v_head_dim) * H;
    per_pair = heads * (lora + rope) + heads * lora;
  } else {
    const auto hd = static_cast<double>(c.head_dim), kv = static_cast<double>(c.num_kv_heads);
    attention_proj = 2 * H * heads * hd + 2 * H * kv * hd;
    per_pair = 2 * heads * hd;
  }
  double per_token = 0;
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    per_token += attention_proj;
    if (c.is_moe_layer(layer)) {
      const double shared = c.shared_expert_intermediate_size > 0
                                ? static_cast<double>(c.shared_expert_intermediate_size)
                                : static_cast<double>(c.num_shared_experts * c.moe_intermediate_size);
      per_token += H * static_cast<double>(c.num_experts) +
                   3 * H * (static_cast<double>(c.num_experts_per_tok * c.moe_intermediate_size) + shared);
    } else {
      per_token += 3 * H * static_cast<double>(c.intermediate_size);
    }
  }
  // Token p attends to p + 1 positions.
  const double pairs = (static_cast<double>(last) * static_cast<double>(last + 1) -
                        static_cast<double>(first) * static_cast<double>(first + 1)) / 2;
  return 2 * (per_token * static_cast<double>(last - first) + per_pair * static_cast<double>(c.num_layers) * pairs);
}

KvBenchResult run_kv_bench(const KvBenchOptions& o) {
  const auto check = [](int64_t v, int64_t lo, int64_t hi, const char* what) {
    if (v < lo || v > hi)
      throw Error(ErrorKind::out_of_range, fmt::format("bench kv: {} {} is outside {}..{}", what, v, lo, hi));
  };
  check(o.prompt_tokens, 2, 65536, "--prompt-tokens");
  check(o.cached_tokens, 0, o.prompt_tokens - 1, "--cached-tokens");
  check(o.decode_tokens, 1, 4096, "--decode-tokens");
  check(o.reps, 1, KvBenchOptions::kMaxReps, "--repetitions");
  KvBenchResult r;

  LoadOptions load;
  load.threads = o.threads;
  load.kv_type = o.kv_type;
  load.kv_prefix_cache = true;
  load.load_tokenizer = false;
  load.max_context_tokens = o.prompt_tokens + o.decode_tokens;
  // One session at a time, the cached prefix of the previous repetitions, and room to spare.
  load.max_sessions = 3;
  load.placement = o.placement;
  auto engine = Engine::load(o.model_path, load);
  // Attention on a GPU: the prefix is timed where the pool keeps it (VRAM), then from the host tier.
  r.device_tier = engine->kv_pool().has_device_layers();
  const ModelConfig& config = engine->config();
  if (load.max_context_tokens > config.max_position_embeddings && config.max_position_embeddings > 0)
    throw Error(ErrorKind::out_of_range,
                fmt::format("bench kv: {} prompt + {} decode tokens exceed the model's context of {}", o.prompt_tokens,
                            o.decode_tokens, config.max_position_embeddings));
  const int64_t bt = engine->options().kv_block_tokens;

  r.cached_tokens = o.cached_tokens / bt * bt;
  r.speedup_limit = prefill_flops(config, 0, o.prompt_tokens) / prefill_flops(config, r.cached_tokens, o.prompt_tokens);
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size - 1));
  const auto random_prompt = [&] {
    std::vector<int32_t> ids(static_cast<size_t>(o.prompt_tokens));
    for (auto& id : ids) id = token(rng);
    return ids;
  };
  // Prefill then decode; returns (prefill seconds, decode tok/s).
  const auto timed = [&](Session& s, const std::vector<int32_t>& prompt, int64_t expect_cached) {
    const auto start = std::chrono::steady_clock::now();
    s.prefill(prompt);
    const double ttft = seconds_since(start);
    if (s.cached_prompt_tokens() != expect_cached)
      throw Error(ErrorKind::internal, fmt::format("bench kv: {} prompt tokens came from the cache, expected {}",
                                                   s.cached_prompt_tokens(), expect_cached));
    const auto decode_start = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < o.decode_tokens; ++i) s.decode(token(rng));
    return std::pair{ttft, static_cast<double>(o.decode_tokens) / seconds_since(decode_start)};
  };
  {  // warm-up: the first pass pays for page faults and thread start
    const auto session = engine->new_session();
    (void)timed(*session, random_prompt(), 0);
  }
  // A prompt whose first M tokens another request put in the cache: the TTFT and decode speed of a
  // session adopting them; with `to_host`, the pool's idle cached blocks are moved to the host
  // tier first, so they are copied back from there.
  const auto cached_run = [&](bool to_host) {
    const std::vector<int32_t> prompt = random_prompt();
    if (r.cached_tokens > 0) {
      const auto writer = engine->new_session();
      writer->prefill(std::span<const int32_t>(prompt).first(static_cast<size_t>(r.cached_tokens)));
    }
    if (to_host) engine->evict_prefix_cache_to_host();
    const auto session = engine->new_session();
    return timed(*session, prompt, r.cached_tokens);
  };
  std::vector<double> cold, host, device, cold_decode, host_decode, device_decode;
  for (int rep = 0; rep < o.reps; ++rep) {
    {
      const auto session = engine->new_session();
      const auto [ttft, tok_s] = timed(*session, random_prompt(), 0);
      cold.push_back(ttft);
      cold_decode.push_back(tok_s);
    }
    if (r.device_tier) {
      const auto [ttft, tok_s] = cached_run(false);
      device.push_back(ttft);
      device_decode.push_back(tok_s);
    }
    const auto [ttft, tok_s] = cached_run(r.device_tier);
    host.push_back(ttft);
    host_decode.push_back(tok_s);
  }
  r.ttft_cold_s = median(cold);
  r.ttft_host_s = median(host);
  r.decode_tok_s_cold = median(cold_decode);
  r.decode_tok_s_host = median(host_decode);
  if (r.device_tier) {
    r.ttft_device_s = median(device);
    r.decode_tok_s_device = median(device_decode);
  }
  engine.reset();

  // The SSD tier: a fresh record directory, an engine writing through to it.
  namespace fs = std::filesystem;
  const std::string parent = o.disk_dir.empty() ? fs::temp_directory_path().string() : o.disk_dir;
  KvDiskTier::check_directory(parent);
  const struct RecordDir {
    std::string path;
    ~RecordDir() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  } records{(fs::path(parent) / fmt::format("tandem-bench-kv-{}", ::getpid())).string()};
  fs::remove_all(records.path);
  fs::create_directory(records.path);
  r.disk_fs = KvDiskTier::file_system_type(records.path);
  LoadOptions disk_load = load;
  disk_load.kv_disk_dir = records.path;
  const uint64_t fs_bytes = KvDiskTier::file_system_bytes(records.path);
  disk_load.kv_disk_bytes = fs_bytes > 0 ? std::min(uint64_t{64} << 30, fs_bytes / 2) : uint64_t{64} << 30;
  const auto disk_engine = Engine::load(o.model_path, disk_load);
  {
    const auto session = disk_engine->new_session();
    (void)timed(*session, random_prompt(), 0);
  }
  std::vector<double> disk, disk_decode;
  for (int rep = 0; rep < o.reps; ++rep) {
    const std::vector<int32_t> prompt = random_prompt();
    if (r.cached_tokens > 0) {
      const auto writer = disk_engine->new_session();
      writer->prefill(std::span<const int32_t>(prompt).first(static_cast<size_t>(r.cached_tokens)));
    }
    disk_engine->evict_prefix_cache();
    r.disk_page_cache_resident =
        std::max(r.disk_page_cache_resident, disk_engine->kv_disk_stats()->page_cache_resident);
    const auto session = disk_engine->new_session();
    const auto [ttft, tok_s] = timed(*session, prompt, r.cached_tokens);
    disk.push_back(ttft);
    disk_decode.push_back(tok_s);
  }
  const KvDiskStats stats = *disk_engine->kv_disk_stats();
  r.disk_io = stats.io;
  if (stats.loaded > 0)
    r.disk_read_direct = static_cast<double>(stats.read_direct) / static_cast<double>(stats.loaded);
  if (stats.rejected_corrupt + stats.rejected_truncated + stats.rejected_foreign + stats.write_failures > 0)
    throw Error(ErrorKind::internal, "bench kv: the disk tier rejected or failed records: " + stats.io);
  r.ttft_disk_s = median(disk);
  r.decode_tok_s_disk = median(disk_decode);
  return r;
}

}  // namespace tandem
