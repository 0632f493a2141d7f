#pragma once
// A one-line load progress bar on stderr, drawn only when stderr is a terminal (so pipes and
// files stay clean). Plug callback() into LoadOptions::progress.
#include <functional>
#include <string>
#include <string_view>

namespace tandem::cli {

class ProgressBar {
 public:
  ProgressBar();  // enabled iff stderr is a TTY
  explicit ProgressBar(bool enabled);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void update(float fraction, std::string_view stage);
  void finish();  // erases the bar; idempotent
  std::function<void(float, std::string_view)> callback();
  bool enabled() const { return enabled_; }

 private:
  bool enabled_;
  bool drawn_ = false;
  int last_permille_ = -1;
  std::string last_stage_;
};

}  // namespace tandem::cli
