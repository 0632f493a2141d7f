#include "tandem/engine/scheduler.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <iterator>

#include "tandem/engine/engine.hpp"
#include "tandem/engine/forward.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/text/token_text_stream.hpp"

namespace tandem {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
}  // namespace

struct Scheduler::Sequence {
  Sequence(uint64_t id_, SequenceParams p, const Tokenizer* tokenizer)
      : id(id_),
        params(std::move(p)),
        sampler(params.sampling),
        text(tokenizer, params.skip_special_text, params.stop_strings),
        tokens(params.prompt),
        submitted(Clock::now()) {
    result.prompt_tokens = static_cast<int64_t>(params.prompt.size());
  }

  uint64_t id;
  SequenceParams params;
  Sampler sampler;
  TokenTextStream text;
  BlockTable table;
  std::vector<int32_t> tokens;  // prompt + sampled ids; the KV holds the first `cached`
  int64_t cached = 0;
  SequenceResult result;
  Clock::time_point submitted;
  Clock::time_point last_token;  // when the latest id was sampled
  bool admitted_once = false;
  bool done = false;
  int64_t pending() const { return static_cast<int64_t>(tokens.size()) - cached; }
};

struct Scheduler::Planned {
  Sequence* seq;
  int64_t tokens;
};

struct Scheduler::SessionChunk {
  const SequenceChunk* chunk;
  float* logits;
  const std::atomic<bool>* cancel;
  std::thread::id caller = std::this_thread::get_id();
  bool done = false;  // under mutex_
  std::exception_ptr error;
  bool cancelled() const { return cancel && cancel->load(); }
};

// The options with 0 resolved, checked against the engine.
SchedulerOptions Scheduler::checked_options(SchedulerOptions options) const {
  const LoadOptions& load = engine_.options();
  if (options.max_batch_tokens == 0) options.max_batch_tokens = load.max_batch_tokens;
  if (options.max_running <= 0 || options.max_running > 4096)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("scheduler: max_running must be within [1, 4096], not {}", options.max_running));
  if (options.max_batch_tokens <= 0 || options.max_batch_tokens > load.max_batch_tokens)
    throw Error(
        ErrorKind::invalid_argument,
        fmt::format(
            "scheduler: max_batch_tokens must be within [1, {}] (the engine's max_batch_tokens), not {}",
            load.max_batch_tokens, options.max_batch_tokens));
  if (options.max_waiting < 0)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("scheduler: max_waiting must not be negative, not {}", options.max_waiting));
  return options;
}

Scheduler::Scheduler(Engine& engine, const Tokenizer* tokenizer, SchedulerOptions options)
    : engine_(engine), tokenizer_(tokenizer), options_(checked_options(options)) {
  const LoadOptions& load = engine.options();
  (void)engine_.kv_pool();  // Error(unsupported) now rather than at the first step
  vocab_ = engine.config().vocab_size;
  max_context_tokens_ = load.max_context_tokens;
  logits_.assign(static_cast<size_t>(std::min<int64_t>(options_.max_running, load.max_batch_tokens) * vocab_), 0.0f);
  stats_.kv_blocks_total = engine_.kv_pool().spec().blocks;
  thread_ = std::thread([this] { loop(); });
}

void Scheduler::set_options(SchedulerOptions options) {
  options = checked_options(options);
  std::lock_guard lock(mutex_);
  options_ = options;
  wake_.notify_one();  // more running slots may admit someone now
}

SchedulerOptions Scheduler::options() const {
  std::lock_guard lock(mutex_);
  return options_;
}

Scheduler::~Scheduler() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  stop_forward_.store(true);
  wake_.notify_all();
  thread_.join();
}

int64_t Scheduler::blocks_for(int64_t tokens) const {
  const int64_t b = engine_.kv_pool().spec().block_tokens;
  return (tokens + b - 1) / b;
}

