#pragma once
// Synthetic models: a real MoE model's shapes, GGUF metadata and vocabulary size with random,
// well-scaled weights written directly as quantised blocks, for benchmarks at real sizes without
// downloading hundreds of GB. `tandem synth` writes them; `tandem bench experts` builds one layer
// in memory from the same presets.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/formats/gguf_writer.hpp"
#include "tandem/tensor/dtype.hpp"

namespace tandem {

// The shapes and metadata of a published model, as llama.cpp's converter writes them.
struct SynthPreset {
  std::string_view name;        // "qwen3-30b-a3b"
  std::string_view model_name;  // general.name, "Qwen3-30B-A3B"
  std::string_view gguf_arch;   // general.architecture: qwen3moe, deepseek2, llama
  int64_t vocab = 0, hidden = 0, layers = 0, context = 0;
  int64_t heads = 0, kv_heads = 0, head_dim = 0;        // GQA (MLA: kv_heads = heads)
  int64_t q_lora = 0, kv_lora = 0, qk_nope = 0, qk_rope = 0, v_head = 0;  // MLA; kv_lora 0 = GQA
  int64_t intermediate = 0;                             // dense FFN width
  int64_t moe_intermediate = 0, experts = 0, top_k = 0, shared_experts = 0, first_dense = 0;
  bool sigmoid_router = false;                          // DeepSeek-V3 noaux_tc
  int64_t expert_groups = 0, expert_groups_used = 0;    // 0 = not written
  double routed_scale = 1.0;
  bool norm_topk = false;
  double rope_theta = 10000.0, rms_eps = 1e-6;
  double yarn_factor = 0.0;                             // 0 = no rope scaling
  int64_t yarn_original_context = 0;
  double yarn_log_multiplier = 0.0;
  std::string_view tokenizer_pre;                       // tokenizer.ggml.pre
  struct Special {
    int64_t id;
    std::string_view text;
  };
  std::vector<Special> specials;                        // control tokens at their real ids
  int64_t bos = -1, eos = -1;

  bool is_moe_layer(int64_t layer) const { return layer >= first_dense; }
};

// Every preset, and one by name (Error(invalid_argument) listing the names for an unknown one).
const std::vector<SynthPreset>& synth_presets();
const SynthPreset& synth_preset(std::string_view name);

// The stored-type recipes: llama-quantize's Q4_K_M and Q5_K_M mixes, or one type for every matrix.
enum class SynthQuant { q4_k_m, q5_k_m, q8_0, iq4_xs, bf16 };
SynthQuant synth_quant_from_name(std::string_view name);  // Error(invalid_argument) when unknown
std::string_view synth_quant_name(SynthQuant quant);

// One tensor of a synthetic model: its name, stored type, shape (outermost first) and the RMS
// its random values are drawn at.
struct SynthTensor {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> dims;
  enum class Fill { random, ones, zeros } fill = Fill::random;
  float rms = 0.0f;
};

// RMS·sqrt(in) of the matrices that write into the residual stream (attention output, FFN and
// expert down); those that read a normalised input get 1, token embeddings RMS 1.
inline constexpr float kSynthResidualScale = 0.05f;

// The tensors of a model cut to `layers` layers (0 = all), in file order, with types from `quant`.
std::vector<SynthTensor> synth_tensors(const SynthPreset& preset, int64_t layers, SynthQuant quant,
                                       float residual_scale = kSynthResidualScale);

// The stored type llama-quantize gives a matrix (by its GGUF name, in a model of `layers` layers,
// `row_elems` wide): Q6_K for output.weight and for attn_v / attn_kv_b / ffn_down* on the layers
// where llama.cpp "uses more bits", Q8_0 / Q5_K bumps for 8-expert models, Q4_K elsewhere; a row
// that is not whole 256-blocks falls back as llama.cpp does (Q4_K→Q5_0, Q6_K→Q8_0, IQ4_XS→IQ4_NL).
DType synth_matrix_type(SynthQuant quant, const std::string& name, int64_t layers, int64_t experts,
                        int64_t row_elems);

// Fills `blocks` blocks of `dtype` at `out` with random values of about `rms` (zero mean); the
// stream of values is a function of `seed` only. Quantised types are drawn as random codes with
// scales chosen for the RMS, so no float quantiser runs.
void fill_random_blocks(DType dtype, float rms, uint64_t seed, uint8_t* out, int64_t blocks);

struct SynthOptions {
  std::string preset;
  int64_t layers = 0;  // 0: the preset's count
  SynthQuant quant = SynthQuant::q4_k_m;
  uint64_t seed = 1;
  float residual_scale = kSynthResidualScale;  // in (0, 10]
};

// The metadata and vocabulary alone (a few MB: for checking what a preset's file will say).
GgufWriter plan_synthetic_metadata(const SynthOptions& options);
// The whole file planned: metadata, vocabulary and tensor infos (no data yet).
GgufWriter plan_synthetic_model(const SynthOptions& options);
// Plans and writes the file in constant memory; returns its size in bytes. Error(invalid_argument)
// for an unknown preset or a layer count outside 1..the preset's, Error(io) for a path it cannot
// write (no partial file is left).
uint64_t write_synthetic_model(const SynthOptions& options, const std::string& path);

}  // namespace tandem
