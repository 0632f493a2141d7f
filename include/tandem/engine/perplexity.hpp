#pragma once
// Perplexity of a token stream, scored the way llama.cpp's perplexity tool scores it (and the way
// ../shared/fixtures/trained/reference.json was computed): the stream is cut into non-overlapping
// windows of `ctx` tokens (a tail shorter than ctx is dropped); each window is run from an empty
// cache and scores its second half: the logits at positions ctx/2 … ctx-2 predict the tokens at
// ctx/2+1 … ctx-1, so each window contributes ctx/2 - 1 negative log-likelihoods.
// PPL = exp(mean NLL), accumulated in double.
#include <atomic>
#include <cstdint>
#include <functional>
#include <span>

namespace tandem {

class Engine;

struct PerplexityOptions {
  int64_t ctx = 512;         // window length in tokens: even, >= 4
  int64_t max_windows = -1;  // < 0: every full window of the stream
  // When set, every window also runs on this engine (the exact cache: f32, full) and the result
  // reports its perplexity and the mean KL divergence KL(exact ‖ this engine) of the next-token
  // distributions at the scored positions.
  Engine* exact = nullptr;
  const std::atomic<bool>* cancel = nullptr;  // checked between windows; stops with Error(cancelled)
};

struct PerplexityResult {
  double ppl = 0;          // exp(mean NLL)
  double ppl_error = 0;    // one standard error of ppl (delta method over the per-token NLLs)
  int64_t windows = 0;
  int64_t tokens = 0;      // tokens in the stream
  int64_t scored = 0;      // NLL terms
  double nll_sum = 0;
  double seconds = 0;      // wall time of the forward passes
  double ppl_exact = 0;    // with PerplexityOptions::exact: its perplexity
  double kl_mean = 0;      // with PerplexityOptions::exact: mean KL(exact ‖ this) in nats
};

// Called after each window with the estimate so far (for a running display).
using PerplexityProgress = std::function<void(const PerplexityResult& so_far)>;

// Throws Error(invalid_argument) when ctx is odd or < 4, when ctx exceeds the engine's
// max_context_tokens, when the stream is shorter than one window, or when an id is outside the
// vocabulary.
PerplexityResult evaluate_perplexity(Engine& engine, std::span<const int32_t> tokens,
                                     const PerplexityOptions& options = {},
                                     const PerplexityProgress& progress = {});

// The NLL of `target` under one row of logits: logsumexp(row) - row[target], in double.
double token_nll(std::span<const float> logits_row, int32_t target);

// KL(p ‖ q) in nats of the softmax distributions of two logits rows, in double.
double logits_kl_divergence(std::span<const float> p_logits, std::span<const float> q_logits);

}  // namespace tandem
