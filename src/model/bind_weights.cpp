// bind_weights: the architecture's name table + the config's shapes → Weights. Every tensor is
// checked against the shape the config implies; views stay in the mapping.
#include <charconv>
#include <string>

#include "model/architecture.hpp"
#include "tandem/error.hpp"
#include "tandem/model/model_files.hpp"

namespace tandem {
namespace {

using model::TensorRole;

// DeepSeek FP8 checkpoints: one F32 scale per 128×128 block of the weight.
constexpr int64_t kFp8BlockSize = 128;

class WeightBinder {
 public:
  WeightBinder(const ModelFiles& files, const model::TensorNames& names)
      : table_(files.tensors()), names_(names), c_(files.config), merged_experts_(files.format == ModelFiles::Format::gguf) {}

  Weights bind() {
    check_no_layers_beyond_config();
    Weights w;
    const int64_t hidden = c_.hidden_size;
    w.token_embedding = tensor(TensorRole::token_embedding, -1, {c_.vocab_size, hidden});
    w.output_norm = norm(TensorRole::output_norm, -1, hidden);
    const std::string output_name = names_.name(TensorRole::output);
    if (c_.tie_word_embeddings || (merged_experts_ && !table_.find(output_name))) {
      w.output.weight = w.token_embedding;  // GGUF drops output.weight when tied
    } else {
      w.output = linear(TensorRole::output, -1, c_.vocab_size, hidden);
    }
    w.layers.reserve(static_cast<size_t>(c_.num_layers));
    for (int64_t layer = 0; layer < c_.num_layers; ++layer) w.layers.push_back(bind_layer(layer));
    return w;
  }

 private:
  // Layers past the configured count would otherwise be ignored: the model would run with part of
  // its layers and no sign of it. A DeepSeek hub checkpoint's MTP layers follow the last one.
  void check_no_layers_beyond_config() const {
    const std::string& pattern = names_.pattern(TensorRole::attn_norm);
    const size_t at = pattern.find("{L}");
    if (at == std::string::npos) return;
    const std::string_view prefix = std::string_view(pattern).substr(0, at);  // "blk.", "model.layers."
    const int64_t allowed = c_.num_layers + (merged_experts_ ? 0 : c_.num_nextn_predict_layers);
    for (const TensorEntry& e : table_.entries()) {
      if (!e.name.starts_with(prefix)) continue;
      const char* first = e.name.data() + prefix.size();
      const char* last = e.name.data() + e.name.size();
      int64_t layer = 0;
      const auto [end, ec] = std::from_chars(first, last, layer);
      // A number too large for int64 is beyond the config too.
      const bool is_layer = end != first && end != last && *end == '.';
      if (!is_layer || (ec == std::errc() && layer < allowed)) continue;
      std::string limit;
      if (merged_experts_) {
        limit = "block_count=" + std::to_string(c_.num_layers);
      } else {
        limit = "num_hidden_layers=" + std::to_string(c_.num_layers);
        if (c_.num_nextn_predict_layers > 0)
          limit += " + num_nextn_predict_layers=" + std::to_string(c_.num_nextn_predict_layers);
      }
      throw Error(ErrorKind::corrupt_file, e.file + ": has layer tensors beyond " + limit + " (tensor " + e.name +
                                               " is in layer " + std::string(first, end) +
                                               "); the config or the file is wrong");
    }
  }

  LayerWeights bind_layer(int64_t L) {
    LayerWeights lw;
    const int64_t hidden = c_.hidden_size;
    lw.attn_norm = norm(TensorRole::attn_norm, L, hidden);
    lw.ffn_norm = norm(TensorRole::ffn_norm, L, hidden);
    if (c_.attention == AttentionKind::gqa) {
      const int64_t q_out = c_.num_heads * c_.head_dim, kv_out = c_.num_kv_heads * c_.head_dim;
      lw.q = linear(TensorRole::q, L, q_out, hidden, c_.qkv_bias);
      lw.k = linear(TensorRole::k, L, kv_out, hidden, c_.qkv_bias);
      lw.v = linear(TensorRole::v, L, kv_out, hidden, c_.qkv_bias);
      lw.o = linear(TensorRole::o, L, hidden, q_out);
      if (c_.qk_norm) {
        lw.q_norm = norm(TensorRole::q_norm, L, c_.head_dim);
        lw.k_norm = norm(TensorRole::k_norm, L, c_.head_dim);
      }
    } else {
      const int64_t q_out = c_.num_heads * (c_.qk_nope_head_dim + c_.qk_rope_head_dim);
      if (c_.q_lora_rank > 0) {
        lw.q_a = linear(TensorRole::q_a, L, c_.q_lora_rank, hidden);
        lw.q_a_norm = norm(TensorRole::q_a_norm, L, c_.q_lora_rank);
        lw.q_b = linear(TensorRole::q_b, L, q_out, c_.q_lora_rank);
      } else {
        lw.q = linear(TensorRole::q, L, q_out, hidden);
      }
      lw.kv_a = linear(TensorRole::kv_a, L, c_.kv_lora_rank + c_.qk_rope_head_dim, hidden);
      lw.kv_a_norm = norm(TensorRole::kv_a_norm, L, c_.kv_lora_rank);
      lw.kv_b = linear(TensorRole::kv_b, L, c_.num_heads * (c_.qk_nope_head_dim + c_.v_head_dim), c_.kv_lora_rank);
      lw.o = linear(TensorRole::o, L, hidden, c_.num_heads * c_.v_head_dim);
    }

    lw.is_moe = c_.is_moe_layer(L);
    if (!lw.is_moe) {
      lw.ffn_gate = linear(TensorRole::ffn_gate, L, c_.intermediate_size, hidden);
      lw.ffn_up = linear(TensorRole::ffn_up, L, c_.intermediate_size, hidden);
      lw.ffn_down = linear(TensorRole::ffn_down, L, hidden, c_.intermediate_size);
      return lw;
    }
    const int64_t experts = c_.num_experts, inter = c_.moe_intermediate_size;
    lw.router = linear(TensorRole::router, L, experts, hidden);
    if (c_.router == RouterKind::sigmoid_noaux_tc) lw.router_bias = norm(TensorRole::router_bias, L, experts);
    bind_experts(L, TensorRole::expert_gate, inter, hidden, lw.experts.gate);
    bind_experts(L, TensorRole::expert_up, inter, hidden, lw.experts.up);
    bind_experts(L, TensorRole::expert_down, hidden, inter, lw.experts.down);
    const int64_t shared = c_.num_shared_experts > 0 ? c_.num_shared_experts * inter : c_.shared_expert_intermediate_size;
    if (shared > 0) {
      lw.shared_gate = linear(TensorRole::shared_gate, L, shared, hidden);
      lw.shared_up = linear(TensorRole::shared_up, L, shared, hidden);
      lw.shared_down = linear(TensorRole::shared_down, L, hidden, shared);
    }
    if (c_.shared_expert_gate) {
      // GGUF stores the [1, hidden] gate as a vector.
      const std::string name = names_.name(TensorRole::shared_expert_gate, L);
      const TensorEntry* e = table_.find(name);
      if (e && e->view.shape == Shape{hidden}) {
        lw.shared_expert_gate.weight = e->view;
        lw.shared_expert_gate.weight.shape = Shape{1, hidden};
      } else {
        lw.shared_expert_gate = linear(TensorRole::shared_expert_gate, L, 1, hidden);
      }
    }
    return lw;
  }

