#pragma once
// `tandem bench serve`: a load generator over loopback HTTP against an in-process HttpServer. For
// each concurrency, that many client threads each send `requests_per_client` streaming
// /v1/completions requests back to back (random prompt ids, greedy, EOS ignored so every reply
// has max_tokens tokens) and record when each SSE event arrives (`direct`: the same sequences
// submitted to the engine's Scheduler, timed at its token callbacks, no HTTP). Prompts differ between requests,
// levels and repetitions, so the server's prefix cache does not shorten prefills.
#include <cstdint>
#include <string>
#include <vector>

namespace tandem {
class Engine;
}

namespace tandem::server {

struct ServeBenchOptions {
  std::vector<int64_t> clients = {1, 4, 16, 32};
  int64_t requests_per_client = 4;
  int64_t prompt_tokens = 32;
  int64_t max_tokens = 64;
  int64_t parallel = 0;          // 0: the largest concurrency
  int64_t max_batch_tokens = 0;  // 0: the engine's
  uint64_t seed = 1;
  // The sweep runs this many times (levels interleaved, so a machine whose load drifts affects
  // every level alike); each level reports its median run by decode tok/s.
  int64_t repetitions = 3;
  // Submit to the engine's scheduler in-process instead of over HTTP: the same sequences, timed at
  // the scheduler's token callbacks. What batching alone gives, the ceiling of the HTTP figures.
  bool direct = false;
};

struct Percentiles {
  double p50 = 0, p90 = 0, p99 = 0, mean = 0;
};

struct ServeBenchRow {
  int64_t clients = 0;
  int64_t requests = 0;
  double seconds = 0;                   // wall time from the first request sent to the last reply read
  int64_t output_tokens = 0;            // completion tokens over all requests (usage)
  int64_t cached_prompt_tokens = 0;     // prompt tokens the prefix cache served (usage; 0 when prompts differ)
  double output_tokens_per_second = 0;  // aggregate throughput: output_tokens / seconds
  double decode_tokens_per_second = 0;  // sum over clients of their tokens after the first / time after TTFT
  Percentiles ttft_ms;                  // request sent → first streamed token
  Percentiles itl_ms;                   // gaps between streamed events after the first
  double speedup = 0;                   // output_tokens_per_second over the 1-client row's (0 without one)
  double decode_speedup = 0;            // decode_tokens_per_second over the 1-client row's
};

// Runs the whole sweep; the engine must have been loaded with max_sessions ≥ parallel.
std::vector<ServeBenchRow> run_serve_bench(Engine& engine, const ServeBenchOptions& options);

}  // namespace tandem::server
