#pragma once
// Error messages in .cu files: nvcc's C++20 front end cannot evaluate fmt's consteval format-string
// checks, so kernels' host code joins message pieces with a stream instead.
#include <sstream>
#include <string>

namespace tandem::cuda {

template <typename... Parts>
std::string text(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace tandem::cuda