  void bind_experts(int64_t L, TensorRole role, int64_t out, int64_t in, std::vector<LinearWeight>& dst) {
    const auto count = static_cast<size_t>(c_.num_experts);
    dst.resize(count);
    if (merged_experts_) {
      const TensorView merged = tensor(role, L, {c_.num_experts, out, in});
      for (size_t e = 0; e < count; ++e) dst[e].weight = merged.slice_outer(static_cast<int64_t>(e));
      return;
    }
    for (size_t e = 0; e < count; ++e) dst[e] = linear(role, L, out, in, false, static_cast<int64_t>(e));
  }

  LinearWeight linear(TensorRole role, int64_t L, int64_t out, int64_t in, bool with_bias = false, int64_t expert = -1) {
    const std::string name = names_.name(role, L, expert);
    LinearWeight lw;
    lw.weight = by_name(name, {out, in});
    if (with_bias) lw.bias = by_name(bias_name(name), {out});
    if (lw.weight.dtype == DType::f8_e4m3) {
      const int64_t rows = (out + kFp8BlockSize - 1) / kFp8BlockSize, cols = (in + kFp8BlockSize - 1) / kFp8BlockSize;
      lw.scale_inv = by_name(name + "_scale_inv", {rows, cols});
      require_float(name + "_scale_inv", lw.scale_inv, /*f32_only=*/true);
    }
    return lw;
  }

  TensorView norm(TensorRole role, int64_t L, int64_t size) {
    const std::string name = names_.name(role, L);
    TensorView v = by_name(name, {size});
    require_float(name, v, false);
    return v;
  }

  TensorView tensor(TensorRole role, int64_t L, Shape expected) { return by_name(names_.name(role, L), expected); }

  TensorView by_name(const std::string& name, const Shape& expected) {
    if (name.empty())
      throw Error(ErrorKind::internal, "architecture " + c_.architecture_name + " names no tensor for a role it uses");
    const TensorEntry* e = table_.find(name);
    if (!e)
      throw Error(ErrorKind::corrupt_file, "tensor " + name + " is missing (expected shape " + expected.to_string() + ")");
    if (!(e->view.shape == expected))
      throw Error(ErrorKind::corrupt_file, "tensor " + name + " in " + e->file + " has shape " +
                                               e->view.shape.to_string() + ", expected " + expected.to_string());
    return e->view;
  }

  static void require_float(const std::string& name, const TensorView& v, bool f32_only) {
    const bool ok = v.dtype == DType::f32 || (!f32_only && (v.dtype == DType::f16 || v.dtype == DType::bf16));
    if (!ok)
      throw Error(ErrorKind::unsupported, "tensor " + name + " has type " + std::string(dtype_name(v.dtype)) +
                                              ", expected " + (f32_only ? "f32" : "f32, f16 or bf16"));
  }

  static std::string bias_name(const std::string& weight_name) {
    constexpr std::string_view suffix = ".weight";
    if (weight_name.size() > suffix.size() && weight_name.ends_with(suffix))
      return weight_name.substr(0, weight_name.size() - suffix.size()) + ".bias";
    return weight_name + ".bias";
  }

  const TensorTable& table_;
  const model::TensorNames& names_;
  const ModelConfig& c_;
  bool merged_experts_;
};

}  // namespace

Weights bind_weights(const ModelFiles& files) {
  const model::ArchitectureDescription& arch = model::describe(files.config.architecture);
  const bool gguf = files.format == ModelFiles::Format::gguf;
  return WeightBinder(files, gguf ? arch.gguf_names : arch.hub_names).bind();
}

}  // namespace tandem
