// Placement rules: parsing (groups, layer ranges, first match, @file, errors), every role of the
// bundled models resolved, memory report bytes per (group, device) adding up to the file's tensor
// bytes, cuda rules refused clearly, and a forward pass unchanged by an explicit `*=cpu`.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <sys/wait.h>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "support/cli.hpp"
#include "support/fixtures.hpp"
#include "support/forward_runs.hpp"
#include "tandem/formats/read_file.hpp"
#include "tandem/backend/forwarding_backend.hpp"
#include "tandem/backend/op_timing_backend.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/forward.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/engine/placement.hpp"
#include "tandem/error.hpp"
#include "tandem/model/model_files.hpp"
#include "tandem/model/weight_summary.hpp"
#include "tandem/model/weights.hpp"

namespace {

using namespace tandem;
using Catch::Matchers::Contains;

// The message of the Error `fn` throws, checking its kind.
template <typename Fn>
std::string error_message(Fn&& fn, ErrorKind kind) {
  try {
    fn();
  } catch (const Error& e) {
    CHECK(e.kind() == kind);
    return e.what();
  }
  FAIL("no error thrown");
  return "";
}

std::string parse_error(const std::string& rules) {
  return error_message([&] { (void)Placement::parse(rules, false); }, ErrorKind::invalid_argument);
}

// The bundled models: HF folders and their Q8_0 GGUFs.
std::vector<std::string> bundled_models() {
  const std::string d = test::data_dir();
  return {d + "/tiny-qwen3moe", d + "/tiny-qwen3moe/qwen3moe-q8_0.gguf", d + "/tiny-deepseekv3",
          d + "/tiny-deepseekv3/deepseekv3-q8_0.gguf"};
}

LoadOptions small_options(const std::string& placement = "") {
  LoadOptions o;
  o.max_context_tokens = 32;
  o.max_sessions = 1;
  o.threads = 2;
  o.load_tokenizer = false;
  o.placement = placement;
  return o;
}

}  // namespace

TEST_CASE("placement defaults: experts on cpu, the rest on cuda:0 only with a GPU", "[engine][placement]") {
  const Placement gpu = Placement::defaults(true);
  CHECK(gpu.device_for(WeightGroup::experts, 3) == Device::cpu());
  for (WeightGroup g : kAllWeightGroups)
    if (g != WeightGroup::experts) CHECK(gpu.device_for(g, 0) == Device::cuda(0));
  CHECK(gpu.device_for(WeightGroup::embedding) == Device::cuda(0));
  CHECK(gpu.to_string() == "experts=cpu,*=cuda:0");

  const Placement cpu = Placement::defaults(false);
  for (WeightGroup g : kAllWeightGroups) CHECK(cpu.device_for(g, 1) == Device::cpu());
  CHECK(cpu.to_string() == "*=cpu");
  CHECK(Placement().to_string() == "*=cpu");
  // "" means the defaults.
  CHECK(Placement::parse("", true).to_string() == "experts=cpu,*=cuda:0");
  CHECK(Placement::parse("  ", false).to_string() == "*=cpu");
}

TEST_CASE("the memory report says what went where, device by device", "[engine][placement]") {
  MemoryReport r;
  const uint64_t gib = uint64_t{1} << 30;
  r.lines = {{"attention", "cuda:0", gib + gib / 4, false},
             {"routed experts", "cpu", 15 * gib + gib / 2, true},
             {"output", "cuda:0", gib / 4, false},
             {"router", "cpu", 0, true},  // nothing: not named
             {"KV cache", "cuda:0", gib / 2, false}};
  CHECK(r.uses_gpu());
  CHECK(r.placement_text() ==
        "cuda:0: attention 1.25 GiB, output 0.25 GiB, KV cache 0.50 GiB (2.00 GiB); "
        "cpu: routed experts 15.50 GiB mapped (15.50 GiB)");
  MemoryReport cpu;
  cpu.lines = {{"attention", "cpu", gib, true}, {"KV pool", "cpu", gib / 2, false}};
  CHECK_FALSE(cpu.uses_gpu());
  CHECK(cpu.placement_text() == "cpu: attention 1.00 GiB mapped, KV pool 0.50 GiB (1.50 GiB)");
}

