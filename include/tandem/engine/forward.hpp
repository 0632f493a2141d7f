#pragma once
// One forward pass over a batch of sequences: each chunk brings its own ids, first position and
// block table (a decode token, or a piece of a prompt). Scratch is sized once from
// max_batch_tokens; nothing is allocated per token.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "tandem/model/model_config.hpp"
#include "tandem/model/weight_roles.hpp"
#include "tandem/model/weights.hpp"

namespace tandem {

class Backend;
class KvPool;
class BlockTable;

struct SequenceChunk {
  std::span<const int32_t> ids;
  int64_t start_position = 0;   // position of ids[0] (RoPE); the cache holds positions before it
  BlockTable* table = nullptr;  // must already hold start_slot + ids.size() slots
  bool all_logits = false;      // logits for every id, else for the last one only
  // The cache slot of ids[0]; -1: start_position. A retention policy that evicted tokens keeps
  // fewer slots than positions: the kept tokens fill slots [0, start_slot) in position order.
  int64_t start_slot = -1;
  // Optional [ids.size(), start_slot + ids.size()], zeroed by the caller: row i receives token i's
  // attention probabilities per slot, summed over heads and layers (for H2O and SnapKV).
  float* attention_rows = nullptr;
};

class ForwardPass {
 public:
  // The backend each role group runs on (placement made executable): embedding, norms, attention,
  // router, experts, shared_experts, dense_ffn and output each call their own. Activations are
  // float32 host rows, so today's backends (all host ones) hand them over without copies.
  using BackendForRole = std::function<Backend&(WeightGroup group, int64_t layer)>;
  // `defer_experts` > 0: expert deferral (Backend::split_deferred_experts). In every MoE layer but
  // the model's last, each token's `defer_experts` lowest-weighted routed experts run apart, into a
  // buffer of the experts' backend, and their output joins the residual stream after the next
  // layer's feed-forward (the last layer adds all its experts at once, before the final norm).
  // Error(invalid_argument) unless 0 <= defer_experts < the model's experts per token (or 0).
  ForwardPass(const ModelConfig& config, const Weights& weights, BackendForRole backend_for, KvPool& kv,
              int64_t max_batch_tokens, int64_t defer_experts = 0);
  // Every role on one backend.
  ForwardPass(const ModelConfig& config, const Weights& weights, Backend& backend, KvPool& kv,
              int64_t max_batch_tokens, int64_t defer_experts = 0);
  ~ForwardPass();

  // Rows of logits run() writes for this batch: ids.size() per all_logits chunk, else 1.
  static int64_t logits_rows(std::span<const SequenceChunk> batch);

  // Writes logits [logits_rows(batch), vocab], chunk by chunk. Throws Error(invalid_argument) for
  // ids outside the vocabulary, Error(out_of_range) for a batch over max_batch_tokens or a table
  // too small, Error(cancelled) when *cancel is set at a layer boundary.
  void run(std::span<const SequenceChunk> batch, float* logits, const std::atomic<bool>* cancel = nullptr);

  // Whether passes that run wholly on one GPU are recorded and replayed (CUDA graphs; on by
  // default). Off: every kernel is launched one by one (to compare the two, or to profile).
  void set_record_graphs(bool on);
  int64_t replayed_passes() const;  // passes replayed from a recording so far
  int64_t streamed_expert_layers() const;  // MoE layers whose experts were streamed to a GPU so far
  // Passes of at least `tokens` tokens stream routed experts that live in host memory to the GPU
  // that runs the router (Backend::stream_routed_experts); 0 = never (the default).
  // At load, with tokens > 0, the GPUs prepare (Backend::prepare_streamed_experts) the layers they
  // will stream.
  void set_stream_experts_min_tokens(int64_t tokens);
  int64_t stream_experts_min_tokens() const;
  // Bytes of the routed experts that could stream (in host memory, their router on a GPU).
  uint64_t streamable_expert_bytes() const;
  // The GPU expert cache (issue 17, item 4). In each MoE layer whose routed experts live in host
  // memory and whose router runs on a GPU (as for streaming), that GPU holds `experts_per_layer` of
  // them (Backend::cache_experts) and computes their pairs while the experts' backend computes the
  // rest (Backend::split_cached_experts); every pair's expert is counted. Held at first: the lowest
  // numbers; refresh_expert_cache() then holds each layer's most routed. A layer whose GPU declines
  // (experts of mixed types, no room) or with no more experts than that stays as it was. Returns the
  // layers cached; 0 turns nothing on. Set once: Error(invalid_argument) for another size later.
  int64_t set_expert_cache(int64_t experts_per_layer);
  int64_t expert_cache_layers() const;
  // Holds each cached layer's most routed experts (counts since the start, each refresh halving the
  // older ones), copying in those not held; returns how many were copied. Nothing happens until
  // `min_tokens` tokens (at least 1) ran since the last refresh. Between requests: it synchronizes
  // the GPUs and copies weights.
  int64_t refresh_expert_cache(int64_t min_tokens = 1);
  struct ExpertCacheStats {
    int64_t layers = 0, experts_per_layer = 0;
    uint64_t counted_pairs = 0;  // routed (token, expert) pairs in the cached layers so far
    uint64_t held_pairs = 0;     // of them, computed by the GPU's held experts
  };
  ExpertCacheStats expert_cache_stats() const;
  // Passes of up to `tokens` tokens from now on (the constructor's max_batch_tokens until then): the
  // activation buffers are made again at that size and recorded passes dropped. Error(invalid_argument)
  // unless positive.
  void set_max_batch_tokens(int64_t tokens);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem
