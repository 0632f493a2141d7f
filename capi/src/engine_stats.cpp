// tandem_model_get_stats: the model's scheduler and KV cache counters (ABI 4).
#include "c_api_support.hpp"
#include "tandem/engine/scheduler.hpp"

using namespace tandem;
using namespace tandem::capi;

namespace {
const size_t kEngineStatsV1 = TANDEM_V1_SIZE(tandem_engine_stats, kv_disk_rejected);  // ABI 4
}  // namespace

extern "C" {

tandem_status tandem_model_get_stats(const tandem_model* model, tandem_engine_stats* out_stats) {
  return guarded([&] {
    Engine& engine = *require(model, "model").engine;
    require(out_stats, "out_stats");
    const SchedulerStats s = engine.scheduler().stats();
    tandem_engine_stats stats{};
    stats.struct_size = sizeof(stats);
    stats.running_sequences = s.running;
    stats.waiting_sequences = s.waiting;
    stats.steps = s.steps;
    stats.batched_steps = s.batched_steps;
    stats.session_chunks = s.session_chunks;
    stats.preemptions = s.preemptions;
    stats.kv_block_tokens = engine.options().kv_block_tokens;
    stats.kv_blocks_total = s.kv_blocks_total;
    stats.kv_blocks_in_use = s.kv_blocks_in_use;
    stats.kv_blocks_free = s.kv_blocks_total - s.kv_blocks_in_use;
    stats.kv_blocks_cached = s.kv_blocks_cached;
    stats.prefix_hit_tokens = engine.prefix_cache_counts().hit_tokens;
    if (const std::optional<KvDiskStats> disk = engine.kv_disk_stats()) {
      stats.kv_disk_records = disk->records;
      stats.kv_disk_loaded = disk->loaded;
      stats.kv_disk_written = disk->written;
      stats.kv_disk_rejected = disk->rejected_corrupt + disk->rejected_truncated + disk->rejected_foreign;
    }
    write_out_struct(out_stats, stats, kEngineStatsV1, "tandem_engine_stats");
  });
}

}  // extern "C"