uint64_t Scheduler::submit(SequenceParams params) {
  if (params.prompt.empty()) throw Error(ErrorKind::invalid_argument, "the prompt has no tokens");
  const auto n = static_cast<int64_t>(params.prompt.size());
  if (n > max_context_tokens_)
    throw Error(ErrorKind::out_of_range,
                fmt::format("the prompt has {} tokens; the context holds {}", n, max_context_tokens_));
  for (size_t i = 0; i < params.prompt.size(); ++i)
    if (params.prompt[i] < 0 || params.prompt[i] >= vocab_)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("token id {} at index {} is outside the vocabulary [0, {})", params.prompt[i],
                              i, vocab_));
  std::lock_guard lock(mutex_);
  if (stopping_) throw Error(ErrorKind::cancelled, "the scheduler is shutting down");
  // Free running slots take waiting sequences at the next step, so they count as room too.
  const int64_t free_slots = std::max<int64_t>(0, options_.max_running - stats_.running);
  if (static_cast<int64_t>(waiting_.size()) >= options_.max_waiting + free_slots)
    throw Error(ErrorKind::out_of_memory,
                fmt::format("{} requests are already waiting (the queue's limit)", waiting_.size()));
  const uint64_t id = next_id_++;
  auto seq = std::make_unique<Sequence>(id, std::move(params), tokenizer_);  // validates sampling and stops
  stats_.prompt_tokens += seq->result.prompt_tokens;
  ++stats_.submitted;
  live_ids_.insert(id);
  waiting_.push_back(std::move(seq));
  wake_.notify_one();
  return id;
}

bool Scheduler::cancel(uint64_t id) {
  std::lock_guard lock(mutex_);
  if (!live_ids_.count(id)) return false;
  cancel_requests_.insert(id);
  wake_.notify_one();
  return true;
}

void Scheduler::run_chunk(const SequenceChunk& chunk, float* logits, const std::atomic<bool>* cancel) {
  SessionChunk request{&chunk, logits, cancel};
  std::unique_lock lock(mutex_);
  if (stopping_) throw Error(ErrorKind::cancelled, "the scheduler is shutting down");
  session_chunks_.push_back(&request);
  wake_.notify_one();
  session_chunk_done_.wait(lock, [&] { return request.done; });
  if (request.error) std::rethrow_exception(request.error);
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard lock(mutex_);
  SchedulerStats s = stats_;
  s.waiting = static_cast<int64_t>(waiting_.size());
  const PrefixCacheCounts cache = engine_.prefix_cache_counts();
  s.kv_blocks_cached = cache.blocks;
  s.kv_host_tier_blocks = cache.host_tier_blocks;
  s.kv_host_tier_loaded_blocks = cache.host_tier_loaded_blocks;
  s.kv_blocks_in_use = s.kv_blocks_total - engine_.kv_pool().free_blocks() - cache.blocks_held_only_by_cache;
  return s;
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] {
        return stopping_ || !waiting_.empty() || !running_.empty() || !session_chunks_.empty();
      });
      if (stopping_) break;
    }
    try {
      step();
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::cancelled && stop_forward_.load()) continue;  // shutting down
      for (auto& seq : running_)
        if (!seq->done) finish(*seq, StopReason::cancelled, e.what());
      retire_finished();
    } catch (const std::exception& e) {
      // A failed forward pass (or a bug) fails the sequences it touched, never the server.
      for (auto& seq : running_)
        if (!seq->done) finish(*seq, StopReason::cancelled, e.what());
      retire_finished();
    }
  }
  // Shutting down: everyone still here is cancelled.
  for (auto& seq : running_)
    if (!seq->done) finish(*seq, StopReason::cancelled);
  retire_finished();
  std::deque<std::unique_ptr<Sequence>> left;
  {
    std::lock_guard lock(mutex_);
    left.swap(waiting_);
  }
  for (auto& seq : left) finish(*seq, StopReason::cancelled);
  std::vector<SessionChunk*> chunks;
  {
    std::lock_guard lock(mutex_);
    chunks.assign(session_chunks_.begin(), session_chunks_.end());
    session_chunks_.clear();
  }
  finish_session_chunks(chunks,
                        std::make_exception_ptr(Error(ErrorKind::cancelled, "the scheduler is shutting down")));
}

