#include "tandem/engine/perplexity.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "tandem/engine/engine.hpp"
#include "tandem/error.hpp"

namespace tandem {

double token_nll(std::span<const float> logits_row, int32_t target) {
  const float max_logit = *std::max_element(logits_row.begin(), logits_row.end());
  double sum = 0;
  for (float v : logits_row) sum += std::exp(static_cast<double>(v) - max_logit);
  return std::log(sum) + max_logit - static_cast<double>(logits_row[static_cast<size_t>(target)]);
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
  for (int64_t i = 0; i < n; ++i)
    if (tokens[static_cast<size_t>(i)] < 0 || tokens[static_cast<size_t>(i)] >= vocab)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("perplexity: token id {} at index {} is outside the vocabulary [0, {})",
                              tokens[static_cast<size_t>(i)], i, vocab));

  int64_t windows = n / ctx;
  if (options.max_windows >= 0) windows = std::min(windows, options.max_windows);

  PerplexityResult result;
  result.tokens = n;
  double nll_square_sum = 0;
  const auto start = std::chrono::steady_clock::now();
  const auto session = engine.new_session();
  for (int64_t w = 0; w < windows; ++w) {
    if (options.cancel && options.cancel->load())
      throw Error(ErrorKind::cancelled, "perplexity: cancelled");
    const auto window = tokens.subspan(static_cast<size_t>(w * ctx), static_cast<size_t>(ctx));
    session->reset();
    session->prefill(window, /*all_logits=*/true);
    const auto logits = session->all_logits();
    for (int64_t j = ctx / 2; j < ctx - 1; ++j) {
      const double nll = token_nll(logits.subspan(static_cast<size_t>(j * vocab), static_cast<size_t>(vocab)),
                                   window[static_cast<size_t>(j + 1)]);
      result.nll_sum += nll;
      nll_square_sum += nll * nll;
      ++result.scored;
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
