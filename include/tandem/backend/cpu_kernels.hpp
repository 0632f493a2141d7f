#pragma once
// Which kernels the CPU backend runs: `fast` (quantised SIMD kernels chosen by CPU features, the
// default) or `reference` (dequantise-then-float32, ops/linear), so both can be measured on the
// same file. Weight types without a fast kernel run on the reference path either way.
#include <cstdint>
#include <optional>
#include <string_view>

#include "tandem/tensor/dtype.hpp"

namespace tandem {

enum class CpuKernels : uint8_t { fast, reference };

std::string_view cpu_kernels_name(CpuKernels kernels) noexcept;
std::optional<CpuKernels> parse_cpu_kernels(std::string_view name) noexcept;

// Whether the fast path has a kernel for weights stored as `type`.
bool cpu_fast_kernel_available(DType type) noexcept;

// The instruction set the fast kernels use on this CPU ("avx512", "avx2" or "scalar").
std::string_view cpu_kernel_isa() noexcept;

// Whether CPU weights are repacked at load: TANDEM_CPU_REPACK=0/1 when set (an out-of-range value
// is an error naming the variable), else `requested` (LoadOptions::cpu_repack).
bool cpu_repack_enabled(bool requested);
// Whether TANDEM_CPU_REPACK is set (=1 then also overrides the memory guard).
bool cpu_repack_forced();
// Whether the CPU weights that prefill multiplies (attention, experts, dense and shared MLPs) also
// get an int8 copy for the AMX int8 kernel, where the kernels are AMX's (TANDEM_CPU_ISA=amx on a CPU
// with AMX): on unless TANDEM_CPU_INT8=0 (it costs ~1 byte a weight more; the engine's memory guard
// drops these copies first).
bool cpu_int8_enabled();

}  // namespace tandem
