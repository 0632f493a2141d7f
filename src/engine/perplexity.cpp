#include "tandem/engine/perplexity.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "tandem/engine/engine.hpp"
#include "tandem/error.hpp"

namespace tandem {

double token_nll(std::span<const float> logits_row, int32_t target) {
  const float max_logit = *std::max_element(logits_row.begin(), logits_row.end());
  double sum = 0;
  for (float v : logits_row) sum += std::exp(static_cast<double>(v) - max_logit);
  return std::log(sum) + max_logit - static_cast<double>(logits_row[static_cast<size_t>(target)]);
}

namespace {
// log-softmax of a row into `out`, in double.
void log_softmax(std::span<const float> row, std::vector<double>& out) {
  const float max_logit = *std::max_element(row.begin(), row.end());
  double sum = 0;
  for (float v : row) sum += std::exp(static_cast<double>(v) - max_logit);
  const double log_sum = std::log(sum) + max_logit;
  out.resize(row.size());
  for (size_t i = 0; i < row.size(); ++i) out[i] = static_cast<double>(row[i]) - log_sum;
}
}  // namespace

double logits_kl_divergence(std::span<const float> p_logits, std::span<const float> q_logits) {
  std::vector<double> lp, lq;
  log_softmax(p_logits, lp);
  log_softmax(q_logits, lq);
  double kl = 0;
  for (size_t i = 0; i < lp.size(); ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
  return std::max(0.0, kl);
}

PerplexityResult evaluate_perplexity(Engine& engine, std::span<const int32_t> tokens,
                                     const PerplexityOptions& options, const PerplexityProgress& progress) {
  const int64_t ctx = options.ctx;
  if (ctx < 4 || ctx % 2 != 0)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("perplexity: the window (--ctx) must be an even number of at least 4 tokens, not {}", ctx));
  const int64_t limit = engine.options().max_context_tokens;
  if (ctx > limit)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("perplexity: a window of {} tokens exceeds the session's context of {} tokens", ctx, limit));
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n < ctx)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("perplexity: the text has {} tokens, fewer than one window of {} (--ctx)", n, ctx));
  const int64_t vocab = engine.config().vocab_size;
  if (options.exact) {
    if (options.exact->config().vocab_size != vocab)
      throw Error(ErrorKind::invalid_argument, "perplexity: the exact engine has another vocabulary");
    if (ctx > options.exact->options().max_context_tokens)
      throw Error(ErrorKind::invalid_argument, "perplexity: the window exceeds the exact engine's context");
  }
  for (int64_t i = 0; i < n; ++i)
    if (tokens[static_cast<size_t>(i)] < 0 || tokens[static_cast<size_t>(i)] >= vocab)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("perplexity: token id {} at index {} is outside the vocabulary [0, {})",
                              tokens[static_cast<size_t>(i)], i, vocab));

  int64_t windows = n / ctx;
  if (options.max_windows >= 0) windows = std::min(windows, options.max_windows);

  PerplexityResult result;
  result.tokens = n;
  double nll_square_sum = 0, exact_nll_sum = 0, kl_sum = 0;
  const auto start = std::chrono::steady_clock::now();
  const auto session = engine.new_session();
  const auto exact_session = options.exact ? options.exact->new_session() : nullptr;
  for (int64_t w = 0; w < windows; ++w) {
    if (options.cancel && options.cancel->load())
      throw Error(ErrorKind::cancelled, "perplexity: cancelled");
    const auto window = tokens.subspan(static_cast<size_t>(w * ctx), static_cast<size_t>(ctx));
    session->reset();
    session->prefill(window, /*all_logits=*/true);
    const auto logits = session->all_logits();
    if (exact_session) {
      exact_session->reset();
      exact_session->prefill(window, /*all_logits=*/true);
    }
    for (int64_t j = ctx / 2; j < ctx - 1; ++j) {
      const auto row = logits.subspan(static_cast<size_t>(j * vocab), static_cast<size_t>(vocab));
      const double nll = token_nll(row, window[static_cast<size_t>(j + 1)]);
      result.nll_sum += nll;
      nll_square_sum += nll * nll;
      ++result.scored;
      if (exact_session) {
        const auto exact_row =
            exact_session->all_logits().subspan(static_cast<size_t>(j * vocab), static_cast<size_t>(vocab));
        exact_nll_sum += token_nll(exact_row, window[static_cast<size_t>(j + 1)]);
        kl_sum += logits_kl_divergence(exact_row, row);
      }
    }
    if (exact_session) {
      result.ppl_exact = std::exp(exact_nll_sum / static_cast<double>(result.scored));
      result.kl_mean = kl_sum / static_cast<double>(result.scored);
    }
    result.windows = w + 1;
    const double mean = result.nll_sum / static_cast<double>(result.scored);
    result.ppl = std::exp(mean);
    const double variance =
        std::max(0.0, nll_square_sum / static_cast<double>(result.scored) - mean * mean);
    result.ppl_error = result.scored > 1 ? result.ppl * std::sqrt(variance / static_cast<double>(result.scored - 1)) : 0;
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (progress) progress(result);
  }
  return result;
}

}  // namespace tandem
