// bind_weights over every fixture file: shapes from the config, views into the mapping, and the
// GGUF converter's merged expert tensors sliced back to the hub's per-expert tensors.
#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "model/gguf_patch.hpp"
#include "model/model_test_support.hpp"
#include "support/fixtures.hpp"
#include "tandem/error.hpp"
#include "tandem/model/model_files.hpp"
#include "tandem/model/weight_roles.hpp"

using namespace tandem;
using tandem::test::fixture_models;

namespace {

bool same_bytes(const TensorView& a, const TensorView& b) {
  return a.dtype == b.dtype && a.shape == b.shape && a.nbytes == b.nbytes &&
         std::memcmp(a.data, b.data, a.nbytes) == 0;
}

// Calls f(a, b) for each pair of linear weights both bindings filled.
template <class F>
void for_each_linear_pair(const LayerWeights& a, const LayerWeights& b, F&& f) {
  const LinearWeight LayerWeights::*linears[] = {
      &LayerWeights::q,      &LayerWeights::k,        &LayerWeights::v,         &LayerWeights::o,
      &LayerWeights::q_a,    &LayerWeights::q_b,      &LayerWeights::kv_a,      &LayerWeights::kv_b,
      &LayerWeights::ffn_gate, &LayerWeights::ffn_up, &LayerWeights::ffn_down,  &LayerWeights::router,
      &LayerWeights::shared_gate, &LayerWeights::shared_up, &LayerWeights::shared_down,
      &LayerWeights::shared_expert_gate};
  for (auto member : linears) {
    CHECK((a.*member).empty() == (b.*member).empty());
    if (!(a.*member).empty() && !(b.*member).empty()) f(a.*member, b.*member);
  }
  REQUIRE(a.experts.count() == b.experts.count());
  for (size_t e = 0; e < a.experts.count(); ++e) {
    f(a.experts.gate[e], b.experts.gate[e]);
    f(a.experts.up[e], b.experts.up[e]);
    f(a.experts.down[e], b.experts.down[e]);
  }
}

}  // namespace

TEST_CASE("every fixture model binds, with views into the mapping", "[model][weights]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  for (const auto& m : fixture_models()) {
    std::vector<std::string> paths = {fx + "/" + m.folder};
    for (const auto& g : m.gguf_files) paths.push_back(fx + "/" + m.folder + "/" + g);
    for (const auto& path : paths) {
      INFO(path);
      ModelOverrides overrides;
      overrides.rope_theta = 1e6;  // qwen2moe GGUFs lack it; harmless for binding
      const ModelFiles files = open_model_files(path, overrides);
      const Weights w = bind_weights(files);
      const ModelConfig& c = files.config;
      REQUIRE(static_cast<int64_t>(w.layers.size()) == c.num_layers);
      const bool gguf = files.format == ModelFiles::Format::gguf;
      CHECK(w.token_embedding.data == files.tensors().require(gguf ? "token_embd.weight" : "model.embed_tokens.weight").view.data);
      CHECK(w.token_embedding.shape == Shape{c.vocab_size, c.hidden_size});
      CHECK(w.output.weight.shape == Shape{c.vocab_size, c.hidden_size});
      for (int64_t l = 0; l < c.num_layers; ++l) {
        const LayerWeights& lw = w.layers[static_cast<size_t>(l)];
        CHECK(lw.is_moe == c.is_moe_layer(l));
        if (!lw.is_moe) {
          CHECK(lw.experts.count() == 0);
          CHECK(lw.ffn_gate.weight.shape == Shape{c.intermediate_size, c.hidden_size});
          continue;
        }
        REQUIRE(lw.experts.count() == static_cast<size_t>(c.num_experts));
        for (size_t e = 0; e < lw.experts.count(); ++e) {
          CHECK(lw.experts.gate[e].weight.shape == Shape{c.moe_intermediate_size, c.hidden_size});
          CHECK(lw.experts.down[e].weight.shape == Shape{c.hidden_size, c.moe_intermediate_size});
        }
        if (gguf) {  // slices of one merged tensor, expert after expert
          const auto& e0 = lw.experts.up[0].weight;
          const auto& e1 = lw.experts.up[1].weight;
          CHECK(static_cast<const uint8_t*>(e1.data) - static_cast<const uint8_t*>(e0.data) ==
                static_cast<ptrdiff_t>(e0.nbytes));
        }
        CHECK(lw.router_bias.empty() == (c.router != RouterKind::sigmoid_noaux_tc));
        CHECK(lw.shared_expert_gate.empty() == !c.shared_expert_gate);
        if (c.shared_expert_gate) CHECK(lw.shared_expert_gate.weight.shape == Shape{1, c.hidden_size});
        if (c.attention == AttentionKind::mla) {
          CHECK(lw.q_a.empty() == (c.q_lora_rank == 0));
          CHECK(lw.q.empty() == (c.q_lora_rank > 0));
          CHECK(lw.kv_a.weight.shape == Shape{c.kv_lora_rank + c.qk_rope_head_dim, c.hidden_size});
        } else {
          CHECK(lw.q.bias.empty() == !c.qkv_bias);
          CHECK(lw.q_norm.empty() == !c.qk_norm);
        }
      }
    }
  }
}

