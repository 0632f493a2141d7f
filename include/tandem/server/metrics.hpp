#pragma once
// GET /metrics: Prometheus text exposition of the scheduler's and the HTTP layer's counters.
#include <cstdint>
#include <map>
#include <string>

#include "tandem/engine/scheduler.hpp"

namespace tandem::server {

struct HttpCounters {
  std::map<int, int64_t> responses_by_status;  // every answered request, by status code
  int64_t chat_requests = 0;
  int64_t completion_requests = 0;
  int64_t client_disconnects = 0;  // sequences cancelled because their client went away
};

std::string prometheus_text(const SchedulerStats& stats, const HttpCounters& http);

}  // namespace tandem::server
