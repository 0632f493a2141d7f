#include "backend/cpu/kernels/kernel_table.hpp"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <string_view>

#include "backend/cpu/kernels/activation_blocks.hpp"
#include "backend/cpu/kernels/attention_block.hpp"
#include "core/environment.hpp"
#include "tandem/error.hpp"

namespace tandem::kernels {
namespace {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512vnni = false;
  bool amx_tile = false, amx_int8 = false;
  bool os_ymm = false, os_zmm = false, os_tiles = false;
};

// Linux (5.16+) enables the 8 KiB tile state only for processes that ask; asking again is harmless.
bool tile_state_granted() noexcept {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

CpuFeatures detect() noexcept {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  f.fma = (c >> 12) & 1u;
  f.f16c = (c >> 29) & 1u;
  const bool osxsave = (c >> 27) & 1u;
  if (osxsave) {
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    f.os_ymm = (lo & 0x6u) == 0x6u;    // XMM and YMM state
    f.os_zmm = (lo & 0xe6u) == 0xe6u;  // plus opmask and ZMM state
    f.os_tiles = (lo & 0x60000u) == 0x60000u;  // XTILECFG and XTILEDATA
  }
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = (b >> 5) & 1u;
    f.avx512f = (b >> 16) & 1u;
    f.avx512dq = (b >> 17) & 1u;
    f.avx512bw = (b >> 30) & 1u;
    f.avx512vl = (b >> 31) & 1u;
    f.avx512vnni = (c >> 11) & 1u;
    f.amx_tile = (d >> 24) & 1u;
    f.amx_int8 = (d >> 25) & 1u;
  }
  return f;
}

}  // namespace

namespace {
IsaLevel limit_level(std::string_view name) noexcept {
  for (IsaLevel level : {IsaLevel::scalar, IsaLevel::avx2, IsaLevel::avx512, IsaLevel::amx})
    if (name == isa_level_name(level)) return level;
  return IsaLevel::avx512;  // an unknown name keeps the default cap (AMX stays opt-in)
}
}  // namespace

const char* isa_level_name(IsaLevel level) noexcept {
  switch (level) {
    case IsaLevel::scalar:
      return "scalar";
    case IsaLevel::avx2:
      return "avx2";
    case IsaLevel::avx512:
      return "avx512";
    case IsaLevel::amx:
      return "amx";
  }
  return "?";
}

bool isa_level_supported(IsaLevel level) noexcept {
  const CpuFeatures f = detect();
  const bool avx2 = f.os_ymm && f.avx2 && f.fma && f.f16c;
  const bool avx512 = avx2 && f.os_zmm && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vnni;
  switch (level) {
    case IsaLevel::scalar:
      return true;
    case IsaLevel::avx2:
      return avx2;
    case IsaLevel::avx512:
      return avx512;
    case IsaLevel::amx:
      return avx512 && f.amx_tile && f.amx_int8 && f.os_tiles && tile_state_granted();
  }
  return false;
}

IsaLevel best_isa_level() noexcept {
  // TANDEM_CPU_ISA=scalar|avx2|avx512|amx caps the choice (to hold one level against another on one
  // CPU). AMX is opt-in although prefill on its int8 strips (made at load, cpu_int8_enabled) is
  // faster — pp512 of the 8-layer Qwen3-30B-A3B file on the GPU machine's Xeon 2,434-2,712 tok/s
  // against AVX-512's 1,929-1,956 (docs/PERF.md) — because its results depend on the batch: whole
  // 16-token runs take the tiles (int8 copies, or split-scale sums rounded once) and the rest the
  // AVX-512 kernels, so a sequence batched with others is not bit-identical to it alone (the
  // scheduler's "batched equals solo" test fails there); on the strips repacked at load (Q4_K,
  // Q6_K) one AVX-512 kernel serves every count with each token's bits unchanged.
  const char* cap = std::getenv("TANDEM_CPU_ISA");
  const std::string_view limit = cap ? cap : "avx512";
  for (IsaLevel level : {IsaLevel::amx, IsaLevel::avx512, IsaLevel::avx2}) {
    if (!limit.empty() && static_cast<int>(level) > static_cast<int>(limit_level(limit))) continue;
    if (isa_level_supported(level)) return level;
  }
  return IsaLevel::scalar;
}

