#include "tandem/kv/retention.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <numeric>

#include "tandem/error.hpp"

namespace tandem {
namespace {

[[noreturn]] void bad_policy(std::string_view text, std::string_view why) {
  throw Error(ErrorKind::invalid_argument,
              fmt::format("KV policy '{}': {} (use full, sinks:S,W, h2o:BUDGET or snapkv:BUDGET)", text, why));
}

int64_t parse_count(std::string_view whole, std::string_view digits, int64_t min) {
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size())
    bad_policy(whole, fmt::format("'{}' is not a whole number", digits));
  if (v < min || v > (int64_t{1} << 24))
    bad_policy(whole, fmt::format("{} is outside [{}, {}]", v, min, int64_t{1} << 24));
  return v;
}

// The `keep` slots of [0, end) with the largest scores (ties: the earlier slot), ascending.
std::vector<int64_t> top_slots(std::span<const float> scores, int64_t end, int64_t keep) {
  std::vector<int64_t> order(static_cast<size_t>(end));
  std::iota(order.begin(), order.end(), int64_t{0});
  keep = std::min(keep, end);
  // A NaN score ranks as -inf: `>` against NaN would break the sort's strict weak order.
  const auto key = [&](int64_t i) {
    const float s = scores[static_cast<size_t>(i)];
    return std::isnan(s) ? -std::numeric_limits<float>::infinity() : s;
  };
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), [&](int64_t a, int64_t b) {
    const float sa = key(a), sb = key(b);
    return sa != sb ? sa > sb : a < b;
  });
  order.resize(static_cast<size_t>(keep));
  std::sort(order.begin(), order.end());
  return order;
}

}  // namespace

RetentionPolicy RetentionPolicy::parse(std::string_view text) {
  RetentionPolicy p;
  if (text == "full") return p;
  const size_t colon = text.find(':');
  if (colon == std::string_view::npos) bad_policy(text, "unknown policy");
  const std::string_view name = text.substr(0, colon), args = text.substr(colon + 1);
  if (name == "sinks") {
    const size_t comma = args.find(',');
    if (comma == std::string_view::npos) bad_policy(text, "sinks takes S,W");
    p.kind = RetentionKind::sinks;
    p.sinks = parse_count(text, args.substr(0, comma), 0);
    p.window = parse_count(text, args.substr(comma + 1), 1);
  } else if (name == "h2o" || name == "snapkv") {
    p.kind = name == "h2o" ? RetentionKind::h2o : RetentionKind::snapkv;
    p.budget = parse_count(text, args, 2);
  } else {
    bad_policy(text, "unknown policy");
  }
  return p;
}

std::string RetentionPolicy::to_string() const {
  switch (kind) {
    case RetentionKind::full:
      return "full";
    case RetentionKind::sinks:
      return fmt::format("sinks:{},{}", sinks, window);
    case RetentionKind::h2o:
      return fmt::format("h2o:{}", budget);
    case RetentionKind::snapkv:
      return fmt::format("snapkv:{}", budget);
  }
  return "full";
}

int64_t RetentionPolicy::capacity() const {
  switch (kind) {
    case RetentionKind::full:
      return 0;
    case RetentionKind::sinks:
      return sinks + window;
    case RetentionKind::h2o:
    case RetentionKind::snapkv:
      return budget;
  }
  return 0;
}

int64_t RetentionPolicy::observation_window() const { return std::min<int64_t>(32, budget / 2); }

std::vector<int64_t> select_kept_slots(const RetentionPolicy& policy, int64_t count, std::span<const float> scores) {
  std::vector<int64_t> kept;
  if (policy.is_full() || count <= policy.capacity()) {
    kept.resize(static_cast<size_t>(count));
    std::iota(kept.begin(), kept.end(), int64_t{0});
    return kept;
  }
  int64_t recent = 0;  // the last `recent` slots are always kept
  switch (policy.kind) {
    case RetentionKind::sinks:
      for (int64_t s = 0; s < policy.sinks; ++s) kept.push_back(s);
      recent = policy.window;
      break;
    case RetentionKind::h2o:
      recent = policy.budget / 2;
      kept = top_slots(scores, count - recent, policy.budget - recent);
      break;
    case RetentionKind::snapkv: {
      recent = policy.observation_window();
      const int64_t candidates = count - recent;
      std::vector<float> pooled(static_cast<size_t>(candidates));
      for (int64_t s = 0; s < candidates; ++s) {
        float m = scores[static_cast<size_t>(s)];
        for (int64_t j = std::max<int64_t>(0, s - 3); j <= std::min(candidates - 1, s + 3); ++j)
          m = std::max(m, scores[static_cast<size_t>(j)]);
        pooled[static_cast<size_t>(s)] = m;
      }
      kept = top_slots(pooled, candidates, policy.budget - recent);
      break;
    }
    case RetentionKind::full:
      break;
  }
  for (int64_t s = count - recent; s < count; ++s) kept.push_back(s);
  return kept;
}

float* RetentionState::attention_rows(int64_t tokens, int64_t slots_after) {
  if (!policy_.needs_attention()) return nullptr;
  rows_.assign(static_cast<size_t>(tokens * slots_after), 0.0f);
  return rows_.data();
}

void RetentionState::observe(int64_t tokens, int64_t slots_after) {
  if (!policy_.needs_attention()) return;
  if (policy_.kind == RetentionKind::h2o) {
    accumulated_.resize(static_cast<size_t>(slots_after), 0.0f);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t s = 0; s < slots_after; ++s)
        accumulated_[static_cast<size_t>(s)] += rows_[static_cast<size_t>(t * slots_after + s)];
    return;
  }
  const auto w = static_cast<size_t>(policy_.observation_window());
  for (int64_t t = std::max<int64_t>(0, tokens - static_cast<int64_t>(w)); t < tokens; ++t) {
    if (observation_.size() == w) std::rotate(observation_.begin(), observation_.begin() + 1, observation_.end());
    else observation_.emplace_back();
    const float* row = rows_.data() + t * slots_after;
    observation_.back().assign(row, row + slots_after);  // reuses the recycled row's storage
  }
}

std::vector<int64_t> RetentionState::evict(int64_t slots) {
  if (policy_.is_full() || slots <= policy_.capacity()) return {};
  std::span<const float> scores;
  if (policy_.kind == RetentionKind::h2o) {
    accumulated_.resize(static_cast<size_t>(slots), 0.0f);
    scores = accumulated_;
  } else if (policy_.kind == RetentionKind::snapkv) {
    window_scores_.assign(static_cast<size_t>(slots), 0.0f);
    for (const auto& row : observation_)
      for (size_t s = 0; s < row.size() && s < window_scores_.size(); ++s) window_scores_[s] += row[s];
    scores = window_scores_;
  }
  std::vector<int64_t> kept = select_kept_slots(policy_, slots, scores);
  const auto compact = [&](std::vector<float>& v) {
    size_t i = 0;
    for (const int64_t s : kept) v[i++] = static_cast<size_t>(s) < v.size() ? v[static_cast<size_t>(s)] : 0.0f;
    v.resize(kept.size());
  };
  if (policy_.kind == RetentionKind::h2o) compact(accumulated_);
  for (auto& row : observation_) {
    row.resize(std::max(row.size(), static_cast<size_t>(slots)), 0.0f);
    compact(row);
  }
  return kept;
}

void RetentionState::truncate(int64_t slots) {
  if (accumulated_.size() > static_cast<size_t>(slots)) accumulated_.resize(static_cast<size_t>(slots));
  observation_.clear();
}

}  // namespace tandem
