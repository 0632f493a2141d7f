#pragma once
// Continuous batching: one thread owns the step loop over an Engine. Each step takes one decode
// token of every running sequence and fills the rest of a token budget with chunks of prompts
// still being prefilled, runs them as one ForwardPass (Engine::run_batch), samples each sequence
// whose chunk reached its end with that sequence's own sampler, and streams the text through its
// callback. Between steps it admits waiting sequences (up to max_running) and retires finished or
// cancelled ones, returning their KV blocks. When the pool runs out of blocks, the most recently
// admitted sequence is preempted: its blocks are freed and it waits at the head of the queue to
// be recomputed (prompt + what it generated so far), so a full pool slows sequences down instead
// of failing them. Greedy output does not depend on what a sequence was batched with.
//
// With the engine's prefix cache (LoadOptions::kv_prefix_cache) a sequence adopts the longest
// cached whole-block prefix of its prompt when admitted, and its full blocks join the cache once its
// prompt has run and when it leaves; cached blocks no sequence holds give way before anyone is
// preempted.
//
// The engine's own scheduler (Engine::scheduler) is the process's one step loop: `tandem serve`
// submits its requests there (set_options gives it the server's limits), and sessions (engine.hpp)
// run their forward passes through it: run_chunk puts a session's chunk into the next step beside
// the scheduler's own sequences and other sessions' chunks, so sessions used from several threads
// share steps instead of taking turns. A session that ran in the last step is waited for a moment (a decode
// loop samples and comes straight back), so concurrent decode loops settle into shared steps.
//
// Thread-safety: submit, cancel and stats may be called from any thread; callbacks run on the
// scheduler's thread and must not call back into it (except cancel).
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tandem/engine/generate.hpp"
#include "tandem/engine/latency_histogram.hpp"
#include "tandem/text/sampler.hpp"

namespace tandem {

class Engine;
class Tokenizer;
struct SequenceChunk;

struct SchedulerOptions {
  int64_t max_running = 4;       // sequences decoding at once (llama-server's --parallel)
  int64_t max_batch_tokens = 0;  // tokens per step; 0 = the engine's LoadOptions::max_batch_tokens
  int64_t max_waiting = 256;     // sequences that may wait when every running slot is taken
};

struct SequenceResult {
  std::vector<int32_t> ids;  // sampled ids, EOS included
  std::string text;          // everything streamed, concatenated
  StopReason stop = StopReason::max_tokens;
  std::string error;  // set when the sequence failed (stop is then cancelled)
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;  // prompt tokens whose KV came from a cache instead of a forward pass
  int64_t preemptions = 0;
  double queue_seconds = 0;        // submit → admitted
  double first_token_seconds = 0;  // submit → first sampled token
  double total_seconds = 0;        // submit → finished
};

struct SequenceParams {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int64_t max_new_tokens = 256;  // < 0: until EOS, a stop string or the context limit
  std::vector<int32_t> eos_ids;
  std::vector<std::string> stop_strings;
  bool skip_special_text = true;
  // Once per sampled id with the text that became final with it, and once with id -1 for the text
  // flushed at the end; false stops the sequence (StopReason::callback).
  TokenCallback on_token;
  // Exactly once, when the sequence leaves the scheduler (finished, cancelled, failed or shut down).
  std::function<void(const SequenceResult&)> on_finish;
};

struct SchedulerStats {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_in_use = 0;  // held by sequences or sessions (not by the prefix cache alone)
  int64_t steps = 0;
  int64_t submitted = 0;
  int64_t finished = 0;       // left the scheduler for any reason
  int64_t cancelled = 0;      // of those, by cancel() or shutdown
  int64_t failed = 0;         // of those, with an error
  int64_t prompt_tokens = 0;  // over all finished and running sequences' prompts
  int64_t cached_prompt_tokens = 0;
  int64_t prefilled_tokens = 0;  // tokens run through prefill chunks (recomputation included)
  int64_t generated_tokens = 0;  // sampled ids
  int64_t preemptions = 0;
  int64_t batched_steps = 0;   // steps whose forward pass ran more than one sequence or session chunk
  int64_t session_chunks = 0;  // chunks run for sessions (run_chunk)
  int64_t kv_blocks_cached = 0;  // blocks the engine's prefix cache holds (some may also be in use)
  int64_t kv_host_tier_blocks = 0;         // blocks in its host tier (PrefixCacheCounts)
  int64_t kv_host_tier_loaded_blocks = 0;  // blocks copied back from the host tier since load
  LatencyHistogram step_seconds;         // one scheduler step (a batched forward pass); count = steps
  LatencyHistogram first_token_seconds;  // a sequence's submit → its first sampled token
  LatencyHistogram inter_token_seconds;  // between a sequence's consecutive sampled tokens
};

class Scheduler {
 public:
  // `tokenizer` may be null (no text; stop strings refused). Throws Error(invalid_argument) for bad
  // options, Error(unsupported) when the engine cannot batch.
  Scheduler(Engine& engine, const Tokenizer* tokenizer, SchedulerOptions options);
  ~Scheduler();  // cancels everything still queued or running (their on_finish runs) and joins
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a sequence and returns its id. Throws Error(invalid_argument) for an empty prompt or ids
  // outside the vocabulary, Error(out_of_range) for a prompt that does not fit the context,
  // Error(out_of_memory) when max_waiting sequences already wait with every slot taken. on_finish
  // is not called then.
  uint64_t submit(SequenceParams params);
  // Asks a queued or running sequence to stop (StopReason::cancelled) at the next step boundary;
  // false when no such sequence is in the scheduler.
  bool cancel(uint64_t id);