TEST_CASE("F32 GGUF weights equal the safetensors weights role by role", "[model][weights][gguf]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  for (const char* name : {"qwen3moe", "qwen2moe", "deepseekv2lite", "deepseekv3"}) {
    INFO(name);
    const std::string dir = fx + "/tiny/" + name;
    ModelOverrides overrides;
    overrides.rope_theta = 1e6;
    const ModelFiles hub_files = open_model_files(dir);
    const ModelFiles gguf_files = open_model_files(dir + "/" + name + "-f32.gguf", overrides);
    const Weights hub = bind_weights(hub_files);
    const Weights gguf = bind_weights(gguf_files);
    CHECK(same_bytes(hub.token_embedding, gguf.token_embedding));
    CHECK(same_bytes(hub.output.weight, gguf.output.weight));
    CHECK(same_bytes(hub.output_norm, gguf.output_norm));
    int compared = 0;
    for (size_t l = 0; l < hub.layers.size(); ++l) {
      INFO("layer " << l);
      const LayerWeights& a = hub.layers[l];
      const LayerWeights& b = gguf.layers[l];
      CHECK(same_bytes(a.attn_norm, b.attn_norm));
      CHECK(same_bytes(a.ffn_norm, b.ffn_norm));
      if (!a.router_bias.empty()) CHECK(same_bytes(a.router_bias, b.router_bias));
      for_each_linear_pair(a, b, [&](const LinearWeight& x, const LinearWeight& y) {
        CHECK(same_bytes(x.weight, y.weight));
        CHECK(x.bias.empty() == y.bias.empty());
        if (!x.bias.empty()) CHECK(same_bytes(x.bias, y.bias));
        ++compared;
      });
    }
    CHECK(compared > 0);
  }
}

TEST_CASE("DeepSeek FP8 weights bind with their block scales", "[model][weights][fp8]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  const ModelFiles files = open_model_files(fx + "/tiny/deepseekv3-fp8");
  const Weights w = bind_weights(files);
  CHECK(w.token_embedding.dtype == DType::f32);
  int fp8 = 0;
  for (const LayerWeights& l : w.layers) {
    for (const LinearWeight* lw : {&l.q_a, &l.q_b, &l.kv_a, &l.kv_b, &l.o, &l.shared_gate, &l.ffn_down}) {
      if (lw->empty()) continue;
      CHECK(lw->weight.dtype == DType::f8_e4m3);
      CHECK(lw->scale_inv.dtype == DType::f32);
      CHECK(lw->scale_inv.shape == Shape{1, 1});  // every tiny matrix fits one 128×128 block
      ++fp8;
    }
    for (const LinearWeight& e : l.experts.gate) {
      CHECK(e.weight.dtype == DType::f8_e4m3);
      CHECK_FALSE(e.scale_inv.empty());
    }
    CHECK(l.router.weight.dtype == DType::f32);
    CHECK(l.router.scale_inv.empty());
  }
  CHECK(fp8 == 3 * 6);
}