TEST_CASE("placement rules: groups, devices, first match wins, defaults fill in", "[engine][placement]") {
  const Placement p = Placement::parse("experts=cpu, attention=cuda:1 ,router=cuda,norms=cpu,*=cuda:0", true);
  CHECK(p.device_for(WeightGroup::experts, 0) == Device::cpu());
  CHECK(p.device_for(WeightGroup::attention, 5) == Device::cuda(1));
  CHECK(p.device_for(WeightGroup::router, 5) == Device::cuda(0));
  CHECK(p.device_for(WeightGroup::norms) == Device::cpu());
  CHECK(p.device_for(WeightGroup::dense_ffn, 0) == Device::cuda(0));
  CHECK(p.rule_for(WeightGroup::dense_ffn, 0).text == "*=cuda:0");
  CHECK_FALSE(p.rule_for(WeightGroup::dense_ffn, 0).from_defaults);

  // First match wins: a later, more specific rule never overrides an earlier one.
  const Placement first = Placement::parse("*=cpu,attention=cuda:0", true);
  CHECK(first.device_for(WeightGroup::attention, 0) == Device::cpu());

  // Roles no user rule names keep their default place.
  const Placement partial = Placement::parse("shared_experts=cpu", true);
  CHECK(partial.device_for(WeightGroup::shared_experts, 2) == Device::cpu());
  CHECK(partial.device_for(WeightGroup::experts, 2) == Device::cpu());
  CHECK(partial.device_for(WeightGroup::attention, 2) == Device::cuda(0));
  CHECK(partial.rule_for(WeightGroup::attention, 2).from_defaults);
  CHECK(Placement::parse("shared_experts=cpu", false).device_for(WeightGroup::attention, 2) == Device::cpu());
  CHECK(partial.to_string() == "shared_experts=cpu,experts=cpu,*=cuda:0");

  CHECK(parse_device("cpu") == Device::cpu());
  CHECK(parse_device("cuda") == Device::cuda(0));
  CHECK(parse_device("cuda:3") == Device::cuda(3));
}

TEST_CASE("placement rules: layer ranges", "[engine][placement]") {
  const Placement p = Placement::parse("attention[0-1]=cuda:0,attention[3]=cuda:1,*[4-7]=cuda:2,*=cpu", false);
  CHECK(p.device_for(WeightGroup::attention, 0) == Device::cuda(0));
  CHECK(p.device_for(WeightGroup::attention, 1) == Device::cuda(0));
  CHECK(p.device_for(WeightGroup::attention, 2) == Device::cpu());
  CHECK(p.device_for(WeightGroup::attention, 3) == Device::cuda(1));
  CHECK(p.device_for(WeightGroup::experts, 4) == Device::cuda(2));
  CHECK(p.device_for(WeightGroup::norms, 7) == Device::cuda(2));
  CHECK(p.device_for(WeightGroup::norms, 8) == Device::cpu());
  // Roles that are not per layer never fall in a range.
  CHECK(p.device_for(WeightGroup::norms, kNoLayer) == Device::cpu());
  CHECK(p.device_for(WeightGroup::embedding) == Device::cpu());
  // A range past the model's layers would place nothing: refused against the model.
  CHECK_NOTHROW(p.check_layers(8));
  CHECK_THROWS_WITH(Placement::parse("experts[10-12]=cpu", false).check_layers(4),
                    Contains("experts[10-12]=cpu") && Contains("past the model's last layer"));
}

