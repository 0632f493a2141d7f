#pragma once
// Ctrl-C for the commands that run a model: while an InterruptScope lives, SIGINT sets a flag that
// generation and scoring poll (GenerateOptions::cancel), instead of killing the process, so the
// command can stop cleanly and still print what it measured.
#include <atomic>
#include <csignal>

namespace tandem::cli {

class InterruptScope {
 public:
  // Installs the handler without SA_RESTART, so a blocking read() returns EINTR.
  InterruptScope();
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;

  // The flag the handler sets; clear() it before a new wait.
  static const std::atomic<bool>& flag();
  static bool interrupted() { return flag().load(); }
  static void clear();

 private:
  struct sigaction previous_ = {};
};

}  // namespace tandem::cli
