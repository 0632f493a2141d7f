#include "cli/progress.hpp"

#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace tandem::cli {

ProgressBar::ProgressBar() : ProgressBar(isatty(STDERR_FILENO) == 1) {}
ProgressBar::ProgressBar(bool enabled) : enabled_(enabled) {}
ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(float fraction, std::string_view stage) {
  if (!enabled_) return;
  if (!std::isfinite(fraction)) fraction = 0;
  fraction = std::clamp(fraction, 0.0f, 1.0f);
  const int permille = static_cast<int>(fraction * 1000);
  if (permille == last_permille_ && stage == last_stage_) return;  // redraw only on change
  last_permille_ = permille;
  last_stage_ = stage;
  constexpr int width = 30;
  const int filled = permille * width / 1000;
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(width, '.');
  // \r + clear-to-end-of-line keeps it on one line however the stage name's length changes.
  fmt::print(stderr, "\r\033[Kloading [{}] {:3d}% {}", bar, permille / 10, stage.substr(0, 40));
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::finish() {
  if (!drawn_) return;
  fmt::print(stderr, "\r\033[K");
  std::fflush(stderr);
  drawn_ = false;
}

std::function<void(float, std::string_view)> ProgressBar::callback() {
  return [this](float fraction, std::string_view stage) { update(fraction, stage); };
}

}  // namespace tandem::cli