TEST_CASE("placement rules: errors name the rule and what is wrong", "[engine][placement]") {
  CHECK_THAT(parse_error("experts=cpu,atention=cuda:0"),
             Contains("'atention=cuda:0'") && Contains("unknown role group 'atention'") && Contains("attention"));
  CHECK_THAT(parse_error("experts"), Contains("'experts'") && Contains("expected GROUP=DEVICE"));
  CHECK_THAT(parse_error("experts=tpu"), Contains("'experts=tpu'") && Contains("unknown device 'tpu'"));
  CHECK_THAT(parse_error("experts=cuda:x"), Contains("GPU index"));
  CHECK_THAT(parse_error("experts="), Contains("no device"));
  CHECK_THAT(parse_error("=cpu"), Contains("no role group"));
  CHECK_THAT(parse_error("attention[5-2]=cpu"), Contains("'attention[5-2]=cpu'") && Contains("first > last"));
  CHECK_THAT(parse_error("attention[a-2]=cpu"), Contains("layer range"));
  CHECK_THAT(parse_error("attention[1-2=cpu"), Contains("']'"));
  CHECK_THAT(parse_error("embedding[0-3]=cpu"), Contains("not per layer"));
  CHECK_THAT(parse_error("experts=cpu,,*=cpu"), Contains("rule 2 is empty"));
  CHECK_THAT(parse_error("experts=cpu=cuda"), Contains("more than one '='"));
}

TEST_CASE("placement rules from @FILE: one per line, # comments", "[engine][placement]") {
  const auto path = std::filesystem::temp_directory_path() / "tandem_test_placement_rules.txt";
  {
    std::ofstream out(path);
    out << "# a 24 GB GPU\n"
           "experts=cpu   # routed experts stay in host DRAM\n"
           "\n"
           "attention[0-1]=cuda:0\n"
           "*=cpu\n";
  }
  const Placement p = Placement::parse("@" + path.string(), true);
  CHECK(p.to_string() == "experts=cpu,attention[0-1]=cuda:0,*=cpu,experts=cpu,*=cuda:0");
  CHECK(p.device_for(WeightGroup::attention, 1) == Device::cuda(0));
  CHECK(p.device_for(WeightGroup::attention, 2) == Device::cpu());
  {
    std::ofstream out(path);
    out << "experts=cpu\n# fine\nshared=cpu\n";
  }
  CHECK_THAT(parse_error("@" + path.string()),
             Contains("'shared=cpu'") && Contains("line 3 of") && Contains("unknown role group"));
  std::filesystem::remove(path);
  CHECK_THAT(error_message([&] { (void)Placement::parse("@" + path.string(), false); }, ErrorKind::io),
             Contains(path.string()));
  CHECK_THAT(parse_error("@"), Contains("rules file path"));
  // A device or an oversized file is refused, never read without end.
  CHECK_THAT(error_message([&] { (void)Placement::parse("@/dev/zero", false); }, ErrorKind::io),
             Contains("/dev/zero") && Contains("not a regular file"));
  {
    std::ofstream out(path);
    out << std::string((size_t{1} << 20) + 1, '#');
  }
  CHECK_THAT(error_message([&] { (void)Placement::parse("@" + path.string(), false); }, ErrorKind::corrupt_file),
             Contains(path.string()));
  std::filesystem::remove(path);
}

TEST_CASE("every role of the bundled models resolves, bytes per group add up", "[engine][placement]") {
  for (const std::string& model : bundled_models()) {
    INFO(model);
    const ModelFiles files = open_model_files(model);
    Weights weights = bind_weights(files);
    const WeightSummary summary = summarize_weights(weights);
    const Placement gpu = Placement::defaults(true);
    std::map<std::string, uint64_t> by_device;
    std::map<WeightGroup, uint64_t> by_group;
    uint64_t total = 0;
    for (const PlacedBytes& p : place_weights(weights, gpu)) {
      by_device[p.device.to_string()] += p.bytes;
      by_group[p.group] += p.bytes;
      total += p.bytes;
    }
    CHECK(total == summary.total_bytes());
    CHECK(by_device["cpu"] == summary.routed_expert_bytes);
    CHECK(by_device["cuda:0"] == summary.other_bytes);
    for (WeightGroup g : {WeightGroup::embedding, WeightGroup::norms, WeightGroup::attention, WeightGroup::router,
                          WeightGroup::experts})
      CHECK(by_group[g] > 0);
    if (files.config.first_k_dense > 0) CHECK(by_group[WeightGroup::dense_ffn] > 0);
    if (files.config.num_shared_experts > 0) CHECK(by_group[WeightGroup::shared_experts] > 0);

    // Every bound tensor takes its role's device.
    apply_placement(weights, Placement::parse("attention[1]=cuda:1,experts=cpu,*=cuda:0", false));
    CHECK(weights.token_embedding.device == Device::cuda(0));
    CHECK(weights.output_norm.device == Device::cuda(0));
    for (size_t l = 0; l < weights.layers.size(); ++l) {
      const LayerWeights& L = weights.layers[l];
      CHECK(L.attn_norm.device == Device::cuda(0));
      CHECK(L.o.weight.device == (l == 1 ? Device::cuda(1) : Device::cuda(0)));
      if (L.is_moe) {
        CHECK(L.router.weight.device == Device::cuda(0));
        for (const LinearWeight& e : L.experts.gate) CHECK(e.weight.device == Device::cpu());
      }
    }
  }
}

