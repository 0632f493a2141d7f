// Expert deferral: the split of each token's routing (the lowest weights go later, nothing is
// lost), and the forward pass with deferral against an emulation written here from backend ops.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/golden_check.hpp"
#include "support/cli.hpp"
#include "support/fixtures.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/cpu/reference/expert_deferral.hpp"
#include "tandem/backend/cpu/reference/moe.hpp"
#include "tandem/backend/cpu/reference/rope.hpp"
#include "tandem/backend/cpu/reference/router.hpp"
#include "tandem/engine/forward.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/model/model_files.hpp"

namespace tandem::test {

TEST_CASE("expert deferral splits off each token's lowest-weighted experts", "[engine][deferral]") {
  const std::vector<int32_t> ids = {7, 3, 9, 1, /**/ 4, 5, 6, 2};
  const std::vector<float> w = {0.1f, 0.4f, 0.2f, 0.3f, /**/ 0.25f, 0.25f, 0.25f, 0.25f};
  std::vector<int32_t> kid(4), did(4);
  std::vector<float> kw(4), dw(4);
  split_deferred_experts(ids.data(), w.data(), 2, 4, 2, kid.data(), kw.data(), did.data(), dw.data());
  CHECK(kid == std::vector<int32_t>{3, 1, /**/ 4, 5});  // kept in routing order
  CHECK(kw == std::vector<float>{0.4f, 0.3f, 0.25f, 0.25f});
  CHECK(did == std::vector<int32_t>{7, 9, /**/ 6, 2});  // ties: the later slots are deferred
  CHECK(dw == std::vector<float>{0.1f, 0.2f, 0.25f, 0.25f});

  CHECK_THROWS_AS(split_deferred_experts(ids.data(), w.data(), 2, 4, 4, kid.data(), kw.data(), did.data(), dw.data()),
                  Error);
  CHECK_THROWS_AS(split_deferred_experts(ids.data(), w.data(), 2, 4, 0, kid.data(), kw.data(), did.data(), dw.data()),
                  Error);
}

TEST_CASE("expert deferral: kept ∪ deferred is the routing, every kept weight ≥ every deferred one",
          "[engine][deferral]") {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (int64_t top_k : {2, 6, 8}) {
    for (int64_t defer = 1; defer < top_k; ++defer) {
      const int64_t tokens = 5;
      std::vector<int32_t> ids(static_cast<size_t>(tokens * top_k));
      std::vector<float> w(ids.size());
      for (size_t i = 0; i < ids.size(); ++i) {
        ids[i] = static_cast<int32_t>(i);
        w[i] = std::round(u(rng) * 8.f) / 8.f;  // coarse, so ties happen
      }
      const int64_t keep = top_k - defer;
      std::vector<int32_t> kid(static_cast<size_t>(tokens * keep)), did(static_cast<size_t>(tokens * defer));
      std::vector<float> kw(kid.size()), dw(did.size());
      split_deferred_experts(ids.data(), w.data(), tokens, top_k, defer, kid.data(), kw.data(), did.data(), dw.data());
      for (int64_t t = 0; t < tokens; ++t) {
        std::vector<int32_t> all(kid.begin() + t * keep, kid.begin() + (t + 1) * keep);
        all.insert(all.end(), did.begin() + t * defer, did.begin() + (t + 1) * defer);
        std::sort(all.begin(), all.end());
        std::vector<int32_t> want(ids.begin() + t * top_k, ids.begin() + (t + 1) * top_k);
        CHECK(all == want);
        const float min_kept = *std::min_element(kw.begin() + t * keep, kw.begin() + (t + 1) * keep);
        const float max_deferred = *std::max_element(dw.begin() + t * defer, dw.begin() + (t + 1) * defer);
        CHECK(min_kept >= max_deferred);
        for (int64_t i = 0; i < keep; ++i)  // weights travel with their ids
          CHECK(kw[static_cast<size_t>(t * keep + i)] == w[static_cast<size_t>(kid[static_cast<size_t>(t * keep + i)])]);
      }
    }
  }
}

TEST_CASE("cpu backend: split_deferred_experts is the split function", "[engine][deferral][backend]") {
  auto b = make_cpu_backend(1);
  const int64_t tokens = 3, top_k = 4, defer = 2;
  const std::vector<int32_t> ids = {7, 3, 9, 1, 4, 5, 6, 2, 0, 8, 10, 11};
  const std::vector<float> w = {0.1f, 0.4f, 0.2f, 0.3f, 0.25f, 0.25f, 0.25f, 0.25f, 0.9f, 0.05f, 0.03f, 0.02f};
  std::vector<int32_t> kid(6), did(6), want_kid(6), want_did(6);
  std::vector<float> kw(6), dw(6), want_kw(6), want_dw(6);
  b->split_deferred_experts(ids.data(), w.data(), tokens, top_k, defer, kid.data(), kw.data(), did.data(), dw.data());
  split_deferred_experts(ids.data(), w.data(), tokens, top_k, defer, want_kid.data(), want_kw.data(), want_did.data(),
                         want_dw.data());
  CHECK(kid == want_kid);
  CHECK(kw == want_kw);
  CHECK(did == want_did);
  CHECK(dw == want_dw);
  CHECK(kid == std::vector<int32_t>{3, 1, 4, 5, 0, 8});
}

namespace {

struct TinyModel {
  ModelFiles files;
  Weights weights;
  explicit TinyModel(const std::string& name)
      : files(open_model_files(test::data_dir() + "/" + name)), weights(bind_weights(files)) {}
  const ModelConfig& config() const { return files.config; }
};

KvPool f32_pool(const ModelConfig& c, int64_t tokens) {
  KvPoolSpec spec{c.attention == AttentionKind::mla ? KvLayout::mla_latent : KvLayout::gqa, c.num_layers,
                  c.kv_values_per_token_per_layer(), 16, (tokens + 15) / 16 + 1, Device::cpu()};
  spec.dtype = KvType::f32;  // exact: the emulation below reads the values unrounded
  if (spec.layout == KvLayout::mla_latent) spec.rope_values = c.qk_rope_head_dim;
  return KvPool(spec);
}

// Logits [ids.size(), vocab] of one pass over `ids` from position 0, reference CPU kernels.
std::vector<float> forward_logits(const TinyModel& m, const std::vector<int32_t>& ids, int64_t defer) {
  const ModelConfig& c = m.config();
  auto backend = make_cpu_backend(1, CpuKernels::reference);
  KvPool kv = f32_pool(c, static_cast<int64_t>(ids.size()));
  BlockTable table;
  table.reserve(kv, static_cast<int64_t>(ids.size()));
  ForwardPass forward(c, m.weights, *backend, kv, static_cast<int64_t>(ids.size()), defer);
  std::vector<float> logits(ids.size() * static_cast<size_t>(c.vocab_size));
  const SequenceChunk chunk{ids, 0, &table, true};
  forward.run({&chunk, 1}, logits.data());
  table.release(kv);
  return logits;
}

// The first token of a sequence written out from backend ops, with deferral as the forward pass's
// contract states it (not as forward.cpp codes it). At position 0 attention sees one key, so each
// head's output is its value row: GQA's V head, MLA's normed latent expanded by kv_b; queries, keys
// and RoPE drop out. A deferred part of layer L joins the residual after layer L+1's feed-forward;
// the last layer defers nothing.
std::vector<float> emulate_first_token(const TinyModel& m, int32_t id, int64_t defer) {
  const ModelConfig& c = m.config();
  const Weights& w = m.weights;
  auto b = make_cpu_backend(1, CpuKernels::reference);
  const int64_t H = c.hidden_size, k = c.num_experts_per_tok;
  const RoutingParams routing = RoutingParams::from_config(c);
  int64_t widest = 1;
  for (const auto& l : w.layers) {
    widest = std::max({widest, l.ffn_gate.out_features(), l.shared_gate.out_features()});
    for (const auto& g : l.experts.gate) widest = std::max(widest, g.out_features());
  }
  const auto vec = [](int64_t n) { return std::vector<float>(static_cast<size_t>(n)); };
  std::vector<float> h = vec(H), x = vec(H), ffn = vec(H), shared = vec(H), gate = vec(1);
  std::optional<std::vector<float>> waiting;  // the previous layer's deferred part
  b->embedding(w.token_embedding, &id, 1, h.data());
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    const LayerWeights& L = w.layers[static_cast<size_t>(layer)];
    b->rms_norm(h.data(), b->prepare_vector(L.attn_norm), 1, H, H, c.rms_norm_eps, x.data());
    std::vector<float> heads;
    if (c.attention == AttentionKind::gqa) {
      std::vector<float> v = vec(c.num_kv_heads * c.head_dim);
      b->linear(L.v, x.data(), 1, v.data());
      const int64_t per_kv = c.num_heads / c.num_kv_heads;
      for (int64_t head = 0; head < c.num_heads; ++head)
        heads.insert(heads.end(), v.begin() + head / per_kv * c.head_dim, v.begin() + (head / per_kv + 1) * c.head_dim);
    } else {
      const MlaShape shape{c.num_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank};
      std::vector<float> kv_a = vec(c.kv_lora_rank + c.qk_rope_head_dim), latent = vec(c.kv_lora_rank);
      b->linear(L.kv_a, x.data(), 1, kv_a.data());
      b->rms_norm(kv_a.data(), b->prepare_vector(L.kv_a_norm), 1, c.kv_lora_rank, c.kv_lora_rank, c.rms_norm_eps,
                  latent.data());
      std::vector<float> attended;
      for (int64_t head = 0; head < c.num_heads; ++head) attended.insert(attended.end(), latent.begin(), latent.end());
      heads = vec(c.num_heads * c.v_head_dim);
      b->mla_expand_values(L.kv_b, shape, attended.data(), 1, heads.data());
    }
    std::vector<float> attn = vec(H);
    b->linear(L.o, heads.data(), 1, attn.data());
    b->add(h.data(), attn.data(), H, h.data());

    b->rms_norm(h.data(), b->prepare_vector(L.ffn_norm), 1, H, H, c.rms_norm_eps, x.data());
    std::optional<std::vector<float>> deferred_now;
    if (!L.is_moe) {
      b->silu_glu_mlp(L.ffn_gate, L.ffn_up, L.ffn_down, x.data(), 1, ffn.data());
    } else {
      std::vector<float> logits = vec(c.num_experts), weights = vec(k);
      std::vector<int32_t> ids(static_cast<size_t>(k));
      b->linear(L.router, x.data(), 1, logits.data());
      b->router_topk(routing, logits.data(), 1, b->prepare_vector(L.router_bias), ids.data(), weights.data());
      if (defer > 0 && layer + 1 < c.num_layers) {
        // The `defer` smallest weights (ties: the later slot), the rest kept in routing order.
        std::vector<int32_t> kept_ids, deferred_ids;
        std::vector<float> kept_w, deferred_w;
        std::vector<size_t> order(static_cast<size_t>(k));
        for (size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t z) { return weights[a] > weights[z]; });
        std::vector<bool> is_deferred(static_cast<size_t>(k), false);
        for (int64_t i = k - defer; i < k; ++i) is_deferred[order[static_cast<size_t>(i)]] = true;
        for (size_t i = 0; i < static_cast<size_t>(k); ++i) {
          (is_deferred[i] ? deferred_ids : kept_ids).push_back(ids[i]);
          (is_deferred[i] ? deferred_w : kept_w).push_back(weights[i]);
        }
        b->moe_routed_experts(L.experts, x.data(), 1, H, kept_ids.data(), kept_w.data(), k - defer,
                              ffn.data());
        deferred_now = vec(H);
        b->moe_routed_experts(L.experts, x.data(), 1, H, deferred_ids.data(), deferred_w.data(), defer,
                              deferred_now->data());
      } else {
        b->moe_routed_experts(L.experts, x.data(), 1, H, ids.data(), weights.data(), k, ffn.data());
      }
      if (!L.shared_gate.empty()) {
        b->silu_glu_mlp(L.shared_gate, L.shared_up, L.shared_down, x.data(), 1, shared.data());
        const bool gated = !L.shared_expert_gate.empty();
        if (gated) b->linear(L.shared_expert_gate, x.data(), 1, gate.data());
        b->gated_add(ffn.data(), shared.data(), gated ? gate.data() : nullptr, 1, H);
      }
    }
    b->add(h.data(), ffn.data(), H, h.data());
    if (waiting) b->add(h.data(), waiting->data(), H, h.data());
    waiting = std::move(deferred_now);
  }
  REQUIRE(!waiting);
  b->rms_norm(h.data(), b->prepare_vector(w.output_norm), 1, H, H, c.rms_norm_eps, x.data());
  std::vector<float> logits = vec(c.vocab_size);
  b->linear(w.output, x.data(), 1, logits.data());
  return logits;
}

