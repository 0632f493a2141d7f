#pragma once
// Retention policies: which cached tokens a sequence keeps once its cache passes a bound, so a
// long generation runs in bounded memory. One set of tokens per sequence — every layer and head
// keeps the same ones, so evicted tokens' slots are compacted and whole blocks go back to the
// pool (BlockTable::compact). Kept tokens keep their original positions (their keys were roped
// when written); new tokens continue the position count.
//
//   full            keep everything (the cache is bounded by the context only)
//   sinks:S,W       StreamingLLM: the first S tokens (attention sinks) and the last W tokens
//   h2o:BUDGET      H2O: the last BUDGET/2 tokens, and of the older ones the BUDGET - BUDGET/2
//                   with the largest attention received so far (summed over every query since
//                   the token was written, over heads and layers)
//   snapkv:BUDGET   SnapKV: an observation window of the last w = min(32, BUDGET/2) tokens
//                   votes: each older token's attention from the window's queries (summed over
//                   heads and layers), max-pooled over neighbouring slots (kernel 7), picks the
//                   BUDGET - w kept beside the window
// Ties go to the earlier token. A policy acts whenever the cache holds more than its capacity
// (S + W, or BUDGET) after a forward pass, and cuts it back to the capacity: within one prompt
// chunk a query may see up to capacity + chunk tokens.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tandem {

enum class RetentionKind { full, sinks, h2o, snapkv };

struct RetentionPolicy {
  RetentionKind kind = RetentionKind::full;
  int64_t sinks = 0, window = 0;  // sinks:S,W
  int64_t budget = 0;             // h2o, snapkv

  // "full", "sinks:S,W", "h2o:BUDGET", "snapkv:BUDGET"; Error(invalid_argument) otherwise.
  static RetentionPolicy parse(std::string_view text);
  std::string to_string() const;
  bool is_full() const { return kind == RetentionKind::full; }
  bool needs_attention() const { return kind == RetentionKind::h2o || kind == RetentionKind::snapkv; }
  // Tokens kept after an eviction (0 for full: no bound).
  int64_t capacity() const;
  int64_t observation_window() const;  // snapkv's w
};

// The slots to keep (ascending) out of `count`, given per-slot scores (H2O: accumulated
// attention; SnapKV: the observation window's attention, before pooling). All of them when
// count <= capacity.
std::vector<int64_t> select_kept_slots(const RetentionPolicy& policy, int64_t count, std::span<const float> scores);

// A sequence's policy state: the scores its policy needs, kept aligned with the cache slots.
class RetentionState {
 public:
  explicit RetentionState(RetentionPolicy policy = {}) : policy_(policy) {}
  const RetentionPolicy& policy() const { return policy_; }

  // A zeroed buffer [tokens, slots_after] for the forward pass's attention rows, or nullptr when
  // the policy needs none. Valid until the next call.
  float* attention_rows(int64_t tokens, int64_t slots_after);
  // Takes in the rows the last forward pass filled (same tokens, slots_after).
  void observe(int64_t tokens, int64_t slots_after);
  // When `slots` is over the capacity: the slots to keep (ascending), with the state compacted
  // to match; else empty (nothing to evict).
  std::vector<int64_t> evict(int64_t slots);
  // The cache was cut back to its first `slots` slots (Session::truncate) or emptied.
  void truncate(int64_t slots);

 private:
  RetentionPolicy policy_;
  std::vector<float> rows_;                     // the forward pass's attention rows
  std::vector<float> accumulated_;              // h2o: per slot
  std::vector<std::vector<float>> observation_;  // snapkv: the last w tokens' rows, oldest first
  std::vector<float> window_scores_;
};

}  // namespace tandem
