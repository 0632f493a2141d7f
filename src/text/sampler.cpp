#include "tandem/text/sampler.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "tandem/error.hpp"

namespace tandem {

namespace {

[[noreturn]] void bad_param(const char* name, double value, const char* expected) {
  throw Error(ErrorKind::invalid_argument,
              fmt::format("sampling parameter {} = {} is out of range (expected {})", name, value, expected));
}

// The first maximum of `row` (the lowest id among ties), NaN counting as -inf; 0 when nothing is
// above -inf. Sixteen running maxima instead of one: a single running maximum makes each step wait
// on the last (~6 ns per entry, a millisecond per 152k-entry vocabulary, per sequence per step).
int32_t first_argmax(std::span<const float> row) {
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  constexpr size_t kLanes = 16;
  float lane[kLanes];
  std::fill(lane, lane + kLanes, neg_inf);
  const size_t n = row.size();
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (size_t l = 0; l < kLanes; ++l) lane[l] = row[i + l] > lane[l] ? row[i + l] : lane[l];  // NaN: false
  float best = neg_inf;
  for (float m : lane) best = m > best ? m : best;
  for (; i < n; ++i) best = row[i] > best ? row[i] : best;
  if (best == neg_inf) return 0;
  for (size_t j = 0; j < n; ++j)
    if (row[j] == best) return static_cast<int32_t>(j);
  return 0;
}

}  // namespace

void validate(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0) bad_param("temperature", p.temperature, ">= 0");
  if (p.top_k < 0) bad_param("top_k", p.top_k, ">= 0, 0 = off");
  if (!(p.top_p > 0 && p.top_p <= 1)) bad_param("top_p", p.top_p, "in (0, 1]");
  if (!(p.min_p >= 0 && p.min_p <= 1)) bad_param("min_p", p.min_p, "in [0, 1]");
  if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0)
    bad_param("repetition_penalty", p.repetition_penalty, "> 0, 1 = off");
  if (!std::isfinite(p.frequency_penalty)) bad_param("frequency_penalty", p.frequency_penalty, "finite");
  if (!std::isfinite(p.presence_penalty)) bad_param("presence_penalty", p.presence_penalty, "finite");
  if (p.penalty_last_n < -1) bad_param("penalty_last_n", p.penalty_last_n, ">= -1, -1 = all");
}

Sampler::Sampler(SamplingParams params) : params_(params), rng_(params.seed) { validate(params_); }

void Sampler::reseed(uint64_t seed) {
  params_.seed = seed;
  rng_.seed(seed);
}

double Sampler::uniform01() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

bool Sampler::has_penalties() const {
  return params_.penalty_last_n != 0 &&
         (params_.repetition_penalty != 1.0f || params_.frequency_penalty != 0.0f ||
          params_.presence_penalty != 0.0f);
}

void Sampler::apply_penalties(std::span<const int32_t> history) {
  size_t window = history.size();
  if (params_.penalty_last_n >= 0) window = std::min(window, static_cast<size_t>(params_.penalty_last_n));
  const auto recent = history.subspan(history.size() - window);
  const auto vocab = static_cast<int64_t>(scratch_.size());
  for (int32_t id : recent)
    if (id >= 0 && id < vocab) ++counts_[id];
  // Each distinct id is penalised once, then its count is zeroed so duplicates are skipped and the
  // counts are clean for the next call.
  for (int32_t id : recent) {
    if (id < 0 || id >= vocab || counts_[id] == 0) continue;
    float& logit = scratch_[id];
    if (logit > 0)
      logit /= params_.repetition_penalty;
    else
      logit *= params_.repetition_penalty;
    logit -= static_cast<float>(counts_[id]) * params_.frequency_penalty + params_.presence_penalty;
    counts_[id] = 0;
  }
}

int32_t Sampler::argmax() const { return first_argmax(scratch_); }

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  if (logits.empty()) throw Error(ErrorKind::invalid_argument, "sampler: empty logits row");
  if (logits.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    throw Error(ErrorKind::invalid_argument, "sampler: logits row longer than the int32 id range");

  // Greedy without penalties reads the row in place (no copy): the common case of every
  // sequence of a batched step, run one after another on the scheduler's thread.
  if (params_.temperature == 0.0f && !has_penalties()) return first_argmax(logits);

  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  const size_t vocab = logits.size();
  if (scratch_.size() != vocab) {
    scratch_.resize(vocab);
    counts_.assign(vocab, 0);
    order_.reserve(vocab);
    probs_.reserve(vocab);
  }
  for (size_t i = 0; i < vocab; ++i) scratch_[i] = std::isnan(logits[i]) ? neg_inf : logits[i];
  if (has_penalties()) apply_penalties(history);

  if (params_.temperature == 0.0f) return argmax();

  const float inv_temperature = 1.0f / params_.temperature;
  order_.clear();
  for (size_t i = 0; i < vocab; ++i) {
    scratch_[i] *= inv_temperature;
    if (scratch_[i] > neg_inf) order_.push_back(static_cast<int32_t>(i));
  }
  if (order_.empty()) return 0;

  const float* s = scratch_.data();
  const auto better = [s](int32_t a, int32_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); };

  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < order_.size()) {
    std::nth_element(order_.begin(), order_.begin() + params_.top_k, order_.end(), better);
    order_.resize(static_cast<size_t>(params_.top_k));
  }

  float max_logit = neg_inf;
  for (int32_t id : order_) max_logit = std::max(max_logit, s[id]);
  if (std::isinf(max_logit)) {  // +inf logits: the lowest such id, as greedy would pick
    int32_t best = std::numeric_limits<int32_t>::max();
    for (int32_t id : order_)
      if (s[id] == max_logit) best = std::min(best, id);
    return best;
  }
  const auto weight = [s, max_logit](int32_t id) { return std::exp(static_cast<double>(s[id] - max_logit)); };

  if (params_.top_p < 1.0f) {
    double total = 0;
    for (int32_t id : order_) total += weight(id);
    const double needed = static_cast<double>(params_.top_p) * total;
    // Sort only as far as the nucleus reaches: usually a few hundred of a large vocabulary.
    size_t sorted = 0, keep = order_.size();
    double cumulative = 0;
    for (size_t chunk = 64; sorted < order_.size() && keep == order_.size(); chunk *= 4) {
      const size_t end = std::min(order_.size(), sorted + chunk);
      std::partial_sort(order_.begin() + static_cast<std::ptrdiff_t>(sorted),
                        order_.begin() + static_cast<std::ptrdiff_t>(end), order_.end(), better);
      for (; sorted < end; ++sorted) {
        cumulative += weight(order_[sorted]);
        if (cumulative >= needed) {
          keep = sorted + 1;
          break;
        }
      }
    }
    order_.resize(keep);
  }

  if (params_.min_p > 0.0f) {
    // p_i / p_max = exp(l_i - l_max) whatever the normalisation, so the threshold needs no sum.
    const double threshold = static_cast<double>(params_.min_p);
    std::erase_if(order_, [&](int32_t id) { return weight(id) < threshold; });
  }

  probs_.clear();
  double total = 0;
  for (int32_t id : order_) {
    probs_.push_back(weight(id));
    total += probs_.back();
  }
  double target = uniform01() * total;
  for (size_t i = 0; i < order_.size(); ++i) {
    target -= probs_[i];
    if (target < 0) return order_[i];
  }
  return order_.back();  // rounding left a sliver of mass
}

}  // namespace tandem
