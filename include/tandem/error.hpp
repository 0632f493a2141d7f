#pragma once
// tandem::Error: the one exception type thrown at the boundary of untrusted input (files,
// configs, user requests). The C ABI maps `kind` to a tandem_status.
#include <stdexcept>
#include <string>
#include <utility>

namespace tandem {

enum class ErrorKind {
  invalid_argument,  // a caller passed something wrong (bad params, unknown option)
  io,                // a file could not be opened, read or mapped
  corrupt_file,      // a file's contents contradict its format
  unsupported,       // valid input that Tandem does not handle (architecture, tensor type)
  out_of_range,      // a size past a configured limit (context, batch, KV blocks)
  out_of_memory,     // an allocation or pool ran out
  cancelled,         // the caller asked to stop
  internal,          // a bug in Tandem
};

const char* error_kind_name(ErrorKind kind) noexcept;

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message) : std::runtime_error(std::move(message)), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace tandem