// The sessions' chunks for this step, oldest first, as many as the forward pass holds.
std::vector<Scheduler::SessionChunk*> Scheduler::take_session_chunks() {
  std::vector<SessionChunk*> taken, cancelled;
  {
    std::unique_lock lock(mutex_);
    if (!last_session_tables_.empty()) {
      // A decode loop samples and comes straight back: waiting a fraction of a step for the
      // sessions of the last step lets them share this one instead of alternating.
      // A session whose thread waits on another session's chunk cannot come back meanwhile.
      const auto all_back = [&] {
        for (const auto& last : last_session_tables_)  // not a structured binding: clang 14 cannot capture one
          if (std::none_of(session_chunks_.begin(), session_chunks_.end(), [&](const SessionChunk* c) {
                return c->chunk->table == last.first || c->caller == last.second;
              }))
            return false;
        return true;
      };
      const double wait_seconds = std::clamp(last_step_seconds_ / 2, 0.0002, 0.005);
      wake_.wait_for(lock, std::chrono::duration<double>(wait_seconds), [&] { return stopping_ || all_back(); });
    }
    const int64_t capacity = engine_.options().max_batch_tokens;
    int64_t used = 0;
    for (auto it = session_chunks_.begin(); it != session_chunks_.end();) {
      SessionChunk* c = *it;
      const auto n = static_cast<int64_t>(c->chunk->ids.size());
      if (c->cancelled()) {
        cancelled.push_back(c);
      } else if (used + n <= capacity) {
        taken.push_back(c);
        used += n;
      } else {
        ++it;
        continue;
      }
      it = session_chunks_.erase(it);
    }
  }
  finish_session_chunks(cancelled, std::make_exception_ptr(Error(ErrorKind::cancelled, "cancelled")));
  last_session_tables_.clear();
  for (const SessionChunk* c : taken) last_session_tables_.emplace_back(c->chunk->table, c->caller);
  return taken;
}

void Scheduler::finish_session_chunks(std::vector<SessionChunk*>& chunks, std::exception_ptr error) {
  if (chunks.empty()) return;
  {
    std::lock_guard lock(mutex_);
    for (SessionChunk* c : chunks) {
      c->error = error;
      c->done = true;
    }
  }
  session_chunk_done_.notify_all();
  chunks.clear();
}

