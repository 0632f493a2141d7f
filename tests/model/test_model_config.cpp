// ModelConfig from config.json (hub and transformers-5 styles) and from GGUF metadata, checked
// against the JSON itself, HF's modeling semantics, and each other.
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "model/model_test_support.hpp"
#include "support/fixtures.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/gguf.hpp"
#include "tandem/model/config_readers.hpp"
#include "tandem/model/model_files.hpp"

using namespace tandem;
using tandem::test::fixture_models;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

int64_t json_experts(const nlohmann::json& j) {
  for (const char* key : {"num_experts", "n_routed_experts", "num_local_experts"})
    if (j.contains(key) && !j[key].is_null()) return j[key].get<int64_t>();
  return -1;
}

std::string error_of(const std::string& json_text) {
  try {
    parse_hf_config(json_text, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("config.json and config.v5.json give the same config, matching the JSON keys", "[model][config]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  for (const auto& m : fixture_models()) {
    INFO(m.folder);
    const std::string dir = fx + "/" + m.folder;
    const std::string hub_text = read_file(dir + "/config.json");
    const ModelConfig hub = parse_hf_config(hub_text, dir + "/config.json");
    const ModelConfig v5 = parse_hf_config(read_file(dir + "/config.v5.json"), dir + "/config.v5.json");
    tandem::test::require_same_forward_config(hub, v5);

    const auto j = nlohmann::json::parse(hub_text);
    CHECK(hub.architecture_name == j["model_type"].get<std::string>());
    CHECK(hub.hidden_size == j["hidden_size"].get<int64_t>());
    CHECK(hub.num_layers == j["num_hidden_layers"].get<int64_t>());
    CHECK(hub.vocab_size == j["vocab_size"].get<int64_t>());
    CHECK(hub.num_heads == j["num_attention_heads"].get<int64_t>());
    CHECK(hub.num_experts == json_experts(j));
    CHECK(hub.num_experts_per_tok == j["num_experts_per_tok"].get<int64_t>());
    CHECK(hub.max_position_embeddings == j["max_position_embeddings"].get<int64_t>());
    CHECK(hub.rope_theta == j["rope_theta"].get<double>());
    if (j.contains("moe_intermediate_size"))
      CHECK(hub.moe_intermediate_size == j["moe_intermediate_size"].get<int64_t>());
  }
}

TEST_CASE("architecture semantics follow HF modeling code", "[model][config]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  auto load = [&](const std::string& folder) { return open_model_files(fx + "/" + folder).config; };

  const ModelConfig q3 = load("tiny/qwen3moe");
  CHECK(q3.attention == AttentionKind::gqa);
  CHECK(q3.qk_norm);
  CHECK_FALSE(q3.qkv_bias);
  CHECK(q3.head_dim == 16);  // explicit head_dim, not hidden / heads
  CHECK(q3.rope_layout == RopeLayout::neox);
  CHECK(q3.router == RouterKind::softmax_topk);
  CHECK(q3.norm_topk_prob);
  CHECK(q3.kv_values_per_token_per_layer() == 2 * 2 * 16);
  for (int64_t l = 0; l < 3; ++l) CHECK(q3.is_moe_layer(l));

  const ModelConfig q2 = load("tiny/qwen2moe");
  CHECK(q2.qkv_bias);
  CHECK(q2.head_dim == 16);  // hidden 64 / 4 heads
  CHECK(q2.shared_expert_intermediate_size == 64);
  CHECK(q2.shared_expert_gate);
  CHECK_FALSE(q2.norm_topk_prob);

  const ModelConfig mx = load("tiny/mixtral");
  CHECK(mx.moe_intermediate_size == 64);  // Mixtral's intermediate_size is the expert width
  CHECK(mx.norm_topk_prob);
  CHECK(mx.eos_token_ids == std::vector<int64_t>{2});
  CHECK(mx.bos_token_id == 1);

  const ModelConfig v2 = load("tiny/deepseekv2lite");
  CHECK(v2.attention == AttentionKind::mla);
  CHECK(v2.q_lora_rank == 0);  // null: plain q projection
  CHECK(v2.router == RouterKind::softmax_topk);
  CHECK(v2.rope_layout == RopeLayout::interleaved);
  CHECK(v2.num_shared_experts == 2);
  CHECK_FALSE(v2.is_moe_layer(0));
  CHECK(v2.is_moe_layer(1));
  CHECK(v2.kv_values_per_token_per_layer() == 32 + 8);

  const ModelConfig v3 = load("tiny/deepseekv3");
  CHECK(v3.router == RouterKind::sigmoid_noaux_tc);
  CHECK(v3.n_group == 4);
  CHECK(v3.topk_group == 2);
  CHECK(v3.routed_scaling_factor == 2.5);
  CHECK(v3.head_dim == 24);  // nope 16 + rope 8 (v5's "head_dim": 8 is the rope part)
  CHECK(v3.rope_scaling.type == RopeScalingType::yarn);
  CHECK(v3.rope_scaling.factor == 4.0);
  CHECK(v3.rope_scaling.original_max_position_embeddings == 256);
  CHECK(v3.rope_scaling.mscale_all_dim == 1.0);
  CHECK(v3.first_k_dense == 1);
  CHECK(v3.eos_token_ids == std::vector<int64_t>{1});
}

TEST_CASE("GGUF metadata gives the config that config.json gives", "[model][config][gguf]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  int compared = 0;
  for (const auto& m : fixture_models()) {
    const std::string dir = fx + "/" + m.folder;
    const ModelConfig hub = open_model_files(dir).config;
    for (const auto& name : m.gguf_files) {
      INFO(m.folder << "/" << name);
      ModelOverrides overrides;
      ModelFiles files = open_model_files(dir + "/" + name);
      CHECK(files.format == ModelFiles::Format::gguf);
      if (hub.architecture == Architecture::qwen2_moe) {
        // The converter wrote no qwen2moe.rope.freq_base: llama.cpp's default applies, with a warning.
        CHECK(files.config.rope_theta == 10000.0);
        REQUIRE(files.warnings.size() == 1);
        CHECK(files.warnings[0].find("rope.freq_base") != std::string::npos);
        overrides.rope_theta = hub.rope_theta;
        files = open_model_files(dir + "/" + name, overrides);
      }
      CHECK(files.warnings.empty());
      // Rope layout included: Qwen is neox and DeepSeek interleaved in both formats (only a llama
      // GGUF, i.e. Mixtral, has q/k permuted to interleaved, and the fixtures have none).
      tandem::test::require_same_forward_config(files.config, hub);
      ++compared;
    }
  }
  CHECK(compared == 22);
}

TEST_CASE("DeepSeek-V3 GGUF without expert groups warns and accepts overrides", "[model][config][gguf]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  std::string bytes = read_file(fx + "/tiny/deepseekv3/deepseekv3-q8_0.gguf");
  // Rename the two keys in place (same length), as older converters simply did not write them.
  for (std::string key : {"deepseek2.expert_group_count", "deepseek2.expert_group_used_count"}) {
    const auto at = bytes.find(key);
    REQUIRE(at != std::string::npos);
    bytes[at + key.size() - 1] = '_';
  }
  const GgufFile gguf = GgufFile::from_memory(bytes.data(), bytes.size(), "old-v3.gguf");
  std::vector<std::string> warnings;
  const ModelConfig plain = config_from_gguf(gguf, {}, warnings);
  CHECK(plain.router == RouterKind::sigmoid_noaux_tc);
  CHECK(plain.n_group == 1);
  CHECK(plain.topk_group == 1);
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].find("not group-limited") != std::string::npos);

  warnings.clear();
  ModelOverrides overrides;
  overrides.n_group = 4;
  overrides.topk_group = 2;
  const ModelConfig fixed = config_from_gguf(gguf, overrides, warnings);
  CHECK(warnings.empty());
  CHECK(fixed.n_group == 4);
  CHECK(fixed.topk_group == 2);

  overrides.n_group = 3;  // does not divide 16 experts
  CHECK_THROWS_AS(config_from_gguf(gguf, overrides, warnings), Error);
}

