// libFuzzer target: any byte string must parse or throw tandem::Error, never crash or over-read.
#include <cstddef>
#include <cstdint>

#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/formats/gguf.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto g = tandem::GgufFile::from_memory(data, size, "fuzz.gguf");
    // Touch every accepted tensor's first row: a view the reader accepted must be readable.
    float row[4096];
    for (const auto& e : g.tensors().entries()) {
      const int64_t n = e.view.shape.back();
      if (n > 4096) continue;
      try {
        tandem::dequantize_row(e.view.dtype, e.view.data, row, n);
      } catch (const tandem::Error&) {  // integer types have no dequantisation
      }
    }
  } catch (const tandem::Error&) {
  }
  return 0;
}