TEST_CASE("memory report: bytes per (group, device) add up to the file's tensor bytes", "[engine][placement]") {
  for (const std::string& model : bundled_models()) {
    INFO(model);
    const ModelFiles files = open_model_files(model);
    const WeightSummary summary = summarize_weights(bind_weights(files));
    auto engine = Engine::load(model, small_options("experts=cpu,attention[0]=cpu,*=cpu"));
    CHECK(engine->placement().to_string() == "experts=cpu,attention[0]=cpu,*=cpu,*=cpu");
    uint64_t weights_bytes = 0;
    std::map<std::string, int> seen;
    for (const auto& line : engine->memory_report().lines) {
      if (line.what == "KV pool") continue;
      CHECK(line.device == "cpu");
      CHECK(line.mapped);
      CHECK(++seen[line.what] == 1);  // one line per (group, device)
      weights_bytes += line.bytes;
    }
    CHECK(weights_bytes == summary.total_bytes());
    CHECK(seen.count("routed experts") == 1);
    CHECK(seen.count("attention") == 1);
    // The hub files hold exactly the bound tensors (tied or not), so their tensor table agrees.
    if (files.format == ModelFiles::Format::safetensors) {
      uint64_t table = 0;
      for (const TensorEntry& e : files.tensors().entries()) table += e.view.nbytes;
      CHECK(weights_bytes == table);
    }
  }
}

TEST_CASE("a cuda rule is refused with a clear unsupported error", "[engine][placement]") {
  const std::string model = test::data_dir() + "/tiny-qwen3moe";
  // With the CUDA backend and a GPU, cuda rules run (tests/cuda checks them); without, they are refused.
  if (!cuda_forward_available()) {
    const std::string message = error_message(
        [&] { (void)Engine::load(model, small_options("experts=cpu,attention=cuda:0,*=cpu")); }, ErrorKind::unsupported);
    CHECK_THAT(message, Contains("'attention=cuda:0'") && Contains("attention") && Contains("CUDA backend") &&
                            Contains("cannot run that role yet") && Contains("*=cpu"));
    // A cuda rule that matches nothing in this model is still not ignored.
    CHECK_THAT(error_message([&] { (void)Engine::load(model, small_options("dense_ffn=cuda:0,*=cpu")); },
                             ErrorKind::unsupported),
               Contains("'dense_ffn=cuda:0'") && Contains("*=cpu"));
  }
  // Parse errors come before the files are opened.
  CHECK_THAT(error_message([&] { (void)Engine::load("/nonexistent", small_options("bogus=cpu")); },
                           ErrorKind::invalid_argument),
             Contains("bogus"));
  CHECK_THAT(error_message([&] { (void)Engine::load(model, small_options("attention[40-41]=cpu")); },
                           ErrorKind::invalid_argument),
             Contains("past the model's last layer"));
}

namespace {

// A backend that forwards every call to a real one and records which calls it received, so a test
// can see which backend each role group ran on.
class RecordingBackend final : public ForwardingBackend {
 public:
  explicit RecordingBackend(Backend& inner) : ForwardingBackend(inner) {}
  std::map<std::string, int> calls;

