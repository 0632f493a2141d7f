// A synthetic model file: the preset's metadata, a byte-level vocabulary of the real size, and
// random weights streamed tensor by tensor.
//
// Scaling keeps routing spread as a trained model's does: token embeddings have RMS 1, matrices
// that read a normalised input have RMS 1/sqrt(in) (outputs of RMS ~1), and the matrices that
// write into the residual stream (attention output, FFN/expert down) are kSynthResidualScale smaller.
// The residual stream then stays dominated by each token's own embedding through every layer, so
// routers see distinct inputs per token. With all matrices at 1/sqrt(in) the layer outputs swamp
// the embeddings, attention averages tokens together, and routing collapses onto a few experts.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "tandem/error.hpp"
#include "tandem/model/synth.hpp"
#include "text/tokenizer/byte_level.hpp"

namespace tandem {
namespace {

constexpr int64_t kWriteChunkBlocks = 16384;

struct TensorList {
  const SynthPreset& p;
  int64_t layers;
  SynthQuant quant;
  float residual_scale;
  std::vector<SynthTensor> out;

  void matrix(const std::string& name, std::vector<int64_t> dims, bool writes_residual) {
    const int64_t in = dims.back();
    const DType t = synth_matrix_type(quant, name, layers, p.experts, in);
    const float rms = (writes_residual ? residual_scale : 1.0f) / std::sqrt(static_cast<float>(in));
    out.push_back({name, t, std::move(dims), SynthTensor::Fill::random, rms});
  }
  void vector(const std::string& name, int64_t size, SynthTensor::Fill fill) {
    out.push_back({name, DType::f32, {size}, fill, 0.0f});
  }
  void router(const std::string& name) {
    out.push_back({name, DType::f32, {p.experts, p.hidden}, SynthTensor::Fill::random,
                   1.0f / std::sqrt(static_cast<float>(p.hidden))});
  }

  void attention(const std::string& b) {
    const int64_t h = p.hidden;
    if (p.kv_lora == 0) {
      matrix(b + "attn_q.weight", {p.heads * p.head_dim, h}, false);
      matrix(b + "attn_k.weight", {p.kv_heads * p.head_dim, h}, false);
      matrix(b + "attn_v.weight", {p.kv_heads * p.head_dim, h}, false);
      matrix(b + "attn_output.weight", {h, p.heads * p.head_dim}, true);
      if (p.gguf_arch == "qwen3moe") {
        vector(b + "attn_q_norm.weight", p.head_dim, SynthTensor::Fill::ones);
        vector(b + "attn_k_norm.weight", p.head_dim, SynthTensor::Fill::ones);
      }
      return;
    }
    const int64_t q_out = p.heads * (p.qk_nope + p.qk_rope);
    if (p.q_lora > 0) {
      matrix(b + "attn_q_a.weight", {p.q_lora, h}, false);
      vector(b + "attn_q_a_norm.weight", p.q_lora, SynthTensor::Fill::ones);
      matrix(b + "attn_q_b.weight", {q_out, p.q_lora}, false);
    } else {
      matrix(b + "attn_q.weight", {q_out, h}, false);
    }
    matrix(b + "attn_kv_a_mqa.weight", {p.kv_lora + p.qk_rope, h}, false);
    vector(b + "attn_kv_a_norm.weight", p.kv_lora, SynthTensor::Fill::ones);
    matrix(b + "attn_kv_b.weight", {p.heads * (p.qk_nope + p.v_head), p.kv_lora}, false);
    matrix(b + "attn_output.weight", {h, p.heads * p.v_head}, true);
  }