double max_abs_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  return worst;
}

}  // namespace

TEST_CASE("forward with expert deferral: the first token equals an emulation from backend ops",
          "[engine][deferral]") {
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    const TinyModel m(name);
    const int64_t k = m.config().num_experts_per_tok;
    for (int32_t id : {1, 100, 311}) {
      // The emulation is right without deferral (so it checks something with it) ...
      const auto plain = forward_logits(m, {id}, 0);
      const auto plain_emulated = emulate_first_token(m, id, 0);
      INFO(name << " token " << id);
      CHECK(test::relative_max_error(plain, plain_emulated) < 1e-5);
      for (int64_t defer = 1; defer < k; ++defer) {
        INFO("defer " << defer);
        const auto deferred = forward_logits(m, {id}, defer);
        const auto emulated = emulate_first_token(m, id, defer);
        CHECK(test::relative_max_error(deferred, emulated) < 1e-5);
        // ... and deferral moves the logits, a little: a real difference, not a different model.
        const double moved = test::relative_max_error(deferred, plain);
        WARN(name << " token " << id << " defer " << defer << ": max|d logit|/max|logit| vs defer 0 = " << moved);
        CHECK(max_abs_difference(deferred, plain) > 1e-4);
        CHECK(moved < 0.5);
      }
    }
  }
}

