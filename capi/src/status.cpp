// Errors, versions, strings and logging: the parts of the ABI that need no model.
#include <cstdlib>
#include <mutex>

#include "c_api_support.hpp"

namespace tandem::capi {
namespace {

thread_local std::string last_error_message;

struct LogSink {
  std::mutex mutex;
  tandem_log_fn callback = nullptr;
  void* user_data = nullptr;
  std::atomic<int> max_level{TANDEM_LOG_WARN};
};

LogSink& log_sink() {
  static LogSink sink;
  return sink;
}

}  // namespace

tandem_status record_failure(tandem_status status, std::string_view message) noexcept {
  try {
    last_error_message.assign(message);
  } catch (...) {
    last_error_message.clear();  // keeping the status matters more than the text
  }
  return status;
}

tandem_status status_of(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::invalid_argument: return TANDEM_STATUS_INVALID_ARGUMENT;
    case ErrorKind::io: return TANDEM_STATUS_IO;
    case ErrorKind::corrupt_file: return TANDEM_STATUS_CORRUPT_FILE;
    case ErrorKind::unsupported: return TANDEM_STATUS_UNSUPPORTED;
    case ErrorKind::out_of_range: return TANDEM_STATUS_OUT_OF_RANGE;
    case ErrorKind::out_of_memory: return TANDEM_STATUS_OUT_OF_MEMORY;
    case ErrorKind::cancelled: return TANDEM_STATUS_CANCELLED;
    case ErrorKind::internal: return TANDEM_STATUS_INTERNAL;
  }
  return TANDEM_STATUS_INTERNAL;
}

void log(tandem_log_level level, std::string_view message) noexcept {
  LogSink& sink = log_sink();
  if (static_cast<int>(level) > sink.max_level.load(std::memory_order_relaxed)) return;
  try {
    std::lock_guard lock(sink.mutex);
    if (sink.callback == nullptr) return;
    const std::string text(message);
    sink.callback(level, text.c_str(), sink.user_data);
  } catch (...) {
    // Logging never makes a call fail.
  }
}

char* copy_out_string(std::string_view text) {
  auto* copy = static_cast<char*>(std::malloc(text.size() + 1));
  if (copy == nullptr) throw std::bad_alloc();
  std::memcpy(copy, text.data(), text.size());
  copy[text.size()] = '\0';
  return copy;
}

}  // namespace tandem::capi

extern "C" {

const char* tandem_last_error(void) { return tandem::capi::last_error_message.c_str(); }

const char* tandem_status_name(tandem_status status) {
  switch (status) {
    case TANDEM_STATUS_OK: return "ok";
    case TANDEM_STATUS_INVALID_ARGUMENT: return "invalid_argument";
    case TANDEM_STATUS_IO: return "io";
    case TANDEM_STATUS_CORRUPT_FILE: return "corrupt_file";
    case TANDEM_STATUS_UNSUPPORTED: return "unsupported";
    case TANDEM_STATUS_OUT_OF_RANGE: return "out_of_range";
    case TANDEM_STATUS_OUT_OF_MEMORY: return "out_of_memory";
    case TANDEM_STATUS_CANCELLED: return "cancelled";
    case TANDEM_STATUS_INTERNAL: return "internal";
    case TANDEM_STATUS_BUFFER_TOO_SMALL: return "buffer_too_small";
  }
  return "unknown";
}

uint32_t tandem_abi_version(void) { return TANDEM_ABI_VERSION; }

const char* tandem_version_string(void) { return TANDEM_VERSION_STRING; }

void tandem_free_string(char* text) { std::free(text); }

void tandem_set_log_callback(tandem_log_fn callback, void* user_data, tandem_log_level max_level) {
  auto& sink = tandem::capi::log_sink();
  std::lock_guard lock(sink.mutex);
  sink.callback = callback;
  sink.user_data = user_data;
  sink.max_level.store(static_cast<int>(max_level), std::memory_order_relaxed);
}

}  // extern "C"
