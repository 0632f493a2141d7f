// tandem.h compiled as C++11 (pedantic, warnings as errors) and linked: the header works from C++.
#include <cstdio>

#include "tandem.h"

int main() {
  const tandem_load_params params = tandem_load_default_params();
  std::printf("ABI %u (header %d), load params %zu bytes\n", tandem_abi_version(), TANDEM_ABI_VERSION,
              params.struct_size);
  return tandem_abi_version() == TANDEM_ABI_VERSION && params.struct_size == sizeof(params) ? 0 : 1;
}