  void feed_forward(const std::string& b, int64_t layer) {
    const int64_t h = p.hidden;
    if (!p.is_moe_layer(layer)) {
      matrix(b + "ffn_gate.weight", {p.intermediate, h}, false);
      matrix(b + "ffn_up.weight", {p.intermediate, h}, false);
      matrix(b + "ffn_down.weight", {h, p.intermediate}, true);
      return;
    }
    router(b + "ffn_gate_inp.weight");
    if (p.sigmoid_router) vector(b + "exp_probs_b.bias", p.experts, SynthTensor::Fill::zeros);
    const int64_t e = p.experts, inter = p.moe_intermediate;
    matrix(b + "ffn_gate_exps.weight", {e, inter, h}, false);
    matrix(b + "ffn_up_exps.weight", {e, inter, h}, false);
    matrix(b + "ffn_down_exps.weight", {e, h, inter}, true);
    if (p.shared_experts > 0) {
      const int64_t shared = p.shared_experts * inter;
      matrix(b + "ffn_gate_shexp.weight", {shared, h}, false);
      matrix(b + "ffn_up_shexp.weight", {shared, h}, false);
      matrix(b + "ffn_down_shexp.weight", {h, shared}, true);
    }
  }
};

int64_t checked_layers(const SynthPreset& p, int64_t layers) {
  if (layers == 0) return p.layers;
  if (layers < 0 || layers > p.layers)
    throw Error(ErrorKind::invalid_argument, "--layers " + std::to_string(layers) + " is outside 1.." +
                                                 std::to_string(p.layers) + " for " + std::string(p.name));
  return layers;
}

uint32_t file_type_id(SynthQuant quant) {  // llama_ftype
  switch (quant) {
    case SynthQuant::q4_k_m: return 15;
    case SynthQuant::q5_k_m: return 17;
    case SynthQuant::q8_0: return 7;
    case SynthQuant::iq4_xs: return 30;
    case SynthQuant::bf16: return 32;
  }
  return 0;
}

void set_vocabulary(GgufWriter& w, const SynthPreset& p) {
  std::vector<std::string> tokens(static_cast<size_t>(p.vocab));
  std::vector<int32_t> types(static_cast<size_t>(p.vocab), 1);  // normal
  for (const auto& s : p.specials) {
    tokens[static_cast<size_t>(s.id)] = std::string(s.text);
    types[static_cast<size_t>(s.id)] = 3;  // control
  }
  // Every byte first (so any text tokenizes), then fillers to the real size.
  int next_byte = 0;
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (!tokens[id].empty()) continue;
    tokens[id] = next_byte < 256 ? text::byte_level_char(static_cast<unsigned char>(next_byte++))
                                 : "<synth_" + std::to_string(id) + ">";
  }
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", std::string(p.tokenizer_pre));
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  // No merges (text encodes one token per byte), but the key is there: llama.cpp refuses a gpt2
  // vocabulary without it, and the peers must load the same file.
  w.set_string_array("tokenizer.ggml.merges", {});
  w.set_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(p.bos));
  w.set_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(p.eos));
  w.set_u32("tokenizer.ggml.padding_token_id", static_cast<uint32_t>(p.bos));
  w.set_bool("tokenizer.ggml.add_bos_token", p.gguf_arch != "qwen3moe");
}

void set_model_metadata(GgufWriter& w, const SynthPreset& p, int64_t layers, SynthQuant quant) {
  const std::string a = std::string(p.gguf_arch) + ".";
  auto u32 = [](int64_t v) { return static_cast<uint32_t>(v); };
  w.set_string("general.architecture", std::string(p.gguf_arch));
  w.set_string("general.name", std::string(p.model_name) + " (synthetic, random weights)");
  w.set_u32("general.file_type", file_type_id(quant));
  w.set_u32("general.quantization_version", 2);
  w.set_u32(a + "block_count", u32(layers));
  w.set_u32(a + "context_length", u32(p.context));
  w.set_u32(a + "embedding_length", u32(p.hidden));
  w.set_u32(a + "feed_forward_length", u32(p.intermediate));
  w.set_u32(a + "attention.head_count", u32(p.heads));
  w.set_u32(a + "attention.head_count_kv", u32(p.kv_heads));
  w.set_f32(a + "rope.freq_base", static_cast<float>(p.rope_theta));
  w.set_f32(a + "attention.layer_norm_rms_epsilon", static_cast<float>(p.rms_eps));
  w.set_u32(a + "expert_count", u32(p.experts));
  w.set_u32(a + "expert_used_count", u32(p.top_k));
  w.set_u32(a + "vocab_size", u32(p.vocab));
  if (p.gguf_arch == "llama") {
    w.set_u32(a + "rope.dimension_count", u32(p.head_dim));
    return;
  }
  w.set_u32(a + "expert_feed_forward_length", u32(p.moe_intermediate));
  if (p.gguf_arch == "qwen3moe") {
    w.set_u32(a + "attention.key_length", u32(p.head_dim));
    w.set_u32(a + "attention.value_length", u32(p.head_dim));
    return;
  }
  // deepseek2
  w.set_u32(a + "leading_dense_block_count", u32(std::min(p.first_dense, layers)));
  if (p.q_lora > 0) w.set_u32(a + "attention.q_lora_rank", u32(p.q_lora));
  w.set_u32(a + "attention.kv_lora_rank", u32(p.kv_lora));
  w.set_u32(a + "attention.key_length", u32(p.qk_nope + p.qk_rope));
  w.set_u32(a + "attention.value_length", u32(p.v_head));
  w.set_u32(a + "rope.dimension_count", u32(p.qk_rope));
  w.set_u32(a + "expert_shared_count", u32(p.shared_experts));
  w.set_f32(a + "expert_weights_scale", static_cast<float>(p.routed_scale));
  w.set_bool(a + "expert_weights_norm", p.norm_topk);
  w.set_u32(a + "expert_gating_func", p.sigmoid_router ? 2 : 1);
  if (p.expert_groups > 0) {
    w.set_u32(a + "expert_group_count", u32(p.expert_groups));
    w.set_u32(a + "expert_group_used_count", u32(p.expert_groups_used));
  }
  if (p.yarn_factor > 0) {
    w.set_string(a + "rope.scaling.type", "yarn");
    w.set_f32(a + "rope.scaling.factor", static_cast<float>(p.yarn_factor));
    w.set_u32(a + "rope.scaling.original_context_length", u32(p.yarn_original_context));
    w.set_f32(a + "rope.scaling.yarn_log_multiplier", static_cast<float>(p.yarn_log_multiplier));
  }
}

}  // namespace