void Scheduler::admit_and_cancel() {
  std::vector<std::unique_ptr<Sequence>> cancelled_waiting;
  std::vector<Sequence*> cancelled_running, admitted;
  bool was_idle = false;
  {
    std::lock_guard lock(mutex_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if (cancel_requests_.count((*it)->id)) {
        cancelled_waiting.push_back(std::move(*it));
        it = waiting_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto& seq : running_)
      if (cancel_requests_.count(seq->id)) cancelled_running.push_back(seq.get());
    KvPool& pool = engine_.kv_pool();
    was_idle = running_.empty() && session_chunks_.empty();
    while (!waiting_.empty() && static_cast<int64_t>(running_.size()) < options_.max_running) {
      Sequence& next = *waiting_.front();
      // Admit only what can start: room for its whole prompt (or, alone, whatever there is).
      const int64_t needed = blocks_for(static_cast<int64_t>(next.tokens.size()) + 1);
      if (!running_.empty() && pool.free_blocks() < needed) engine_.make_kv_room(needed);
      if (!running_.empty() && pool.free_blocks() < needed) break;
      if (!next.admitted_once) {
        next.admitted_once = true;
        next.result.queue_seconds = seconds_between(next.submitted, Clock::now());
      }
      admitted.push_back(waiting_.front().get());
      running_.push_back(std::move(waiting_.front()));
      waiting_.pop_front();
    }
    stats_.running = static_cast<int64_t>(running_.size());
  }
  // Requests arriving at an idle engine: the GPU expert cache follows what earlier ones routed to.
  if (was_idle && !admitted.empty()) engine_.refresh_expert_cache();
  for (Sequence* seq : admitted) adopt_cached_prefix(*seq);
  for (auto& seq : cancelled_waiting) finish(*seq, StopReason::cancelled);
  for (Sequence* seq : cancelled_running) finish(*seq, StopReason::cancelled);
}

// A sequence starting from an empty cache (new, or preempted) takes what the prefix cache holds of
// its tokens; the first admission's share is what its result reports.
void Scheduler::adopt_cached_prefix(Sequence& seq) {
  if (seq.cached != 0 || !seq.table.blocks().empty()) return;
  const int64_t adopted = engine_.adopt_cached_prefix(seq.tokens, seq.table);
  seq.cached = adopted;
  if (adopted == 0 || seq.result.preemptions > 0) return;
  seq.result.cached_prompt_tokens = adopted;
  std::lock_guard lock(mutex_);
  stats_.cached_prompt_tokens += adopted;
}

// Reserves the blocks for `tokens` more tokens, freeing cached blocks no one holds when the pool
// is short. False when even that leaves too few.
bool Scheduler::reserve_with_room(Sequence& seq, int64_t tokens) {
  KvPool& pool = engine_.kv_pool();
  for (int attempt = 0; attempt < 2; ++attempt) {
    try {
      seq.table.reserve(pool, seq.cached + tokens);
      return true;
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::out_of_memory) throw;
    }
    if (attempt == 0)
      engine_.make_kv_room(blocks_for(seq.cached + tokens) - static_cast<int64_t>(seq.table.blocks().size()) + 1);
  }
  return false;
}

void Scheduler::preempt(Sequence& victim) {
  // With the prefix cache its full blocks stay cached (and written through to the SSD tier): if
  // no one needs them before it comes back, it adopts them instead of recomputing them.
  engine_.cache_prefix(std::span<const int32_t>(victim.tokens).first(static_cast<size_t>(victim.cached)),
                       victim.table);
  victim.table.release(engine_.kv_pool());
  victim.cached = 0;
  ++victim.result.preemptions;
  auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& s) { return s.get() == &victim; });
  std::lock_guard lock(mutex_);
  ++stats_.preemptions;
  waiting_.push_front(std::move(*it));
  running_.erase(it);
  stats_.running = static_cast<int64_t>(running_.size());
}

// Decode tokens first (one per sequence that has sampled), then prompt chunks in admission order
// with what is left of the budget; blocks are reserved for every planned token, preempting the
// most recently admitted sequence when the pool is empty. False when nothing can run.
bool Scheduler::plan_batch(std::vector<Planned>& plan, int64_t budget) {
  plan.clear();
  for (auto& seq : running_)
    if (!seq->done && seq->pending() == 1 && budget > 0) {
      plan.push_back({seq.get(), 1});
      --budget;
    }
  for (auto& seq : running_)
    if (!seq->done && seq->pending() > 1 && budget > 0) {
      const int64_t n = std::min(seq->pending(), budget);
      plan.push_back({seq.get(), n});
      budget -= n;
    }
  for (size_t i = 0; i < plan.size();) {
    Sequence& seq = *plan[i].seq;
    if (reserve_with_room(seq, plan[i].tokens)) {
      ++i;
      continue;
    }
    if (running_.size() == 1) {
      finish(seq, StopReason::cancelled, "the KV pool cannot hold this sequence");
      plan.erase(plan.begin() + static_cast<std::ptrdiff_t>(i));
      continue;
    }
    Sequence* victim = running_.back().get();
    const auto at = std::find_if(plan.begin(), plan.end(), [&](const Planned& p) { return p.seq == victim; });
    if (at != plan.end()) {
      const auto index = static_cast<size_t>(at - plan.begin());
      plan.erase(at);
      if (index < i) --i;
    }
    preempt(*victim);  // i now points at the same sequence, or (when it was the victim) the next
  }
  return !plan.empty();
}