TEST_CASE("forward with expert deferral: a prompt in one pass equals token-by-token decode",
          "[engine][deferral]") {
  // Deferral is per token and per pass: nothing of one pass's deferred part may leak into the next.
  const std::vector<int32_t> prompt = {5, 77, 301, 12, 450, 9, 260, 33, 128, 64, 2, 499};
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    const TinyModel m(name);
    const ModelConfig& c = m.config();
    const auto vocab = static_cast<size_t>(c.vocab_size);
    const int64_t defer = c.num_experts_per_tok - 1;
    const auto whole = forward_logits(m, prompt, defer);
    auto backend = make_cpu_backend(1, CpuKernels::reference);
    KvPool kv = f32_pool(c, static_cast<int64_t>(prompt.size()));
    BlockTable table;
    table.reserve(kv, static_cast<int64_t>(prompt.size()));
    ForwardPass forward(c, m.weights, *backend, kv, 4, defer);
    std::vector<float> stepped(prompt.size() * vocab);
    for (size_t i = 0; i < prompt.size(); ++i) {
      const SequenceChunk chunk{std::span(prompt).subspan(i, 1), static_cast<int64_t>(i), &table, false};
      forward.run({&chunk, 1}, stepped.data() + i * vocab);
    }
    table.release(kv);
    INFO(name);
    CHECK(test::relative_max_error(stepped, whole) < 1e-5);
    const auto plain = forward_logits(m, prompt, 0);
    CHECK(max_abs_difference(whole, plain) > 1e-4);
  }
}

