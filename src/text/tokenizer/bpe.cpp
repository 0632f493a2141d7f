#include "text/tokenizer/bpe.hpp"

#include <algorithm>
#include <cstdio>

#include "tandem/error.hpp"
#include "text/tokenizer/byte_level.hpp"
#include "text/tokenizer/utf8.hpp"

namespace tandem::text {

BpeModel::BpeModel(std::vector<std::string> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions options)
    : vocab_(std::move(vocab)), options_(options) {
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  std::fill(std::begin(fallback_ids_), std::end(fallback_ids_), -1);
  by_text_.reserve(vocab_.size());
  by_bytes_.reserve(vocab_.size());
  std::string bytes;
  for (size_t id = 0; id < vocab_.size(); ++id) {
    const std::string& text = vocab_[id];
    if (text.empty()) continue;
    const auto id32 = static_cast<int32_t>(id);
    by_text_.emplace(text, id32);
    if (!options_.byte_level) {
      by_bytes_.emplace(text, id32);
    } else if (byte_level_to_bytes(text, bytes)) {
      // Entries outside the byte alphabet (special tokens) are reachable only as added tokens.
      by_bytes_.emplace(bytes, id32);
      if (bytes.size() == 1) byte_ids_[static_cast<unsigned char>(bytes[0])] = id32;
    }
  }
  if (options_.byte_fallback) {
    char name[8];
    for (unsigned b = 0; b < 256; ++b) {
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      fallback_ids_[b] = find(name);
    }
  }
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const int32_t a = find(left), b = find(right), merged = find(left + right);
    if (a < 0 || b < 0 || merged < 0)
      throw Error(ErrorKind::corrupt_file, "tokenizer: merge #" + std::to_string(rank) + " '" +
                                               left + " " + right +
                                               "' uses a token missing from the vocabulary");
    merges_.emplace(pair_key(a, b), MergeResult{static_cast<int32_t>(rank), merged});
  }
}

int32_t BpeModel::find(std::string_view entry_text) const {
  const auto it = by_text_.find(std::string(entry_text));
  return it == by_text_.end() ? -1 : it->second;
}

void BpeModel::initial_symbols(std::string_view word, std::vector<int32_t>& symbols) const {
  if (options_.byte_level) {
    for (char c : word) {
      const int32_t id = byte_ids_[static_cast<unsigned char>(c)];
      if (id >= 0)
        symbols.push_back(id);
      else if (options_.unk_id >= 0)
        symbols.push_back(options_.unk_id);
    }
    return;
  }
  size_t i = 0;
  std::string character;
  bool previous_unk = false;
  while (i < word.size()) {
    const size_t start = i;
    next_code_point(word, i);
    character.assign(word.substr(start, i - start));
    const auto it = by_bytes_.find(character);
    if (it != by_bytes_.end()) {
      symbols.push_back(it->second);
      previous_unk = false;
      continue;
    }
    if (options_.byte_fallback) {
      bool all_bytes_known = true;
      for (char c : character) all_bytes_known &= fallback_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all_bytes_known) {
        for (char c : character) symbols.push_back(fallback_ids_[static_cast<unsigned char>(c)]);
        previous_unk = false;
        continue;
      }
    }
    if (options_.unk_id >= 0 && !(options_.fuse_unk && previous_unk))
      symbols.push_back(options_.unk_id);
    previous_unk = options_.unk_id >= 0;
  }
}

void BpeModel::merge_symbols(std::vector<int32_t>& symbols) const {
  const size_t n = symbols.size();
  if (n < 2) return;
  // A doubly linked list over `symbols` plus a min-heap of candidate merges (rank, position);
  // stale candidates are skipped when popped.
  std::vector<int32_t> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
  }
  struct Candidate {
    int32_t rank, pos, merged_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Candidate> heap;
  heap.reserve(n);
  auto push_candidate = [&](int32_t left) {
    if (left < 0 || next[left] < 0) return;
    const auto it = merges_.find(pair_key(symbols[left], symbols[next[left]]));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, left, it->second.merged_id});
    std::push_heap(heap.begin(), heap.end(), std::greater<>{});
  };
  for (size_t i = 0; i + 1 < n; ++i) push_candidate(static_cast<int32_t>(i));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
    const Candidate top = heap.back();
    heap.pop_back();
    const int32_t left = top.pos;
    if (!alive[left] || next[left] < 0) continue;
    const int32_t right = next[left];
    const auto it = merges_.find(pair_key(symbols[left], symbols[right]));
    if (it == merges_.end() || it->second.merged_id != top.merged_id) continue;
    symbols[left] = top.merged_id;
    alive[right] = false;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    push_candidate(prev[left]);
    push_candidate(left);
  }
  size_t out = 0;
  for (int32_t i = 0; i >= 0; i = next[i]) symbols[out++] = symbols[i];
  symbols.resize(out);
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard lock(cache_mutex_);
    const auto it = cache_.find(key);
    if (it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> symbols;
  const auto whole = options_.ignore_merges ? by_bytes_.find(std::string(word)) : by_bytes_.end();
  if (whole != by_bytes_.end()) {
    symbols.push_back(whole->second);
  } else {
    symbols.reserve(word.size());
    initial_symbols(word, symbols);
    merge_symbols(symbols);
  }
  ids.insert(ids.end(), symbols.begin(), symbols.end());
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() >= kCacheCapacity) cache_.clear();
    cache_.emplace(std::move(key), std::move(symbols));
  }
}

}  // namespace tandem::text
