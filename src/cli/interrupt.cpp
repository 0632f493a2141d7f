#include "cli/interrupt.hpp"

namespace tandem::cli {
namespace {

// Written by the SIGINT handler: lock-free atomics are async-signal-safe. A process has one
// SIGINT disposition, so the flag it sets is necessarily process-wide.
std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free);

extern "C" void on_sigint(int) { g_interrupted.store(true); }

}  // namespace

InterruptScope::InterruptScope() {
  struct sigaction action = {};
  action.sa_handler = on_sigint;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, &previous_);
}

InterruptScope::~InterruptScope() { sigaction(SIGINT, &previous_, nullptr); }

const std::atomic<bool>& InterruptScope::flag() { return g_interrupted; }

void InterruptScope::clear() { g_interrupted.store(false); }

}  // namespace tandem::cli