std::vector<SynthTensor> synth_tensors(const SynthPreset& preset, int64_t layers, SynthQuant quant,
                                       float residual_scale) {
  layers = checked_layers(preset, layers);
  if (!(residual_scale > 0.0f && residual_scale <= 10.0f))
    throw Error(ErrorKind::invalid_argument, "--residual-scale " + std::to_string(residual_scale) + " is outside (0, 10]");
  TensorList list{preset, layers, quant, residual_scale, {}};
  const DType embedding_type = synth_matrix_type(quant, "token_embd.weight", layers, preset.experts, preset.hidden);
  list.out.push_back({"token_embd.weight", embedding_type, {preset.vocab, preset.hidden}, SynthTensor::Fill::random, 1.0f});
  for (int64_t layer = 0; layer < layers; ++layer) {
    const std::string b = "blk." + std::to_string(layer) + ".";
    list.vector(b + "attn_norm.weight", preset.hidden, SynthTensor::Fill::ones);
    list.attention(b);
    list.vector(b + "ffn_norm.weight", preset.hidden, SynthTensor::Fill::ones);
    list.feed_forward(b, layer);
  }
  list.vector("output_norm.weight", preset.hidden, SynthTensor::Fill::ones);
  list.matrix("output.weight", {preset.vocab, preset.hidden}, false);
  return std::move(list.out);
}

GgufWriter plan_synthetic_metadata(const SynthOptions& options) {
  const SynthPreset& p = synth_preset(options.preset);
  GgufWriter w;
  set_model_metadata(w, p, checked_layers(p, options.layers), options.quant);
  set_vocabulary(w, p);
  return w;
}

GgufWriter plan_synthetic_model(const SynthOptions& options) {
  const SynthPreset& p = synth_preset(options.preset);
  GgufWriter w = plan_synthetic_metadata(options);
  for (const SynthTensor& t : synth_tensors(p, options.layers, options.quant, options.residual_scale))
    w.add_tensor(t.name, t.dtype, t.dims);
  return w;
}

uint64_t write_synthetic_model(const SynthOptions& options, const std::string& path) {
  const SynthPreset& p = synth_preset(options.preset);
  const std::vector<SynthTensor> tensors = synth_tensors(p, options.layers, options.quant, options.residual_scale);
  const GgufWriter w = plan_synthetic_model(options);
  std::vector<uint8_t> chunk;
  size_t index = 0;
  w.write(path, [&](const GgufWriter::TensorInfo& info, GgufWriter::DataSink& sink) {
    const SynthTensor& t = tensors.at(index);
    const uint64_t tensor_seed = options.seed * 1000003 + index++;
    if (t.name != info.name) throw Error(ErrorKind::internal, "synth: tensor order changed at " + info.name);
    const auto block_bytes = static_cast<uint64_t>(dtype_traits(t.dtype).block_bytes);
    const uint64_t blocks = info.nbytes / block_bytes;
    for (uint64_t first = 0; first < blocks; first += kWriteChunkBlocks) {
      const uint64_t count = std::min<uint64_t>(kWriteChunkBlocks, blocks - first);
      chunk.resize(count * block_bytes);
      if (t.fill == SynthTensor::Fill::random) {
        fill_random_blocks(t.dtype, t.rms, tensor_seed ^ (first * 0x9e3779b97f4a7c15ull), chunk.data(),
                           static_cast<int64_t>(count));
      } else {
        const float v = t.fill == SynthTensor::Fill::ones ? 1.0f : 0.0f;
        for (uint64_t i = 0; i < count; ++i) std::memcpy(chunk.data() + 4 * i, &v, 4);
      }
      sink.write(chunk.data(), chunk.size());
    }
  });
  return w.file_bytes();
}

}  // namespace tandem