TEST_CASE("forward with expert deferral: router and experts on backends of their own equal one backend",
          "[engine][deferral]") {
  // Separate backends get separate buffers: the split ids and weights and the deferred output travel
  // by copies, and the deferred part is added from the experts' buffer one layer later.
  const std::vector<int32_t> prompt = {5, 77, 301, 12, 450, 9, 260, 33};
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    const TinyModel m(name);
    const ModelConfig& c = m.config();
    const auto one = forward_logits(m, prompt, 1);
    auto main_backend = make_cpu_backend(1, CpuKernels::reference);
    auto router_backend = make_cpu_backend(1, CpuKernels::reference);
    auto experts_backend = make_cpu_backend(1, CpuKernels::reference);
    KvPool kv = f32_pool(c, static_cast<int64_t>(prompt.size()));
    BlockTable table;
    table.reserve(kv, static_cast<int64_t>(prompt.size()));
    ForwardPass forward(
        c, m.weights,
        [&](WeightGroup g, int64_t) -> Backend& {
          if (g == WeightGroup::router) return *router_backend;
          if (g == WeightGroup::experts) return *experts_backend;
          return *main_backend;
        },
        kv, static_cast<int64_t>(prompt.size()), 1);
    std::vector<float> split(one.size());
    const SequenceChunk chunk{prompt, 0, &table, true};
    forward.run({&chunk, 1}, split.data());
    table.release(kv);
    INFO(name);
    CHECK(test::relative_max_error(split, one) < 1e-6);
  }
}