void Scheduler::step() {
  admit_and_cancel();
  retire_finished();
  std::vector<SessionChunk*> sessions = take_session_chunks();
  int64_t session_tokens = 0;
  for (const SessionChunk* c : sessions) session_tokens += static_cast<int64_t>(c->chunk->ids.size());
  // The sessions' chunks come first: they already hold their blocks and a thread waits on each.
  const int64_t budget =
      std::min(options().max_batch_tokens, engine_.options().max_batch_tokens - session_tokens);
  std::vector<Planned> plan;
  try {
    plan_batch(plan, budget);
  } catch (...) {
    finish_session_chunks(sessions, std::current_exception());
    throw;
  }
  if (plan.empty() && sessions.empty()) {
    retire_finished();
    return;
  }
  std::vector<SequenceChunk> chunks;
  chunks.reserve(plan.size() + sessions.size());
  int64_t prefill_tokens = 0;
  try {
    for (const Planned& p : plan) {
      Sequence& s = *p.seq;
      s.table.make_writable(engine_.kv_pool(), s.cached, s.cached + p.tokens);
      chunks.push_back({std::span<const int32_t>(s.tokens).subspan(static_cast<size_t>(s.cached),
                                                                   static_cast<size_t>(p.tokens)),
                        s.cached, &s.table, false});
      if (p.tokens > 1 || s.cached < static_cast<int64_t>(s.params.prompt.size())) prefill_tokens += p.tokens;
    }
  } catch (...) {
    finish_session_chunks(sessions, std::current_exception());
    throw;
  }
  for (const SessionChunk* c : sessions) chunks.push_back(*c->chunk);
  const auto rows = static_cast<size_t>(ForwardPass::logits_rows(chunks));
  if (logits_.size() < rows * static_cast<size_t>(vocab_)) logits_.resize(rows * static_cast<size_t>(vocab_));
  // A session alone in its step can be stopped inside the pass; beside others, at its end.
  const std::atomic<bool>* cancel = &stop_forward_;
  if (plan.empty() && sessions.size() == 1 && sessions[0]->cancel) cancel = sessions[0]->cancel;
  const auto start = Clock::now();
  try {
    engine_.run_batch(chunks, logits_.data(), cancel);
  } catch (...) {
    finish_session_chunks(sessions, std::current_exception());
    if (plan.empty()) return;
    throw;  // the loop fails the sequences of this step
  }
  const double seconds = seconds_between(start, Clock::now());
  last_step_seconds_ = seconds;
  {
    std::lock_guard lock(mutex_);
    ++stats_.steps;
    if (chunks.size() > 1) ++stats_.batched_steps;
    stats_.session_chunks += static_cast<int64_t>(sessions.size());
    stats_.prefilled_tokens += prefill_tokens;
    stats_.step_seconds.add(seconds);
  }
  // The sessions' rows follow the sequences' one row each.
  std::vector<SessionChunk*> cancelled;
  {
    size_t row = plan.size();
    std::vector<SessionChunk*> ran;
    for (SessionChunk* c : sessions) {
      const auto n = static_cast<size_t>(ForwardPass::logits_rows({c->chunk, 1}));
      if (c->cancelled())
        cancelled.push_back(c);
      else {
        std::copy_n(logits_.data() + row * static_cast<size_t>(vocab_), n * static_cast<size_t>(vocab_),
                    c->logits);
        ran.push_back(c);
      }
      row += n;
    }
    finish_session_chunks(ran, nullptr);
  }
  finish_session_chunks(cancelled, std::make_exception_ptr(Error(ErrorKind::cancelled, "cancelled")));
  after_forward(plan);
  retire_finished();
}

void Scheduler::after_forward(std::vector<Planned>& plan) {
  for (size_t i = 0; i < plan.size(); ++i) {
    Sequence& seq = *plan[i].seq;
    seq.cached += plan[i].tokens;
    if (seq.pending() != 0 || seq.done) continue;  // a prompt chunk short of the end: no token yet
    // A prompt just finished: sequences sharing its start (a system prompt) may adopt it now.
    if (seq.result.ids.empty())
      engine_.cache_prefix(std::span<const int32_t>(seq.tokens).first(static_cast<size_t>(seq.cached)),
                           seq.table);
    sample_next(seq, std::span<const float>(logits_).subspan(i * static_cast<size_t>(vocab_),
                                                             static_cast<size_t>(vocab_)));
  }
}

