#pragma once
// Latencies as a Prometheus histogram: counts of observations at or below each bound (seconds),
// cumulative, the last entry +Inf (= count), and their sum. The scheduler keeps three (step time,
// time to first token, inter-token latency); `tandem serve`'s /metrics prints them.
#include <cstdint>
#include <iterator>
#include <vector>

namespace tandem {

struct LatencyHistogram {
  static constexpr double kBounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                       0.5,   1.0,    2.5,   5.0,  10.0,  30.0, 60.0};
  std::vector<int64_t> buckets = std::vector<int64_t>(std::size(kBounds) + 1, 0);
  double sum = 0;
  int64_t count = 0;

  void add(double seconds) {
    for (size_t b = 0; b < std::size(kBounds); ++b)
      if (seconds <= kBounds[b]) ++buckets[b];
    ++buckets.back();
    sum += seconds;
    ++count;
  }
};

}  // namespace tandem
