#pragma once
// The instruction-set levels the CPU kernels are built for, and which one this CPU runs. Chosen
// once at run time (CPUID + XGETBV), so one baseline x86-64 binary runs everywhere.
#include <cstdint>

namespace tandem::kernels {

enum class IsaLevel : uint8_t {
  scalar,  // portable C++: the reference every SIMD kernel is tested against
  avx2,    // AVX2 + FMA + F16C
  avx512,  // AVX-512 F/BW/VL/DQ + VNNI (+ F16C/FMA)
  amx,     // avx512 plus AMX-TILE/AMX-INT8 tiles for prefill (Linux grants the tile state per process)
};

const char* isa_level_name(IsaLevel level) noexcept;
bool isa_level_supported(IsaLevel level) noexcept;
IsaLevel best_isa_level() noexcept;  // the highest level this CPU and OS support

}  // namespace tandem::kernels