TEST_CASE("bad config.json gives errors naming the problem", "[model][config][errors]") {
  const std::string text = read_file(tandem::test::data_dir() + "/tiny-qwen3moe/config.json");
  const auto base = nlohmann::json::parse(text);
  auto with = [&](const std::string& key, nlohmann::json value) {
    auto j = base;
    j[key] = std::move(value);
    return error_of(j.dump());
  };
  REQUIRE(error_of(text).empty());

  const std::string unknown = with("model_type", "llama4");
  CHECK(unknown.find("llama4") != std::string::npos);
  CHECK(unknown.find("qwen3_moe, qwen2_moe, mixtral, deepseek_v2, deepseek_v3") != std::string::npos);
  CHECK(with("num_key_value_heads", 3).find("num_key_value_heads") != std::string::npos);
  CHECK(with("num_experts_per_tok", 9).find("num_experts_per_tok") != std::string::npos);
  CHECK(with("hidden_size", "64").find("hidden_size") != std::string::npos);
  CHECK(with("hidden_size", -64).find("hidden_size") != std::string::npos);
  CHECK(with("num_hidden_layers", nullptr).find("num_hidden_layers") != std::string::npos);
  CHECK(with("mlp_only_layers", nlohmann::json::array({7})).find("mlp_only_layers") != std::string::npos);
  CHECK(with("rope_scaling", {{"type", "longrope"}}).find("longrope") != std::string::npos);
  CHECK(with("head_dim", 15).find("head_dim") != std::string::npos);
  CHECK(error_of("{\"model_type\": ").find("not valid JSON") != std::string::npos);
  CHECK(error_of("[1, 2]").find("object") != std::string::npos);

  auto v3 = nlohmann::json::parse(read_file(tandem::test::data_dir() + "/tiny-deepseekv3/config.json"));
  v3["n_group"] = 3;
  CHECK(error_of(v3.dump()).find("n_group") != std::string::npos);
  v3["n_group"] = 4;
  v3["topk_method"] = "random";
  CHECK(error_of(v3.dump()).find("random") != std::string::npos);

  // Every truncation of a valid file is either accepted or a tandem::Error, never anything else.
  for (size_t len = 0; len < text.size(); ++len) {
    try {
      parse_hf_config(std::string_view(text).substr(0, len), "config.json");
    } catch (const Error&) {
    }
  }
}
