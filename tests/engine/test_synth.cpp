// tandem synth: a synthetic DeepSeek-V2-Lite cut to two layers (one dense, one MoE) loads and
// runs, its tensors follow llama-quantize's Q4_K_M mix, its vocabulary loads as a tokenizer, and
// its routers spread tokens over the experts as a trained model's do. Bad input is refused.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <string>

#include "support/cli.hpp"
#include "tandem/engine/bench/routing_spread.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/formats/gguf.hpp"
#include "tandem/model/config_readers.hpp"
#include "tandem/model/synth.hpp"
#include "tandem/text/tokenizer.hpp"

using namespace tandem;
namespace fs = std::filesystem;

namespace {

// One synthetic file shared by the cases below (written once: it is ~650 MB).
const std::string& synthetic_v2_lite() {
  static const std::string path = [] {
    const std::string p = (fs::temp_directory_path() / "tandem_test_synth_v2lite.gguf").string();
    SynthOptions options;
    options.preset = "deepseek-v2-lite";
    options.layers = 2;
    options.seed = 7;
    const uint64_t bytes = write_synthetic_model(options, p);
    REQUIRE(fs::file_size(p) == bytes);
    return p;
  }();
  return path;
}

struct RemoveAtExit {
  ~RemoveAtExit() {
    std::error_code ignored;
    fs::remove(fs::temp_directory_path() / "tandem_test_synth_v2lite.gguf", ignored);
  }
} remove_at_exit;

DType type_of(const GgufFile& f, const std::string& name) {
  const TensorEntry* e = f.tensors().find(name);
  REQUIRE(e != nullptr);
  return e->view.dtype;
}

}  // namespace

TEST_CASE("synth: the file carries the preset's metadata and the Q4_K_M mix", "[engine][synth]") {
  const GgufFile f = GgufFile::open(synthetic_v2_lite());
  CHECK(f.architecture() == "deepseek2");
  CHECK(f.get_int("deepseek2.block_count") == 2);
  CHECK(f.get_int("deepseek2.leading_dense_block_count") == 1);
  CHECK(f.get_int("deepseek2.expert_count") == 64);
  CHECK(f.get_int("deepseek2.expert_used_count") == 6);
  CHECK(f.get_int("general.file_type") == 15);
  CHECK(f.require("tokenizer.ggml.tokens").as_array().size() == 102400);
  CHECK(f.require("tokenizer.ggml.merges").as_array().element_type == GgufType::string);  // llama.cpp needs the key

  // llama-quantize's choices for a 2-layer model: layer 1 is a "more bits" layer, layer 0 is not.
  CHECK(type_of(f, "token_embd.weight") == DType::q4_k);
  CHECK(type_of(f, "output.weight") == DType::q6_k);
  CHECK(type_of(f, "output_norm.weight") == DType::f32);
  CHECK(type_of(f, "blk.0.attn_norm.weight") == DType::f32);
  CHECK(type_of(f, "blk.0.attn_q.weight") == DType::q4_k);
  CHECK(type_of(f, "blk.0.attn_kv_b.weight") == DType::q4_k);
  CHECK(type_of(f, "blk.1.attn_kv_b.weight") == DType::q6_k);
  CHECK(type_of(f, "blk.0.ffn_gate.weight") == DType::q4_k);
  CHECK(type_of(f, "blk.0.ffn_down.weight") == DType::q5_0);  // 10944-wide rows: not whole 256-blocks
  CHECK(type_of(f, "blk.1.ffn_down_shexp.weight") == DType::q6_k);
  CHECK(type_of(f, "blk.1.ffn_gate_exps.weight") == DType::q4_k);
  CHECK(type_of(f, "blk.1.ffn_gate_inp.weight") == DType::f32);
  // 1408-wide expert rows are not whole 256-blocks: Q6_K falls back to Q8_0 (and Q4_K to Q5_0).
  CHECK(type_of(f, "blk.1.ffn_down_exps.weight") == DType::q8_0);
  // llama-quantize's rules for both K-quant mixes, which differ in the base type: Q6_K where more bits
  // pay (DeepSeek-V2-Lite's 27 layers: 5 is one, 4 is not), Q8_0 k/v and Q5_K attn_output for 8-expert
  // models (Mixtral), rows that are not whole 256-blocks falling back (Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0).
  struct MixCase {
    const char* name;
    int64_t layers, experts, row;
    DType q4_k_m, q5_k_m;
  };
  for (const MixCase& m : {MixCase{"blk.4.ffn_down_exps.weight", 27, 64, 1408, DType::q5_0, DType::q5_1},
                           MixCase{"blk.5.ffn_down_exps.weight", 27, 64, 1408, DType::q8_0, DType::q8_0},
                           MixCase{"blk.24.ffn_down_exps.weight", 48, 128, 768, DType::q4_k, DType::q5_k},
                           MixCase{"blk.24.ffn_gate_exps.weight", 48, 128, 2048, DType::q4_k, DType::q5_k},
                           MixCase{"blk.26.attn_v.weight", 48, 128, 2048, DType::q6_k, DType::q6_k},
                           MixCase{"output.weight", 48, 128, 2048, DType::q6_k, DType::q6_k},
                           MixCase{"blk.3.attn_v.weight", 32, 8, 4096, DType::q8_0, DType::q8_0},
                           MixCase{"blk.3.attn_k.weight", 32, 8, 4096, DType::q8_0, DType::q8_0},
                           MixCase{"blk.3.attn_output.weight", 32, 8, 4096, DType::q5_k, DType::q5_k}}) {
    INFO(m.name << " of " << m.layers << " layers, " << m.experts << " experts");
    CHECK(synth_matrix_type(SynthQuant::q4_k_m, m.name, m.layers, m.experts, m.row) == m.q4_k_m);
    CHECK(synth_matrix_type(SynthQuant::q5_k_m, m.name, m.layers, m.experts, m.row) == m.q5_k_m);
  }
  CHECK(synth_matrix_type(SynthQuant::iq4_xs, "blk.3.ffn_up_exps.weight", 48, 128, 2048) == DType::iq4_xs);
  CHECK(synth_quant_from_name("q5_k_m") == SynthQuant::q5_k_m);
  CHECK(synth_quant_name(SynthQuant::q5_k_m) == "q5_k_m");

  // Weights decode to about the RMS they were drawn at: 1/sqrt(2048) for a q projection row.
  const TensorView& q = f.tensors().find("blk.0.attn_q.weight")->view;
  std::vector<float> row(2048);
  double sum_sq = 0, sum = 0;
  for (int r = 0; r < 16; ++r) {
    dequantize_row(q.dtype, q.row_ptr(r), row.data(), 2048);
    for (float v : row) {
      sum_sq += double{v} * v;
      sum += v;
    }
  }
  const double rms = std::sqrt(sum_sq / (16 * 2048));
  CHECK(rms == Approx(1.0 / std::sqrt(2048.0)).epsilon(0.1));
  CHECK(std::abs(sum / (16 * 2048)) < 0.05 * rms);
}