  void embedding(const TensorView& table, const int32_t* ids, int64_t count, float* out) override {
    ++calls["embedding"];
    inner_.embedding(table, ids, count, out);
  }
  void linear(const LinearWeight& w, const float* x, int64_t rows, float* y) override {
    ++calls["linear"];
    inner_.linear(w, x, rows, y);
  }
  void linears(const LinearWeight* const* ws, float* const* ys, int count, const float* x, int64_t rows) override {
    calls["linear"] += count;  // one call, `count` matrices
    inner_.linears(ws, ys, count, x, rows);
  }
  void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride, double eps,
                float* out) override {
    ++calls["rms_norm"];
    inner_.rms_norm(x, weight, rows, dim, stride, eps, out);
  }
  void gqa_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q, int64_t heads,
                     int64_t kv_heads, int64_t head_dim, float softmax_scale, float* out) override {
    ++calls["attention"];
    inner_.gqa_attention(kv, layer, batch, q, heads, kv_heads, head_dim, softmax_scale, out);
  }
  void mla_attention(const KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* q_latent,
                     const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                     float* out) override {
    ++calls["attention"];
    inner_.mla_attention(kv, layer, batch, q_latent, q_rope, heads, kv_lora, rope_dim, softmax_scale, out);
  }
  void kv_append(KvPool& kv, int64_t layer, int64_t plane, const AttentionBatch& batch, const float* rows,
                 int64_t row_stride) override {
    ++calls["kv_append"];
    inner_.kv_append(kv, layer, plane, batch, rows, row_stride);
  }
  void kv_append_pair(KvPool& kv, int64_t layer, const AttentionBatch& batch, const float* k_rows, const float* v_rows,
                      int64_t row_stride) override {
    calls["kv_append"] += 2;  // one call, two planes
    inner_.kv_append_pair(kv, layer, batch, k_rows, v_rows, row_stride);
  }
  void gqa_projections(const LinearWeight& q, const LinearWeight& k, const LinearWeight& v, const NormFirst& norm,
                       const RopeParams& rope, const GqaHeads& h, KvPool& kv, int64_t layer,
                       const AttentionBatch& batch) override {
    calls["linear"] += 3;
    calls["kv_append"] += 2;  // K and V appended inside
    inner_.gqa_projections(q, k, v, norm, rope, h, kv, layer, batch);
  }
  void gqa_prologue(const RopeParams& rope, const GqaHeads& h, KvPool& kv, int64_t layer,
                    const AttentionBatch& batch) override {
    calls["kv_append"] += 2;  // K and V appended inside
    inner_.gqa_prologue(rope, h, kv, layer, batch);
  }
  void moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens, int64_t hidden,
                          const int32_t* expert_ids, const float* weights, int64_t top_k,
                          float* out) override {
    ++calls["moe_routed_experts"];
    inner_.moe_routed_experts(experts, x, tokens, hidden, expert_ids, weights, top_k, out);
  }
  void router_and_topk(const RoutingParams& params, const LinearWeight& router, const NormFirst& norm, int64_t tokens,
                       float* logits, const float* selection_bias, int32_t* expert_ids, float* weights) override {
    ++calls["router_and_topk"];
    inner_.router_and_topk(params, router, norm, tokens, logits, selection_bias, expert_ids, weights);
  }
  void router_topk(const RoutingParams& params, const float* logits, int64_t tokens, const float* selection_bias,
                   int32_t* expert_ids, float* weights) override {
    ++calls["router_topk"];
    inner_.router_topk(params, logits, tokens, selection_bias, expert_ids, weights);
  }
  void add(const float* a, const float* b, int64_t count, float* out) override {
    ++calls["add"];
    inner_.add(a, b, count, out);
  }
  void synchronize() override {
    ++calls["synchronize"];
    inner_.synchronize();
  }
};

std::vector<float> run_forward(const ModelFiles& files, const Weights& weights, ForwardPass::BackendForRole route,
                               const std::vector<int32_t>& ids) {
  const ModelConfig& c = files.config;
  KvPool kv(test::small_f32_pool(c));
  ForwardPass forward(c, weights, std::move(route), kv, 64);
  return test::prompt_logits(forward, kv, ids, c.vocab_size);
}

}  // namespace

