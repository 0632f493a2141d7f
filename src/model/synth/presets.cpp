// The published models `tandem synth` imitates: shapes from their config.json, metadata values as
// llama.cpp's converter writes them.
#include "tandem/error.hpp"
#include "tandem/model/synth.hpp"

namespace tandem {
namespace {

SynthPreset qwen3_moe(std::string_view name, std::string_view model_name, int64_t hidden, int64_t layers,
                      int64_t heads, int64_t intermediate, int64_t moe_intermediate) {
  SynthPreset p;
  p.name = name;
  p.model_name = model_name;
  p.gguf_arch = "qwen3moe";
  p.vocab = 151936;
  p.hidden = hidden;
  p.layers = layers;
  p.context = 40960;
  p.heads = heads;
  p.kv_heads = 4;
  p.head_dim = 128;
  p.intermediate = intermediate;
  p.moe_intermediate = moe_intermediate;
  p.experts = 128;
  p.top_k = 8;
  p.norm_topk = true;
  p.rope_theta = 1e6;
  p.rms_eps = 1e-6;
  p.tokenizer_pre = "qwen2";
  p.specials = {{151643, "<|endoftext|>"}, {151644, "<|im_start|>"}, {151645, "<|im_end|>"}};
  p.bos = 151643;
  p.eos = 151645;
  return p;
}

SynthPreset deepseek_v3() {
  SynthPreset p;
  p.name = "deepseek-v3";
  p.model_name = "DeepSeek-V3";
  p.gguf_arch = "deepseek2";
  p.vocab = 129280;
  p.hidden = 7168;
  p.layers = 61;
  p.context = 163840;
  p.heads = p.kv_heads = 128;
  p.q_lora = 1536;
  p.kv_lora = 512;
  p.qk_nope = 128;
  p.qk_rope = 64;
  p.v_head = 128;
  p.head_dim = p.qk_nope + p.qk_rope;
  p.intermediate = 18432;
  p.moe_intermediate = 2048;
  p.experts = 256;
  p.top_k = 8;
  p.shared_experts = 1;
  p.first_dense = 3;
  p.sigmoid_router = true;
  p.expert_groups = 8;
  p.expert_groups_used = 4;
  p.routed_scale = 2.5;
  p.norm_topk = true;
  p.yarn_factor = 40;
  p.yarn_original_context = 4096;
  p.yarn_log_multiplier = 0.1;  // 0.1 · mscale_all_dim (1.0)
  p.tokenizer_pre = "deepseek-v3";
  p.specials = {{0, "<｜begin▁of▁sentence｜>"}, {1, "<｜end▁of▁sentence｜>"}};
  p.bos = 0;
  p.eos = 1;
  return p;
}

SynthPreset deepseek_v2_lite() {
  SynthPreset p;
  p.name = "deepseek-v2-lite";
  p.model_name = "DeepSeek-V2-Lite";
  p.gguf_arch = "deepseek2";
  p.vocab = 102400;
  p.hidden = 2048;
  p.layers = 27;
  p.context = 163840;
  p.heads = p.kv_heads = 16;
  p.kv_lora = 512;
  p.qk_nope = 128;
  p.qk_rope = 64;
  p.v_head = 128;
  p.head_dim = p.qk_nope + p.qk_rope;
  p.intermediate = 10944;
  p.moe_intermediate = 1408;
  p.experts = 64;
  p.top_k = 6;
  p.shared_experts = 2;
  p.first_dense = 1;
  p.yarn_factor = 40;
  p.yarn_original_context = 4096;
  p.yarn_log_multiplier = 0.0707;  // 0.1 · mscale_all_dim (0.707)
  p.tokenizer_pre = "deepseek-llm";
  p.specials = {{100000, "<｜begin▁of▁sentence｜>"}, {100001, "<｜end▁of▁sentence｜>"}};
  p.bos = 100000;
  p.eos = 100001;
  return p;
}

SynthPreset mixtral_8x7b() {
  SynthPreset p;
  p.name = "mixtral-8x7b";
  p.model_name = "Mixtral-8x7B-v0.1";
  p.gguf_arch = "llama";
  p.vocab = 32000;
  p.hidden = 4096;
  p.layers = 32;
  p.context = 32768;
  p.heads = 32;
  p.kv_heads = 8;
  p.head_dim = 128;
  p.intermediate = 14336;
  p.moe_intermediate = 14336;
  p.experts = 8;
  p.top_k = 2;
  p.norm_topk = true;
  p.rope_theta = 1e6;
  p.rms_eps = 1e-5;
  // Mixtral ships a SentencePiece vocabulary; the synthetic one is byte-level BPE of the same size
  // so that Tandem's tokenizer loads it.
  p.tokenizer_pre = "gpt-2";
  p.specials = {{0, "<unk>"}, {1, "<s>"}, {2, "</s>"}};
  p.bos = 1;
  p.eos = 2;
  return p;
}

}  // namespace

const std::vector<SynthPreset>& synth_presets() {
  static const std::vector<SynthPreset> presets = {
      qwen3_moe("qwen3-30b-a3b", "Qwen3-30B-A3B", 2048, 48, 32, 6144, 768),
      qwen3_moe("qwen3-235b-a22b", "Qwen3-235B-A22B", 4096, 94, 64, 12288, 1536),
      deepseek_v3(),
      deepseek_v2_lite(),
      mixtral_8x7b(),
  };
  return presets;
}

const SynthPreset& synth_preset(std::string_view name) {
  std::string known;
  for (const SynthPreset& p : synth_presets()) {
    if (p.name == name) return p;
    known += (known.empty() ? "" : ", ") + std::string(p.name);
  }
  throw Error(ErrorKind::invalid_argument, "unknown preset '" + std::string(name) + "' (presets: " + known + ")");
}

SynthQuant synth_quant_from_name(std::string_view name) {
  for (SynthQuant q : {SynthQuant::q4_k_m, SynthQuant::q5_k_m, SynthQuant::q8_0, SynthQuant::iq4_xs, SynthQuant::bf16})
    if (synth_quant_name(q) == name) return q;
  throw Error(ErrorKind::invalid_argument,
              "unknown quant type '" + std::string(name) + "' (q4_k_m, q5_k_m, q8_0, iq4_xs, bf16)");
}

std::string_view synth_quant_name(SynthQuant quant) {
  switch (quant) {
    case SynthQuant::q4_k_m: return "q4_k_m";
    case SynthQuant::q5_k_m: return "q5_k_m";
    case SynthQuant::q8_0: return "q8_0";
    case SynthQuant::iq4_xs: return "iq4_xs";
    case SynthQuant::bf16: return "bf16";
  }
  return "?";
}

}  // namespace tandem
