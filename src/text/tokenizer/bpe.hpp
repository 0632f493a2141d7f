#pragma once
// The BPE model: a word (one pre-tokenized piece) becomes token ids by repeatedly merging the
// adjacent pair with the lowest merge rank. Words already seen come from a bounded cache.
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tandem::text {

struct BpeOptions {
  // Vocabulary entries are byte-level text (GPT-2 alphabet); words arrive as raw bytes.
  bool byte_level = true;
  bool byte_fallback = false;  // unknown characters become <0xXX> byte tokens
  bool ignore_merges = false;  // a word that is itself in the vocabulary is one token
  bool fuse_unk = false;
  int32_t unk_id = -1;
};

class BpeModel {
 public:
  // `vocab[id]` is the entry's text as tokenizer.json stores it (empty for unused ids);
  // `merges` are pairs of entries, highest priority first. Throws Error(corrupt_file) on a merge
  // whose parts or result are not in the vocabulary.
  BpeModel(std::vector<std::string> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
           BpeOptions options);

  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;

  const std::vector<std::string>& vocab() const { return vocab_; }
  int32_t find(std::string_view entry_text) const;  // -1 when absent
  const BpeOptions& options() const { return options_; }

 private:
  struct MergeResult {
    int32_t rank;
    int32_t merged_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void initial_symbols(std::string_view word, std::vector<int32_t>& symbols) const;
  void merge_symbols(std::vector<int32_t>& symbols) const;

  std::vector<std::string> vocab_;
  std::unordered_map<std::string, int32_t> by_text_;      // entry text as stored
  std::unordered_map<std::string, int32_t> by_bytes_;     // the word form BPE sees
  std::unordered_map<uint64_t, MergeResult> merges_;
  int32_t byte_ids_[256];                                  // byte_level: single-byte tokens
  int32_t fallback_ids_[256];                              // byte_fallback: <0xXX> tokens
  BpeOptions options_;

  static constexpr size_t kCacheCapacity = 1 << 16;
  static constexpr size_t kMaxCachedWordBytes = 64;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace tandem::text
