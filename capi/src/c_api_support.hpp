#pragma once
// What every C ABI call shares: the handle structs, the exception-to-status guard, params structs
// read by their struct_size, and the process-wide log sink.
#include <atomic>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "tandem.h"
#include "tandem/engine/engine.hpp"
#include "tandem/error.hpp"
#include "tandem/text/sampler.hpp"

struct tandem_model {
  std::unique_ptr<tandem::Engine> engine;
  std::vector<int32_t> eos_ids;  // from config and tokenizer, for generate's stop_at_eos
};

struct tandem_session {
  tandem_model* model = nullptr;
  std::unique_ptr<tandem::Session> session;
  // Set by tandem_session_cancel from any thread; cleared when a call returns. Lets a cancel that
  // lands between two decode steps (where the Session itself has nothing to stop) still count.
  std::atomic<bool> cancel_requested{false};
  bool has_logits = false;
};

struct tandem_sampler {
  explicit tandem_sampler(tandem::SamplingParams params) : sampler(params) {}
  tandem::Sampler sampler;
};

namespace tandem::capi {

// A status the C++ layer has no ErrorKind for (BUFFER_TOO_SMALL).
struct StatusError {
  tandem_status status;
  std::string message;
};

tandem_status record_failure(tandem_status status, std::string_view message) noexcept;
tandem_status status_of(ErrorKind kind) noexcept;
void log(tandem_log_level level, std::string_view message) noexcept;

// Runs `body`, turning every exception into a status plus tandem_last_error().
template <class Body>
tandem_status guarded(Body&& body) noexcept {
  try {
    body();
    return TANDEM_STATUS_OK;
  } catch (const Error& e) {
    return record_failure(status_of(e.kind()), e.what());
  } catch (const StatusError& e) {
    return record_failure(e.status, e.message);
  } catch (const std::bad_alloc&) {
    return record_failure(TANDEM_STATUS_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return record_failure(TANDEM_STATUS_INTERNAL, e.what());
  } catch (...) {
    return record_failure(TANDEM_STATUS_INTERNAL, "unknown exception inside Tandem");
  }
}

template <class T>
T& require(T* pointer, const char* what) {
  if (pointer == nullptr) {
    throw Error(ErrorKind::invalid_argument, fmt::format("{} must not be NULL", what));
  }
  return *pointer;
}

// Anything larger than this is not a params struct of ours but garbage (an uninitialised field).
inline constexpr size_t kMaxStructSize = 4096;

inline void check_struct_size(size_t given, size_t first_version_size, const char* type) {
  if (given < first_version_size || given > kMaxStructSize) {
    throw Error(ErrorKind::invalid_argument,
                fmt::format("{}.struct_size is {}, expected at least {} (sizeof({}) of ABI version 1) "
                            "and at most {}: initialise it with the default_params call",
                            type, given, first_version_size, type, kMaxStructSize));
  }
}

// An input params struct: the caller's fields over our defaults (older callers pass fewer).
template <class Struct>
Struct read_params(const Struct* given, const Struct& defaults, size_t first_version_size,
                   const char* type) {
  if (given == nullptr) return defaults;
  check_struct_size(given->struct_size, first_version_size, type);
  Struct merged = defaults;
  std::memcpy(static_cast<void*>(&merged), given, std::min(given->struct_size, sizeof(Struct)));
  merged.struct_size = sizeof(Struct);
  return merged;
}

// An output struct: fills as much of the caller's struct as it says it has room for.
template <class Struct>
void write_out_struct(Struct* out, const Struct& full, size_t first_version_size, const char* type) {
  require(out, type);
  const size_t room = out->struct_size;
  check_struct_size(room, first_version_size, type);
  std::memcpy(static_cast<void*>(out), &full, std::min(room, sizeof(Struct)));
  out->struct_size = room;
}

// A NUL-terminated copy the caller frees with tandem_free_string.
char* copy_out_string(std::string_view text);

}  // namespace tandem::capi

// The size of a struct up to and including its last field of ABI version 1. Stays right when
// fields are appended later.
#define TANDEM_V1_SIZE(type, last_field) (offsetof(type, last_field) + sizeof(((type*)nullptr)->last_field))