TEST_CASE("placement executes: each role group runs on the backend its rule names", "[engine][placement]") {
  const std::vector<int32_t> ids = {1, 5, 9, 2, 7, 3};
  for (const std::string& model : {test::data_dir() + "/tiny-qwen3moe", test::data_dir() + "/tiny-deepseekv3"}) {
    INFO(model);
    const ModelFiles files = open_model_files(model);
    const Weights weights = bind_weights(files);
    auto cpu = make_cpu_backend(2);
    const auto alone = run_forward(files, weights, [&](WeightGroup, int64_t) -> Backend& { return *cpu; }, ids);

    // Two backends: "experts=B, attention[0-0]=B, *=A", resolved through a real Placement.
    const Placement placement = Placement::parse("experts=cuda:1,attention[0-0]=cuda:1,*=cpu", true);
    RecordingBackend a(*cpu), b(*cpu);
    const auto split = run_forward(files, weights, [&](WeightGroup g, int64_t layer) -> Backend& {
      return placement.device_for(g, layer) == Device::cuda(1) ? static_cast<Backend&>(b) : a;
    }, ids);
    CHECK(split == alone);  // the same kernels, so bit for bit

    // B ran the routed experts of every MoE layer and layer 0's attention, nothing else.
    const auto moe_layers = std::count_if(weights.layers.begin(), weights.layers.end(),
                                          [](const LayerWeights& l) { return l.is_moe; });
    CHECK(b.calls["moe_routed_experts"] == moe_layers);
    CHECK(b.calls["attention"] == 1);
    CHECK(b.calls["embedding"] == 0);
    CHECK(b.calls["rms_norm"] <= 2);  // layer 0's q/k norms (Qwen3) or q_a/kv_a norms (MLA)
    CHECK(a.calls["moe_routed_experts"] == 0);
    CHECK(a.calls["attention"] == files.config.num_layers - 1);
    CHECK(a.calls["embedding"] == 1);
    CHECK(b.calls["synchronize"] == 1);
    CHECK(a.calls["synchronize"] == 1);
    // The glue between kernels is backend ops too, on the main backend (attention of layer 0: B).
    CHECK(b.calls["kv_append"] == (files.config.attention == AttentionKind::mla ? 1 : 2));
    CHECK(a.calls["kv_append"] == (files.config.attention == AttentionKind::mla ? 1 : 2) * (files.config.num_layers - 1));
    CHECK(b.calls["add"] == 2 * files.config.num_layers);
    CHECK(a.calls["add"] == 0);
    CHECK(a.calls["router_and_topk"] == moe_layers);  // each router's matrix and top-k in one call
  }
}

TEST_CASE("op timing: a timed backend gives the same logits and counts every call it forwards", "[engine][placement]") {
  const std::vector<int32_t> ids = {1, 5, 9, 2, 7, 3};
  for (const std::string& model : {test::data_dir() + "/tiny-qwen3moe", test::data_dir() + "/tiny-deepseekv3"}) {
    INFO(model);
    const ModelFiles files = open_model_files(model);
    const Weights weights = bind_weights(files);
    auto cpu = make_cpu_backend(2);
    RecordingBackend counted(*cpu);
    const auto expected = run_forward(files, weights, [&](WeightGroup, int64_t) -> Backend& { return counted; }, ids);
    OpTimingBackend timed(*cpu, "cpu");
    const auto got = run_forward(files, weights, [&](WeightGroup, int64_t) -> Backend& { return timed; }, ids);
    CHECK(got == expected);  // timing only waits: the same kernels, bit for bit
    auto calls = [&](const std::string& op) {
      int64_t n = 0;
      for (const auto& [name, entry] : timed.table())
        if (name == op || name.rfind(op + " (", 0) == 0) n += entry.calls;
      return n;
    };
    // "linear (output) ..." included; a layer's q, k, v (MLA: its two first projections) in one linears
    // call, or GQA's q, k and v with its prologue in one gqa_projections call
    const int64_t per_linears = files.config.attention == AttentionKind::mla ? 2 : 3;
    CHECK(calls("linear") + per_linears * calls("linears") + 3 * calls("gqa_projections") == counted.calls["linear"]);
    CHECK(calls("moe_routed_experts") == counted.calls["moe_routed_experts"]);
    CHECK(calls("router_topk") == counted.calls["router_topk"]);
    CHECK(calls("router_and_topk") == counted.calls["router_and_topk"]);
    CHECK(calls("router_and_topk") > 0);
    // a pair, and the GQA prologue: two planes
    CHECK(calls("kv_append") + 2 * calls("kv_append_pair") + 2 * calls("gqa_prologue") + 2 * calls("gqa_projections") ==
          counted.calls["kv_append"]);
    CHECK(calls("add") == counted.calls["add"]);
    CHECK(calls(files.config.attention == AttentionKind::mla ? "mla_attention" : "gqa_attention") ==
          counted.calls["attention"]);
    // Six prompt tokens in one pass: every call is a batch.
    for (const auto& [name, entry] : timed.table()) CHECK(name.find("(1 token)") == std::string::npos);
    CHECK(timed.report().find("moe_routed_experts (6 tokens)") != std::string::npos);
    CHECK(timed.record_graph([] {}) == nullptr);  // its waits cannot be recorded
  }
}