TEST_CASE("synth: the model loads, tokenizes and runs with finite logits", "[engine][synth]") {
  LoadOptions options;
  options.threads = 2;
  options.max_context_tokens = 64;
  options.max_sessions = 1;
  const auto engine = Engine::load(synthetic_v2_lite(), options);
  CHECK(engine->config().num_experts == 64);
  REQUIRE(engine->tokenizer() != nullptr);
  const std::vector<int32_t> ids = engine->tokenizer()->encode("Hello, synthetic world!", false);
  CHECK(ids.size() == 23);  // no merges: one token per byte
  auto session = engine->new_session();
  session->prefill(ids);
  session->decode(5);
  const auto logits = session->logits();
  REQUIRE(logits.size() == 102400);
  bool finite = true;
  float lo = logits[0], hi = logits[0];
  for (float v : logits) {
    finite = finite && std::isfinite(v);
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  CHECK(finite);
  CHECK(hi - lo > 1.0f);  // not a constant row
}

TEST_CASE("synth: routing spreads over the experts as uniform routing would", "[engine][synth]") {
  const ModelFiles files = open_model_files(synthetic_v2_lite());
  const int64_t tokens = 96;
  const RoutingSpread spread = measure_routing_spread(files, tokens, 2, 3);
  REQUIRE(spread.experts_hit.size() == 1);
  const double uniform = RoutingSpread::uniform_fraction(tokens, 6, 64);
  INFO("hit " << spread.experts_hit[0] << " of 64; uniform routing would hit a fraction " << uniform);
  CHECK(spread.mean_fraction() > 0.5 * uniform);
  CHECK(spread.mean_fraction() > 0.8);  // collapsed routing hits a few experts
}

TEST_CASE("synth: every preset's metadata reads as the published model's config", "[engine][synth]") {
  const fs::path path = fs::temp_directory_path() / "tandem_test_synth_metadata.gguf";
  auto read_config = [&](const std::string& preset, std::vector<std::string>& warnings) {
    SynthOptions options;
    options.preset = preset;
    plan_synthetic_metadata(options).write(path.string(), [](const auto&, auto&) {});
    const GgufFile f = GgufFile::open(path.string());
    const auto tokenizer = Tokenizer::from_gguf(f);
    CHECK(tokenizer->decode(tokenizer->encode("héllo, wörld", false)) == "héllo, wörld");
    return config_from_gguf(f, {}, warnings);
  };
  std::vector<std::string> warnings;
  ModelConfig c = read_config("qwen3-30b-a3b", warnings);
  CHECK(c.architecture == Architecture::qwen3_moe);
  CHECK((c.num_layers == 48 && c.hidden_size == 2048 && c.num_heads == 32 && c.num_kv_heads == 4 && c.head_dim == 128));
  CHECK((c.num_experts == 128 && c.num_experts_per_tok == 8 && c.moe_intermediate_size == 768 && c.norm_topk_prob));
  CHECK((c.vocab_size == 151936 && c.rope_theta == 1e6 && c.qk_norm));
  CHECK(c.eos_token_ids == std::vector<int64_t>{151645});
  c = read_config("qwen3-235b-a22b", warnings);
  CHECK((c.num_layers == 94 && c.hidden_size == 4096 && c.num_heads == 64 && c.moe_intermediate_size == 1536));
  c = read_config("deepseek-v3", warnings);
  CHECK(c.architecture == Architecture::deepseek_v3);
  CHECK((c.attention == AttentionKind::mla && c.q_lora_rank == 1536 && c.kv_lora_rank == 512));
  CHECK((c.qk_nope_head_dim == 128 && c.qk_rope_head_dim == 64 && c.v_head_dim == 128 && c.num_heads == 128));
  CHECK((c.router == RouterKind::sigmoid_noaux_tc && c.n_group == 8 && c.topk_group == 4));
  CHECK((c.num_experts == 256 && c.num_experts_per_tok == 8 && c.num_shared_experts == 1 && c.first_k_dense == 3));
  CHECK((c.routed_scaling_factor == 2.5 && c.norm_topk_prob && c.intermediate_size == 18432));
  CHECK((c.rope_scaling.type == RopeScalingType::yarn && c.rope_scaling.factor == 40));
  CHECK(c.rope_scaling.mscale_all_dim == Approx(1.0));
  c = read_config("deepseek-v2-lite", warnings);
  CHECK(c.architecture == Architecture::deepseek_v2);
  CHECK((c.q_lora_rank == 0 && c.router == RouterKind::softmax_topk && c.num_shared_experts == 2));
  CHECK((c.num_experts == 64 && c.num_experts_per_tok == 6 && c.first_k_dense == 1 && !c.norm_topk_prob));
  CHECK(c.rope_scaling.mscale_all_dim == Approx(0.707));
  c = read_config("mixtral-8x7b", warnings);
  CHECK(c.architecture == Architecture::mixtral);
  CHECK((c.num_experts == 8 && c.num_experts_per_tok == 2 && c.moe_intermediate_size == 14336 && c.num_kv_heads == 8));
  CHECK(c.rms_norm_eps == Approx(1e-5));
  CHECK(warnings.empty());
  fs::remove(path);
}

TEST_CASE("synth CLI: writes a file, refuses bad input with clear errors", "[engine][synth][cli]") {
  using test::run_cli_captured;
  using test::shell_quote;
  const fs::path out = fs::temp_directory_path() / "tandem_test_synth_cli.gguf";
  auto r = run_cli_captured("synth --preset nope -o " + shell_quote(out.string()));
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("unknown preset 'nope'") && Catch::Contains("qwen3-30b-a3b"));
  r = run_cli_captured("synth --preset mixtral-8x7b --quant q3_k -o " + shell_quote(out.string()));
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("unknown quant type 'q3_k'"));
  r = run_cli_captured("synth --preset deepseek-v3 --layers 62 -o " + shell_quote(out.string()));
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("--layers 62 is outside 1..61"));
  r = run_cli_captured("synth --preset qwen3-30b-a3b --layers 0 -o " + shell_quote(out.string()));
  CHECK(r.exit_code == 1);  // 0 must not quietly mean every layer (a 17 GB file)
  CHECK_THAT(r.err, Catch::Contains("--layers 0 must be at least 1"));
  r = run_cli_captured("synth --preset qwen3-30b-a3b --residual-scale 0 -o " + shell_quote(out.string()));
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("--residual-scale") && Catch::Contains("outside (0, 10]"));
  r = run_cli_captured("synth --preset qwen3-30b-a3b --layers 1 -o /nonexistent-tandem-dir/x.gguf");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("/nonexistent-tandem-dir/x.gguf") && Catch::Contains("cannot create"));
  CHECK_FALSE(fs::exists(out));
}