TEST_CASE("tensors that do not fit the config give errors naming them", "[model][weights][errors]") {
  const ModelFiles good = open_model_files(tandem::test::data_dir() + "/tiny-qwen3moe");
  auto error_of = [](const ModelFiles& files) -> std::string {
    try {
      bind_weights(files);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  REQUIRE(error_of(good).empty());

  ModelFiles wider = good;
  wider.config.hidden_size = 72;
  const std::string shape_error = error_of(wider);
  CHECK(shape_error.find("model.embed_tokens.weight") != std::string::npos);
  CHECK(shape_error.find("[512, 64]") != std::string::npos);
  CHECK(shape_error.find("[512, 72]") != std::string::npos);

  ModelFiles deeper = good;
  deeper.config.num_layers = 4;
  const std::string missing = error_of(deeper);
  CHECK(missing.find("model.layers.3.input_layernorm.weight") != std::string::npos);
  CHECK(missing.find("missing") != std::string::npos);

  ModelFiles more_experts = good;
  more_experts.config.num_experts = 9;
  CHECK(error_of(more_experts).find("model.layers.0.mlp.gate.weight") != std::string::npos);

  ModelFiles tied = good;
  tied.config.tie_word_embeddings = true;
  const Weights w = bind_weights(tied);
  CHECK(w.output.weight.data == w.token_embedding.data);
}

TEST_CASE("layer tensors beyond the configured layer count are refused", "[model][weights][errors]") {
  auto error_of = [](const ModelFiles& files) -> std::string {
    try {
      bind_weights(files);
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::corrupt_file);
      return e.what();
    }
    return "";
  };
  const std::string tiny = tandem::test::data_dir() + "/tiny-qwen3moe";

  SECTION("GGUF block_count") {
    const auto dir = tandem::test::scratch_dir("block-count");
    auto bytes = tandem::test::read_bytes(tiny + "/qwen3moe-q8_0.gguf");
    tandem::test::patch_gguf_u32(bytes, "qwen3moe.block_count", 2);
    const std::string path = (dir / "shallow.gguf").string();
    tandem::test::write_bytes(path, bytes);
    const ModelFiles files = open_model_files(path);
    REQUIRE(files.config.num_layers == 2);
    const std::string error = error_of(files);
    CHECK_THAT(error, Catch::StartsWith(path + ": has layer tensors beyond block_count=2 (tensor blk.2."));
    CHECK_THAT(error, Catch::Contains("is in layer 2"));
    std::filesystem::remove_all(dir);
  }
  SECTION("HF num_hidden_layers, with DeepSeek's MTP layers allowed after the last") {
    ModelFiles files = open_model_files(tiny);
    REQUIRE(files.config.num_layers == 3);
    files.config.num_layers = 2;
    CHECK_THAT(error_of(files), Catch::Contains("has layer tensors beyond num_hidden_layers=2 (tensor model.layers.2."));
    files.config.num_nextn_predict_layers = 1;
    CHECK(error_of(files).empty());
    CHECK(bind_weights(files).layers.size() == 2);
  }
}

TEST_CASE("for_each_weight_tensor meets every tensor of the file, each once", "[model][weights]") {
  for (const std::string& path : {tandem::test::data_dir() + "/tiny-qwen3moe",
                                 tandem::test::data_dir() + "/tiny-qwen3moe/qwen3moe-q8_0.gguf",
                                 tandem::test::data_dir() + "/tiny-deepseekv3",
                                 tandem::test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf"}) {
    INFO(path);
    const ModelFiles files = open_model_files(path);
    const Weights weights = bind_weights(files);
    std::set<const void*> visited;
    std::map<const void*, int> non_expert_visits;
    size_t expert_views = 0;
    for_each_weight_tensor(weights, [&](WeightGroup g, int64_t layer, const TensorView& v, TensorRole) {
      if (v.empty()) return;
      visited.insert(v.data);
      if (g == WeightGroup::experts) {
        ++expert_views;
        CHECK(layer >= 0);
      } else {
        ++non_expert_visits[v.data];
      }
    });
    // Every tensor of the file is reached (a merged expert tensor through its first expert's slice).
    size_t unvisited = 0;
    for (const auto& entry : files.tensors().entries()) unvisited += visited.count(entry.view.data) == 0;
    CHECK(unvisited == 0);
    // Nothing is listed twice, but a tied output projection, which is the embedding.
    for (const auto& [data, visits] : non_expert_visits)
      CHECK(visits <= (data == weights.token_embedding.data ? 2 : 1));
    const auto moe_layers = std::count_if(weights.layers.begin(), weights.layers.end(),
                                          [](const LayerWeights& l) { return l.is_moe; });
    CHECK(expert_views == static_cast<size_t>(3 * files.config.num_experts * moe_layers));
  }
}