  // Runs one chunk of a session (ForwardPass::run's contract for a batch of one: `logits` gets
  // ForwardPass::logits_rows rows) in the next step, beside whatever else runs then, and returns when
  // it ran. Throws what the pass threw, Error(cancelled) when *cancel is set before or during the
  // step or the scheduler shuts down. The chunk's table must hold its slots already. Blocks the
  // caller; never call it from a callback.
  void run_chunk(const SequenceChunk& chunk, float* logits, const std::atomic<bool>* cancel);

  // Changes the limits (the server's --parallel, --queue and --max-batch-tokens on the engine's
  // scheduler); they apply from the next step. Sequences already running past a lower max_running
  // finish. Throws Error(invalid_argument) as the constructor does.
  void set_options(SchedulerOptions options);
  SchedulerOptions options() const;

  SchedulerStats stats() const;
  int64_t max_context_tokens() const { return max_context_tokens_; }

 private:
  struct Sequence;
  struct Planned;
  struct SessionChunk;
  SchedulerOptions checked_options(SchedulerOptions options) const;
  void loop();
  std::vector<SessionChunk*> take_session_chunks();
  void finish_session_chunks(std::vector<SessionChunk*>& chunks, std::exception_ptr error);
  bool reserve_with_room(Sequence& seq, int64_t tokens);
  void adopt_cached_prefix(Sequence& seq);
  void step();
  void admit_and_cancel();
  bool plan_batch(std::vector<Planned>& plan, int64_t budget);
  void preempt(Sequence& victim);
  void after_forward(std::vector<Planned>& plan);
  void sample_next(Sequence& seq, std::span<const float> logits);
  void finish(Sequence& seq, StopReason reason, std::string error = {});
  void retire_finished();
  int64_t blocks_for(int64_t tokens) const;

  Engine& engine_;
  const Tokenizer* tokenizer_;
  int64_t vocab_ = 0;
  int64_t max_context_tokens_ = 0;
  std::vector<float> logits_;  // [rows of a step, vocab], grown when a step needs more

  std::vector<std::unique_ptr<Sequence>> running_;  // loop thread only, in admission order
  // Loop thread only: the sessions of the last step (table, calling thread).
  std::vector<std::pair<const void*, std::thread::id>> last_session_tables_;
  double last_step_seconds_ = 0;                     // loop thread only

  mutable std::mutex mutex_;  // guards everything below
  SchedulerOptions options_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::unordered_set<uint64_t> cancel_requests_;
  std::unordered_set<uint64_t> live_ids_;
  std::deque<SessionChunk*> session_chunks_;  // waiting for a step, oldest first
  std::condition_variable session_chunk_done_;
  uint64_t next_id_ = 1;
  bool stopping_ = false;
  SchedulerStats stats_;

  std::atomic<bool> stop_forward_{false};
  std::thread thread_;
};

}  // namespace tandem