TEST_CASE("mixed placement: experts on a second CPU backend give the same logits", "[engine][placement]") {
  const std::vector<int32_t> ids = {4, 8, 15, 16, 23, 42, 7};
  for (const std::string& model : {test::data_dir() + "/tiny-qwen3moe", test::data_dir() + "/tiny-deepseekv3"}) {
    INFO(model);
    const ModelFiles files = open_model_files(model);
    const Weights weights = bind_weights(files);
    auto main = make_cpu_backend(2);
    auto experts = make_cpu_backend(1);
    const auto alone = run_forward(files, weights, [&](WeightGroup, int64_t) -> Backend& { return *main; }, ids);
    // Each backend allocates its own activations; rows cross between them by copies.
    const auto split = run_forward(files, weights, [&](WeightGroup g, int64_t) -> Backend& {
      return g == WeightGroup::experts || g == WeightGroup::router || g == WeightGroup::norms ? *experts : *main;
    }, ids);
    REQUIRE(split.size() == alone.size());
    CHECK(split == alone);
  }
}

TEST_CASE("CLI: --placement on eval, run and chat", "[engine][placement][cli]") {
  namespace fs = std::filesystem;
  const std::string cli = test::cli_path();
  REQUIRE(fs::exists(cli));
  const fs::path tmp = fs::temp_directory_path();
  const std::string model = test::shell_quote(test::data_dir() + "/tiny-qwen3moe");
  const std::string err = (tmp / "tandem_test_placement_err.txt").string();
  auto run = [&](const std::string& args) {
    const std::string command = test::shell_quote(cli) + " " + args + " > /dev/null 2> " + test::shell_quote(err);
    const int status = std::system(command.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  auto read = [](const std::string& path) { return read_file_bytes(path); };
  const std::string a = (tmp / "tandem_test_placement_a.bin").string();
  const std::string b = (tmp / "tandem_test_placement_b.bin").string();
  REQUIRE(run("eval -m " + model + " --ids 1,2,3 --logits-out " + a) == 0);
  REQUIRE(run("eval -m " + model + " --ids 1,2,3 --logits-out " + b + " --placement '*=cpu'") == 0);
  CHECK(read(a) == read(b));
  if (!cuda_forward_available()) {
    CHECK(run("eval -m " + model + " --ids 1,2,3 --logits-out " + b + " --placement 'experts=cpu,*=cuda:0'") == 1);
    CHECK_THAT(read(err), Contains("CUDA backend cannot run that role yet") && Contains("*=cpu"));
  }
  CHECK(run("run -m " + model + " --ids 1,2 -n 1 --temp 0 --placement 'atention=cpu'") == 1);
  CHECK_THAT(read(err), Contains("unknown role group 'atention'"));
  CHECK(run("chat -m " + model + " --placement 'experts=gpu' < /dev/null") == 1);
  CHECK_THAT(read(err), Contains("unknown device 'gpu'"));
  CHECK(run("run -m " + model + " --ids 1,2 -n 1 --temp 0 --placement '*=cpu'") == 0);
  for (const std::string& f : {a, b, err}) fs::remove(f);
}
