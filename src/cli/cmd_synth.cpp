// `tandem synth --preset P [--layers N] [--quant Q] [--seed S] -o FILE.gguf`: writes a synthetic
// model (real shapes and metadata, random weights) for benchmarks; prints its size and the time.
#include <chrono>
#include <memory>
#include <string>

#include <fmt/core.h>

#include "cli/command.hpp"
#include "tandem/error.hpp"
#include "tandem/model/synth.hpp"

namespace tandem::cli {
namespace {

struct SynthFlags {
  std::string preset;
  int64_t layers = 0;  // 0: not given (all of the preset's layers)
  bool layers_given = false;
  std::string quant = "q4_k_m";
  uint64_t seed = 1;
  float residual_scale = kSynthResidualScale;
  std::string output;
};

CommandRun setup(CLI::App& sub) {
  auto flags = std::make_shared<SynthFlags>();
  std::string presets;
  for (const SynthPreset& p : synth_presets()) presets += (presets.empty() ? "" : "|") + std::string(p.name);
  sub.add_option("--preset", flags->preset, "the model imitated: " + presets)->required();
  sub.add_option_function<int64_t>(
      "--layers",
      [flags](int64_t n) {
        flags->layers = n;
        flags->layers_given = true;
      },
      "keep the first N layers (default: all)");
  sub.add_option("--quant", flags->quant, "q4_k_m (llama-quantize's mix, default), q5_k_m (its Q5_K mix), q8_0, iq4_xs or bf16");
  sub.add_option("--seed", flags->seed, "seed of the random weights (default 1)");
  sub.add_option("--residual-scale", flags->residual_scale,
                 "RMS·sqrt(in) of the matrices writing into the residual stream (default 0.05; 1 = plain scaling, "
                 "under which routing collapses)");
  sub.add_option("-o,--output", flags->output, "the GGUF file to write")->required();
  return [flags]() {
    SynthOptions options;
    options.preset = flags->preset;
    synth_preset(options.preset);  // an unknown name fails before anything else
    options.quant = synth_quant_from_name(flags->quant);
    if (flags->layers_given && flags->layers < 1)  // 0 would silently mean "every layer"
      throw tandem::Error(tandem::ErrorKind::invalid_argument,
                          fmt::format("--layers {} must be at least 1", flags->layers));
    options.layers = flags->layers;
    options.seed = flags->seed;
    options.residual_scale = flags->residual_scale;
    const auto start = std::chrono::steady_clock::now();
    const uint64_t bytes = write_synthetic_model(options, flags->output);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const SynthPreset& p = synth_preset(options.preset);
    fmt::print("wrote {}: {} {} layers {}, {} bytes ({:.2f} GiB) in {:.1f} s ({:.0f} MB/s)\n", flags->output,
               p.model_name, options.layers ? options.layers : p.layers, synth_quant_name(options.quant), bytes,
               static_cast<double>(bytes) / (1u << 30), seconds, static_cast<double>(bytes) / 1e6 / seconds);
    return 0;
  };
}

const RegisterCommand registered{
    {"synth", "write a synthetic model (a real model's shapes, random weights) for benchmarks", setup}};

}  // namespace
}  // namespace tandem::cli
