#include "tandem/error.hpp"

namespace tandem {

const char* error_kind_name(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::invalid_argument: return "invalid argument";
    case ErrorKind::io: return "I/O error";
    case ErrorKind::corrupt_file: return "corrupt file";
    case ErrorKind::unsupported: return "unsupported";
    case ErrorKind::out_of_range: return "out of range";
    case ErrorKind::out_of_memory: return "out of memory";
    case ErrorKind::cancelled: return "cancelled";
    case ErrorKind::internal: return "internal error";
  }
  return "error";
}

}  // namespace tandem
