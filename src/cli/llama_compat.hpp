#pragma once
// llama.cpp users' habits. Its multi-letter single-dash flags (-ngl, -ctk, -ctv, -fa) are
// rewritten to their long spellings before parsing (CLI11 would read `-ngl` as `-n gl`), and the
// flags that do not apply to Tandem are accepted and answered with what to use instead, so a
// llama.cpp command line runs rather than failing on a parser error. docs/CLI.md lists them.
#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <vector>

namespace tandem::cli {

// argv with -ngl → --n-gpu-layers, -ot → --override-tensor, -ctk → --cache-type-k, -ctv → --cache-type-v, -fa → --flash-attn.
std::vector<std::string> rewrite_llama_spellings(int argc, const char* const* argv);

struct LlamaCompatFlags {
  std::string n_gpu_layers;  // empty: not given; becomes PlacementFlags::n_gpu_layers
  std::string cache_type_k, cache_type_v;
  CLI::Option* flash_attn = nullptr;  // takes an optional value (on|off|auto), so its count says it was given
  std::string flash_attn_value;
  bool no_mmap = false;
  bool mlock = false;

  void add_to(CLI::App& app);
  // The KV type -ctk/-ctv select: both given and naming the same type Tandem has (f32, f16,
  // bf16); otherwise nothing.
  std::optional<std::string> kv_type() const;
  // One note on stderr for each given flag that Tandem does not use, saying what to use instead;
  // `kv_type_used` is the KV cache type the command runs with.
  void report(std::string_view kv_type_used) const;
};

}  // namespace tandem::cli
