#include "tandem/server/metrics.hpp"

#include <fmt/format.h>

#include <iterator>

namespace tandem::server {

namespace {
void metric(std::string& out, const char* name, const char* type, const char* help, double value) {
  out += fmt::format("# HELP {0} {1}\n# TYPE {0} {2}\n{0} {3}\n", name, help, type, value);
}

void histogram(std::string& out, const char* name, const char* help, const LatencyHistogram& h) {
  out += fmt::format("# HELP {0} {1}\n# TYPE {0} histogram\n", name, help);
  for (size_t b = 0; b < std::size(LatencyHistogram::kBounds); ++b)
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, LatencyHistogram::kBounds[b], h.buckets[b]);
  out += fmt::format("{0}_bucket{{le=\"+Inf\"}} {1}\n{0}_sum {2}\n{0}_count {1}\n", name, h.count, h.sum);
}
}  // namespace

std::string prometheus_text(const SchedulerStats& s, const HttpCounters& http) {
  std::string out;
  out +=
      "# HELP tandem_http_requests_total HTTP requests answered, by status code.\n"
      "# TYPE tandem_http_requests_total counter\n";
  for (const auto& [status, count] : http.responses_by_status)
    out += fmt::format("tandem_http_requests_total{{code=\"{}\"}} {}\n", status, count);
  if (http.responses_by_status.empty()) out += "tandem_http_requests_total{code=\"200\"} 0\n";
  metric(out, "tandem_chat_completion_requests_total", "counter", "POST /v1/chat/completions requests.",
         static_cast<double>(http.chat_requests));
  metric(out, "tandem_completion_requests_total", "counter", "POST /v1/completions requests.",
         static_cast<double>(http.completion_requests));
  metric(out, "tandem_client_disconnects_total", "counter", "Sequences cancelled because their client left.",
         static_cast<double>(http.client_disconnects));
  metric(out, "tandem_sequences_submitted_total", "counter", "Sequences queued for generation.",
         static_cast<double>(s.submitted));
  metric(out, "tandem_sequences_finished_total", "counter", "Sequences that left the scheduler.",
         static_cast<double>(s.finished));
  metric(out, "tandem_sequences_cancelled_total", "counter", "Sequences cancelled (client gone, shutdown).",
         static_cast<double>(s.cancelled));
  metric(out, "tandem_prompt_tokens_total", "counter", "Prompt tokens of submitted sequences.",
         static_cast<double>(s.prompt_tokens));
  metric(out, "tandem_prefill_tokens_total", "counter",
         "Tokens run through prefill (recomputation included).", static_cast<double>(s.prefilled_tokens));
  metric(out, "tandem_generation_tokens_total", "counter", "Tokens sampled.",
         static_cast<double>(s.generated_tokens));
  metric(out, "tandem_prefix_cache_hit_tokens_total", "counter",
         "Prompt tokens whose KV came from the prefix cache.", static_cast<double>(s.cached_prompt_tokens));
  metric(out, "tandem_preemptions_total", "counter", "Sequences preempted (KV freed, recomputed later).",
         static_cast<double>(s.preemptions));
  metric(out, "tandem_requests_running", "gauge", "Sequences being decoded.", static_cast<double>(s.running));
  metric(out, "tandem_requests_waiting", "gauge", "Sequences queued (the queue length).",
         static_cast<double>(s.waiting));
  metric(out, "tandem_kv_blocks_total", "gauge", "KV cache blocks in the pool.",
         static_cast<double>(s.kv_blocks_total));
  metric(out, "tandem_kv_blocks_in_use", "gauge", "KV cache blocks held by sequences.",
         static_cast<double>(s.kv_blocks_in_use));
  metric(out, "tandem_kv_blocks_free", "gauge",
         "KV cache blocks free (cached blocks no sequence holds included: they give way when needed).",
         static_cast<double>(s.kv_blocks_total - s.kv_blocks_in_use));
  metric(out, "tandem_kv_blocks_cached", "gauge",
         "KV cache blocks held by the prefix cache (some may be in use by sequences too).",
         static_cast<double>(s.kv_blocks_cached));
  metric(out, "tandem_kv_host_tier_blocks", "gauge",
         "KV blocks in the prefix cache's host tier (pinned memory; attention on a GPU, else 0).",
         static_cast<double>(s.kv_host_tier_blocks));
  metric(out, "tandem_kv_host_tier_loaded_blocks_total", "counter",
         "KV blocks copied back from the host tier into the GPU's pool (host-tier hits).",
         static_cast<double>(s.kv_host_tier_loaded_blocks));
  histogram(out, "tandem_step_seconds", "Time of one scheduler step (one batched forward pass).", s.step_seconds);
  histogram(out, "tandem_time_to_first_token_seconds", "A sequence's submit to its first sampled token.",
            s.first_token_seconds);
  histogram(out, "tandem_inter_token_latency_seconds", "Time between a sequence's consecutive sampled tokens.",
            s.inter_token_seconds);
  return out;
}

}  // namespace tandem::server