std::optional<WeightKind> weight_kind_for(DType type) noexcept {
  switch (type) {
    case DType::q4_k:
      return WeightKind::q4_k;
    case DType::q5_k:
      return WeightKind::q5_k;
    case DType::q6_k:
      return WeightKind::q6_k;
    case DType::iq4_xs:
      return WeightKind::iq4_xs;
    case DType::q8_0:
      return WeightKind::q8_0;
    case DType::q4_0:
      return WeightKind::q4_0;
    case DType::q5_0:
      return WeightKind::q5_0;
    case DType::q4_1:
      return WeightKind::q4_1;
    case DType::q5_1:
      return WeightKind::q5_1;
    case DType::iq4_nl:
      return WeightKind::iq4_nl;
    case DType::f32:
      return WeightKind::f32;
    case DType::f16:
      return WeightKind::f16;
    case DType::bf16:
      return WeightKind::bf16;
    case DType::f8_e4m3:
      return WeightKind::f8_e4m3;
    default:
      return std::nullopt;
  }
}

ActFormat act_format(WeightKind kind) noexcept {
  switch (kind) {
    case WeightKind::q4_k:
    case WeightKind::q5_k:
    case WeightKind::q6_k:
    case WeightKind::iq4_xs:
      return ActFormat::q8k;
    case WeightKind::q8_0:
    case WeightKind::q4_0:
    case WeightKind::q5_0:
    case WeightKind::q4_1:
    case WeightKind::q5_1:
    case WeightKind::iq4_nl:
      return ActFormat::q8;
    default:
      return ActFormat::f32;
  }
}

int64_t act_block_values(ActFormat format) noexcept {
  return format == ActFormat::q8k ? 256 : format == ActFormat::q8 ? 32 : 1;
}

int64_t act_block_bytes(ActFormat format) noexcept {
  return format == ActFormat::q8k  ? static_cast<int64_t>(sizeof(ActQ8K))
         : format == ActFormat::q8 ? static_cast<int64_t>(sizeof(ActQ8))
                                   : 4;
}

KernelTable make_kernel_table(IsaLevel level) {
  if (!isa_level_supported(level))
    throw Error(ErrorKind::unsupported,
                std::string("this CPU cannot run the ") + isa_level_name(level) + " kernels");
  KernelTable t{};
  t.prefetch_bytes = integer_from_environment("TANDEM_CPU_PREFETCH", 0, int64_t{1} << 20).value_or(kDefaultPrefetchBytes);
  scalar::fill_kernels(t);
  if (level == IsaLevel::avx2) {
    avx2::fill_kernels(t);
    avx2::fill_quantize_kernels(t);
  }
  if (level == IsaLevel::avx512 || level == IsaLevel::amx) {
    avx512::fill_kernels(t);
    avx512::fill_quantize_kernels(t);
    avx512::fill_activation_kernels(t);
    avx512::fill_tile_kernels(t);
  }
  if (level == IsaLevel::amx) amx::fill_kernels(t);
  return t;
}

KernelTable make_emulated_amx_table() {
  KernelTable t = make_kernel_table(IsaLevel::avx512);
  amx::fill_emulated_kernels(t);
  return t;
}

}  // namespace tandem::kernels

namespace tandem::kernels {

AttendKeysFn attend_keys_for(IsaLevel level) noexcept {
  switch (level) {
    case IsaLevel::scalar:
      return scalar::attend_keys;
    case IsaLevel::avx2:
      return avx2::attend_keys;
    case IsaLevel::avx512:
    case IsaLevel::amx:
      return avx512::attend_keys;
  }
  return scalar::attend_keys;
}

}  // namespace tandem::kernels
