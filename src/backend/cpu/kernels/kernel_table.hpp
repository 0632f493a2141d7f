#pragma once
// Which kernel serves a stored weight type, and the table of kernels for one IsaLevel.
#include <cstdint>
#include <optional>

#include "backend/cpu/kernels/dot_kernels.hpp"
#include "backend/cpu/kernels/isa_level.hpp"
#include "tandem/tensor/dtype.hpp"

namespace tandem::kernels {

// nullopt: no fast kernel for this type (the caller uses the reference path).
std::optional<WeightKind> weight_kind_for(DType type) noexcept;
ActFormat act_format(WeightKind kind) noexcept;
int64_t act_block_values(ActFormat format) noexcept;  // 1, 256 or 32
int64_t act_block_bytes(ActFormat format) noexcept;   // 4, sizeof(ActQ8K), sizeof(ActQ8)

// The kernels of `level` (which must be supported by this CPU).
KernelTable make_kernel_table(IsaLevel level);
// The avx512 table plus the AMX tile kernels with every tile instruction emulated in plain code (the
// rest of each kernel is the real one): tests the tile layouts on an AVX-512 CPU without AMX. Slow.
KernelTable make_emulated_amx_table();

}  // namespace tandem::kernels
