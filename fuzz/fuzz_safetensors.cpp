// libFuzzer target: any byte string must parse or throw tandem::Error, never crash or over-read.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "tandem/error.hpp"
#include "tandem/formats/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto m = tandem::SafetensorsModel::from_memory(data, size, "fuzz.safetensors");
    // A view the reader accepted must be readable to its last byte.
    volatile uint8_t sink = 0;
    for (const auto& e : m.tensors().entries()) {
      if (e.view.nbytes) sink = sink ^ static_cast<const uint8_t*>(e.view.data)[e.view.nbytes - 1];
    }
  } catch (const tandem::Error&) {
  }
  return 0;
}