TEST_CASE("forward: expert deferral of top-k or more experts is refused", "[engine][deferral]") {
  const TinyModel m("tiny-qwen3moe");
  auto backend = make_cpu_backend(1);
  KvPool kv = f32_pool(m.config(), 4);
  const int64_t k = m.config().num_experts_per_tok;
  CHECK_THROWS_AS(ForwardPass(m.config(), m.weights, *backend, kv, 4, k), Error);
  CHECK_THROWS_AS(ForwardPass(m.config(), m.weights, *backend, kv, 4, -1), Error);
  CHECK_NOTHROW(ForwardPass(m.config(), m.weights, *backend, kv, 4, k - 1));
}

TEST_CASE("CLI --defer-experts: the setting in perplexity's JSON, bad N exits 1", "[engine][deferral][cli]") {
  const std::string model = test::shell_quote(test::data_dir() + "/tiny-qwen3moe");
  const std::string ids = "5,77,301,12";
  for (const auto& [args, says] :
       std::vector<std::pair<std::string, std::string>>{{" --defer-experts 2", "--defer-experts 2"},
                                                        {" --defer-experts 7", "--defer-experts 7"},
                                                        {" --defer-experts -1", "--defer-experts"}}) {
    INFO(args);
    const auto r = test::run_cli_captured("eval -m " + model + " --ids " + ids + " --logits-out /dev/null" + args);
    CHECK(r.exit_code == 1);
    CHECK(r.err.find(says) != std::string::npos);
  }
  const auto ok = test::run_cli_captured("eval -m " + model + " --ids " + ids + " --logits-out /dev/null --defer-experts 1");
  CHECK(ok.exit_code == 0);

  // perplexity says the setting, and deferral costs the trained model a little (docs/PERF.md).
  const std::string ppl = "perplexity -m " + test::shell_quote(test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf") +
                          " -f " + test::shell_quote(std::string(TANDEM_SOURCE_DIR) + "/src/engine/perplexity.cpp") +
                          " --ctx 64 --chunks 4 --json";
  const auto off = test::run_cli_captured(ppl);
  const auto on = test::run_cli_captured(ppl + " --defer-experts 1");
  REQUIRE(off.exit_code == 0);
  REQUIRE(on.exit_code == 0);
  const auto off_json = nlohmann::json::parse(off.out), on_json = nlohmann::json::parse(on.out);
  CHECK(off_json["defer_experts"] == 0);
  CHECK(on_json["defer_experts"] == 1);
  CHECK(on.err.find("defer-experts 1") != std::string::npos);
  const double change = on_json["ppl"].get<double>() / off_json["ppl"].get<double>() - 1.0;
  WARN("trained qwen3moe q4_k_m, 4 windows of 64: perplexity change with --defer-experts 1: " << 100 * change << " %");
  CHECK(change != 0.0);
  CHECK(std::abs(change) < 0.25);
}

}  // namespace tandem::test