void Scheduler::sample_next(Sequence& seq, std::span<const float> logits) {
  const int32_t id = seq.sampler.sample(logits, seq.tokens);
  seq.tokens.push_back(id);
  seq.result.ids.push_back(id);
  const auto now = Clock::now();
  if (seq.result.ids.size() == 1) seq.result.first_token_seconds = seconds_between(seq.submitted, now);
  {
    std::lock_guard lock(mutex_);
    ++stats_.generated_tokens;
    if (seq.result.ids.size() == 1)
      stats_.first_token_seconds.add(seq.result.first_token_seconds);
    else
      stats_.inter_token_seconds.add(seconds_between(seq.last_token, now));
  }
  seq.last_token = now;
  const auto& eos = seq.params.eos_ids;
  if (std::find(eos.begin(), eos.end(), id) != eos.end()) return finish(seq, StopReason::eos);
  bool stopped = false;
  std::string text = seq.text.push(id, stopped);
  seq.result.text += text;
  bool keep_going = true;
  if (seq.params.on_token) {
    try {
      keep_going = seq.params.on_token(id, text);
    } catch (...) {
      keep_going = false;  // a callback's failure stops its own sequence only
    }
  }
  if (stopped) return finish(seq, StopReason::stop_string);
  if (!keep_going) return finish(seq, StopReason::callback);
  const int64_t generated = static_cast<int64_t>(seq.result.ids.size());
  if (seq.params.max_new_tokens >= 0 && generated >= seq.params.max_new_tokens)
    return finish(seq, StopReason::max_tokens);
  // The new id must fit the context to be run next step.
  if (static_cast<int64_t>(seq.tokens.size()) > max_context_tokens_)
    return finish(seq, StopReason::context_full);
}

void Scheduler::finish(Sequence& seq, StopReason reason, std::string error) {
  if (seq.done) return;
  seq.done = true;
  seq.result.stop = reason;
  seq.result.error = std::move(error);
  if (reason != StopReason::stop_string && seq.result.error.empty()) {
    bool stopped = false;
    std::string rest = seq.text.flush(stopped);
    if (stopped) seq.result.stop = StopReason::stop_string;
    if (!rest.empty()) {
      seq.result.text += rest;
      if (seq.params.on_token) try {
          seq.params.on_token(-1, rest);
        } catch (...) {
        }
    }
  }
  // What it computed stays for later sequences with the same start.
  engine_.cache_prefix(std::span<const int32_t>(seq.tokens).first(static_cast<size_t>(seq.cached)), seq.table);
  seq.table.release(engine_.kv_pool());
  seq.result.total_seconds = std::max(seconds_between(seq.submitted, Clock::now()), 1e-9);
  {
    std::lock_guard lock(mutex_);
    ++stats_.finished;
    // Before on_finish answers the caller: a finished sequence no longer counts as running, though
    // it leaves running_ only at retire_finished (the stats a caller reads once answered agree).
    stats_.running = std::count_if(running_.begin(), running_.end(), [](const auto& s) { return !s->done; });
    live_ids_.erase(seq.id);
    cancel_requests_.erase(seq.id);
    if (reason == StopReason::cancelled) ++stats_.cancelled;
    if (!seq.result.error.empty()) ++stats_.failed;
  }
  if (seq.params.on_finish) {
    try {
      seq.params.on_finish(seq.result);
    } catch (...) {
      // A callback's failure is its own; the scheduler goes on.
    }
  }
}

void Scheduler::retire_finished() {
  std::erase_if(running_, [](const auto& seq) { return seq->done; });
  std::lock_guard lock(mutex_);
  stats_.running = static_cast<int64_t>(running_.size());
}

}  // namespace tandem
