#include "cli/llama_compat.hpp"

#include "tandem/engine/placement.hpp"
#include "tandem/kv/kv_type.hpp"

#include <fmt/core.h>

#include <array>
#include <string_view>
#include <utility>

namespace tandem::cli {

std::vector<std::string> rewrite_llama_spellings(int argc, const char* const* argv) {
  static constexpr std::array<std::pair<std::string_view, std::string_view>, 7> spellings{{
      {"-np", "--parallel"},
      {"-ngl", "--n-gpu-layers"},
      {"-ot", "--override-tensor"},
      {"-ctk", "--cache-type-k"},
      {"-ctv", "--cache-type-v"},
      {"-fa", "--flash-attn"},
      {"-ub", "--ubatch"},
  }};
  std::vector<std::string> args;
  args.reserve(static_cast<size_t>(argc));
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    for (const auto& [short_form, long_form] : spellings) {
      if (arg == short_form) {
        arg = long_form;
      } else if (arg.size() > short_form.size() && arg.starts_with(short_form) && arg[short_form.size()] == '=') {
        arg = std::string(long_form) + arg.substr(short_form.size());
      }
    }
    args.push_back(std::move(arg));
  }
  return args;
}

void LlamaCompatFlags::add_to(CLI::App& app) {
  auto* group = app.add_option_group("llama.cpp spellings", "accepted so llama.cpp command lines run; see docs/CLI.md");
  group->add_option("--n-gpu-layers,--gpu-layers", n_gpu_layers,
                    "llama.cpp's -ngl: the last N layers on cuda:0 (N > layers, -1 or 'all': everything); "
                    "without a usable GPU everything stays on the CPU (docs/PLACEMENT.md)");
  group->add_option("--cache-type-k", cache_type_k, "llama.cpp's KV cache type for K (-ctk); with -ctv naming the same f32/f16/bf16, as --kv-type");
  group->add_option("--cache-type-v", cache_type_v, "llama.cpp's KV cache type for V (-ctv); with -ctk naming the same f32/f16/bf16, as --kv-type");
  flash_attn = group->add_option("--flash-attn", flash_attn_value, "llama.cpp's flash attention switch (-fa); Tandem chooses itself")
      ->expected(0, 1);
  group->add_flag("--no-mmap", no_mmap, "llama.cpp's; Tandem always maps weight files (pages stay shared)");
  group->add_flag("--mlock", mlock, "llama.cpp's; not supported (weights stay mapped and pageable)");
}

std::optional<std::string> LlamaCompatFlags::kv_type() const {
  if (cache_type_k.empty() || cache_type_k != cache_type_v || !is_kv_type_name(cache_type_k)) return std::nullopt;
  return cache_type_k;
}

void LlamaCompatFlags::report(std::string_view kv_type_used) const {
  const auto note = [](std::string_view text) { fmt::print(stderr, "tandem: note: {}\n", text); };
  if (!n_gpu_layers.empty() && !cuda_forward_available())
    note(fmt::format("-ngl/--n-gpu-layers {}: no GPU the CUDA backend can use here, so every layer runs on the "
                     "CPU (placement rules: --placement, docs/PLACEMENT.md)",
                     n_gpu_layers));
  if ((!cache_type_k.empty() || !cache_type_v.empty()) && kv_type() != std::optional<std::string>(kv_type_used))
    note(fmt::format("-ctk/-ctv (--cache-type-k/v) {}/{} are not used: the KV cache is {} (one type for K and V: "
                     "--kv-type f32|f16|bf16, or -ctk and -ctv naming the same one)",
                     cache_type_k.empty() ? "-" : cache_type_k, cache_type_v.empty() ? "-" : cache_type_v,
                     kv_type_used));
  if (flash_attn != nullptr && flash_attn->count() > 0) note("-fa/--flash-attn is ignored: Tandem picks its attention kernel itself");
  if (no_mmap) note("--no-mmap is ignored: Tandem always maps weight files read-only");
  if (mlock) note("--mlock is ignored: weights stay mapped and pageable");
}

}  // namespace tandem::cli
