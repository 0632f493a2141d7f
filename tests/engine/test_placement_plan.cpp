// The placement planner: llama.cpp's spellings (-ngl, --cpu-moe, --n-cpu-moe, -ot) resolved to
// per-role devices on the bundled models, --vram-budget parsing and fitting, and `tandem plan`
// (JSON keys, the budget kept, the CPU-only decode prediction against its definition).
#include <catch2/catch.hpp>
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tuple>

#include "tandem/engine/placement.hpp"
#include "support/cli.hpp"
#include "support/fixtures.hpp"
#include "tandem/backend/cuda_backend.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/placement_plan.hpp"
#include "tandem/engine/plan.hpp"
#include "tandem/error.hpp"
#include "tandem/model/model_files.hpp"
#include "tandem/model/weight_roles.hpp"

namespace {

using namespace tandem;
using Catch::Matchers::Contains;

constexpr uint64_t kGiB = uint64_t{1} << 30;

struct Model {
  ModelFiles files;
  Weights weights;
  explicit Model(const std::string& path) : files(open_model_files(path)), weights(bind_weights(files)) {}
};

const Model& qwen() {
  static const Model m(test::data_dir() + "/tiny-qwen3moe/qwen3moe-q8_0.gguf");
  return m;
}
const Model& deepseek() {
  static const Model m(test::data_dir() + "/tiny-deepseekv3/deepseekv3-q8_0.gguf");
  return m;
}

// The placement these flags resolve to, planned as on a machine with a GPU.
Placement resolve(const Model& m, const PlacementFlags& flags, const std::string& rules = "", bool gpu = true) {
  PlanRequest r;
  r.rules = rules;
  r.flags = flags;
  r.gpu_available = gpu;
  r.context_tokens = 32;
  return plan_placement(m.files, m.weights, r).placement;
}

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

const Device cpu = Device::cpu();
const Device gpu0 = Device::cuda(0);

}  // namespace

TEST_CASE("-ngl N: the last N layers on cuda:0, the rest on the CPU; past the layers, everything", "[engine][plan]") {
  const Model& m = qwen();  // 3 layers
  PlacementFlags f;
  f.n_gpu_layers = "2";
  const Placement two = resolve(m, f);
  for (WeightGroup g : {WeightGroup::attention, WeightGroup::norms, WeightGroup::experts, WeightGroup::router}) {
    CHECK(two.device_for(g, 0) == cpu);
    CHECK(two.device_for(g, 1) == gpu0);
    CHECK(two.device_for(g, 2) == gpu0);
  }
  CHECK(two.device_for(WeightGroup::embedding) == cpu);
  CHECK(two.device_for(WeightGroup::output) == cpu);
  CHECK(two.device_for(WeightGroup::norms, kNoLayer) == cpu);
  CHECK(two.to_string() == "*[1-2]=cuda:0,*=cpu,*=cpu");

  for (const char* all : {"99", "all", "-1", "4"}) {
    f.n_gpu_layers = all;
    const Placement p = resolve(m, f);
    for (WeightGroup g : kAllWeightGroups) CHECK(p.device_for(g, 1) == gpu0);
    CHECK(p.device_for(WeightGroup::embedding) == gpu0);
    CHECK(p.device_for(WeightGroup::output) == gpu0);
  }
  f.n_gpu_layers = "3";  // every layer, not the output (llama.cpp's n_layer)
  CHECK(resolve(m, f).device_for(WeightGroup::attention, 0) == gpu0);
  CHECK(resolve(m, f).device_for(WeightGroup::output) == cpu);
  f.n_gpu_layers = "0";
  for (WeightGroup g : kAllWeightGroups) CHECK(resolve(m, f).device_for(g, 0) == cpu);
  // Without a GPU, -ngl places nothing: everything stays on the CPU.
  f.n_gpu_layers = "99";
  for (WeightGroup g : kAllWeightGroups) CHECK(resolve(m, f, "", false).device_for(g, 2) == cpu);
  f.n_gpu_layers = "many";
  CHECK_THAT(error_message([&] { resolve(m, f); }, ErrorKind::invalid_argument),
             Contains("-ngl/--n-gpu-layers 'many'"));
}

TEST_CASE("--cpu-moe and --n-cpu-moe: routed experts on the CPU, the rest on the GPU", "[engine][plan]") {
  const Model& m = deepseek();  // 3 layers, layer 0 dense
  PlacementFlags f;
  f.cpu_moe = true;
  const Placement p = resolve(m, f);
  for (int64_t l = 0; l < 3; ++l) {
    CHECK(p.device_for(WeightGroup::experts, l) == cpu);
    CHECK(p.device_for(WeightGroup::attention, l) == gpu0);
    CHECK(p.device_for(WeightGroup::shared_experts, l) == gpu0);
    CHECK(p.device_for(WeightGroup::dense_ffn, l) == gpu0);
  }
  CHECK(p.device_for(WeightGroup::embedding) == gpu0);
  // No GPU: unchanged, everything on the CPU.
  for (WeightGroup g : kAllWeightGroups) CHECK(resolve(m, f, "", false).device_for(g, 1) == cpu);

  PlacementFlags n;
  n.n_cpu_moe = 2;
  const Placement q = resolve(m, n);
  CHECK(q.device_for(WeightGroup::experts, 0) == cpu);
  CHECK(q.device_for(WeightGroup::experts, 1) == cpu);
  CHECK(q.device_for(WeightGroup::experts, 2) == cpu);  // the GPU defaults keep the other experts on the CPU
  CHECK(q.device_for(WeightGroup::attention, 0) == gpu0);
  // With -ngl 99 the layers past N put their experts on the GPU, as in llama.cpp.
  n.n_gpu_layers = "99";
  const Placement r = resolve(m, n);
  CHECK(r.device_for(WeightGroup::experts, 1) == cpu);
  CHECK(r.device_for(WeightGroup::experts, 2) == gpu0);
  CHECK(r.to_string().starts_with("experts[0-1]=cpu,*=cuda:0"));
  // --placement comes first.
  CHECK(resolve(m, n, "experts[1]=cuda:0").device_for(WeightGroup::experts, 1) == gpu0);
}

TEST_CASE("-ot REGEX=DEVICE: file tensor names to devices, in flag order", "[engine][plan]") {
  const Model& m = qwen();
  PlacementFlags f;
  f.n_gpu_layers = "99";
  f.override_tensor = {"blk\\.[01]\\.ffn_.*_exps=CPU", "blk\\.2\\.attn_q\\.=cpu,output=CUDA0"};
  const Placement p = resolve(m, f);
  CHECK(p.device_for(WeightGroup::experts, 0) == cpu);
  CHECK(p.device_for(WeightGroup::experts, 1) == cpu);
  CHECK(p.device_for(WeightGroup::experts, 2) == gpu0);
  CHECK(p.device_for(WeightGroup::attention, 2) == cpu);  // a group of a layer moves as a whole
  CHECK(p.device_for(WeightGroup::attention, 1) == gpu0);
  CHECK(p.device_for(WeightGroup::output) == gpu0);
  CHECK(p.to_string().starts_with("experts[0-1]=cpu,attention[2]=cpu,"));
  // The first -ot wins over a later one and over -ngl.
  PlacementFlags order;
  order.override_tensor = {"exps=CPU", "blk\\.0\\.=CUDA1"};
  const Placement o = resolve(m, order);
  CHECK(o.device_for(WeightGroup::experts, 0) == cpu);
  CHECK(o.device_for(WeightGroup::attention, 0) == Device::cuda(1));
  CHECK(o.device_for(WeightGroup::attention, 1) == cpu);  // -ot alone: the rest keeps today's default

  const auto err = [&](const std::string& ot) {
    PlacementFlags bad;
    bad.override_tensor = {ot};
    return error_message([&] { resolve(m, bad); }, ErrorKind::invalid_argument);
  };
  CHECK_THAT(err("blk\\.(0=CPU"), Contains("bad regular expression 'blk\\.(0'") && Contains("parenthesis"));
  CHECK_THAT(err("exps=GPU"), Contains("unknown device 'GPU'") && Contains("CUDA0"));
  CHECK_THAT(err("exps"), Contains("expected REGEX=DEVICE"));
  CHECK_THAT(err("no_such_tensor=CPU"), Contains("matches none of this model's"));
}

TEST_CASE("--vram-budget text: binary units, percentages of the card, clear errors", "[engine][plan]") {
  CHECK(parse_vram_budget("24G", 0) == 24 * kGiB);
  CHECK(parse_vram_budget("500M", 0) == uint64_t{500} << 20);
  CHECK(parse_vram_budget("1.5GiB", 0) == 3 * kGiB / 2);
  CHECK(parse_vram_budget("123456", 0) == 123456);
  CHECK(parse_vram_budget("80%", 100 * kGiB) == 80 * kGiB);
  CHECK_THAT(error_message([] { parse_vram_budget("80%", 0); }, ErrorKind::invalid_argument),
             Contains("needs the card's memory"));
  CHECK_THAT(error_message([] { parse_vram_budget("200G", 141 * kGiB); }, ErrorKind::invalid_argument),
             Contains("larger than the card") && Contains("141.00 GiB"));
  for (const char* bad : {"", "G", "12Q", "-5G", "0", "150%"})
    CHECK_THROWS_AS(parse_vram_budget(bad, 100 * kGiB), Error);
}

TEST_CASE("--vram-budget: the non-expert part first, then routed experts by layer within the budget", "[engine][plan]") {
  const Model& m = qwen();
  PlanRequest r;
  r.gpu_available = true;
  r.context_tokens = 32;
  r.flags.vram_total_bytes = 2 * kGiB;
  r.flags.vram_budget = "2G";
  const PlacementPlan all = plan_placement(qwen().files, qwen().weights, r);
  CHECK(all.expert_layers_on_gpu == 3);
  CHECK(all.vram_bytes <= all.vram_budget_bytes);
  CHECK(all.placement.device_for(WeightGroup::experts, 2) == gpu0);

  // The non-expert part alone, then room for exactly one layer of experts.
  PlanRequest base = r;
  base.flags.vram_budget = "";
  base.flags.cpu_moe = true;
  const PlacementPlan fixed = plan_placement(m.files, m.weights, base);
  CHECK(fixed.placement.device_for(WeightGroup::experts, 0) == cpu);
  uint64_t layer0 = 0;
  for (const PlacedBytes& p : place_weights(m.weights, all.placement))
    if (p.group == WeightGroup::experts) layer0 = p.bytes / 3;  // the tiny model's layers are alike
  r.flags.vram_budget = std::to_string(fixed.vram_bytes + layer0 + layer0 / 2);
  r.flags.expert_cache = "off";  // whole layers only (the cache's share: the next test case)
  const PlacementPlan one = plan_placement(m.files, m.weights, r);
  CHECK(one.expert_layers_on_gpu == 1);
  CHECK(one.placement.device_for(WeightGroup::experts, 0) == gpu0);
  CHECK(one.placement.device_for(WeightGroup::experts, 1) == cpu);
  CHECK(one.vram_bytes == fixed.vram_bytes + layer0);
  CHECK(one.vram_bytes <= one.vram_budget_bytes);
  CHECK(one.kv_pool_bytes == planned_kv_pool_bytes(m.files.config, r));
  CHECK(one.kv_pool_bytes == uint64_t{32} * 3 * m.files.config.kv_values_per_token_per_layer() * 2);

  CHECK(one.expert_cache_per_layer == 0);
  r.flags.expert_cache = "";

  r.flags.vram_budget = std::to_string(fixed.vram_bytes - 1);
  CHECK_THAT(error_message([&] { plan_placement(m.files, m.weights, r); }, ErrorKind::out_of_memory),
             Contains("too small") && Contains("attention") && Contains("KV pool") && Contains("working buffers"));
  r.flags.vram_budget = "3G";
  CHECK_THAT(error_message([&] { plan_placement(m.files, m.weights, r); }, ErrorKind::invalid_argument),
             Contains("larger than the card"));
  r.flags.vram_budget = "1G";
  r.gpu_available = false;
  r.flags.vram_total_bytes = 0;
  CHECK_THAT(error_message([&] { plan_placement(m.files, m.weights, r); }, ErrorKind::invalid_argument),
             Contains("no GPU"));
}

TEST_CASE("--expert-cache: what whole expert layers leave of the budget holds experts of every other layer",
          "[engine][plan][expert-cache]") {
  const Model& m = qwen();
  PlanRequest r;
  r.gpu_available = true;
  r.context_tokens = 32;
  r.flags.vram_total_bytes = 2 * kGiB;
  r.flags.cpu_moe = true;
  const PlacementPlan fixed = plan_placement(m.files, m.weights, r);
  r.flags.cpu_moe = false;
  uint64_t layer0 = 0;  // the tiny model's expert layers are alike: 8 experts of layer0 / 8 bytes
  for (const PlacedBytes& p : place_weights(m.weights, fixed.placement))
    if (p.group == WeightGroup::experts) layer0 = p.bytes / 3;
  const uint64_t expert = layer0 / 8;
  REQUIRE(expert * 8 == layer0);

  // Automatic: one whole layer, then 2 experts in each of the 2 other layers (2 · 2 · expert).
  r.flags.vram_budget = std::to_string(fixed.vram_bytes + layer0 + 4 * expert + expert / 2);
  const PlacementPlan automatic = plan_placement(m.files, m.weights, r);
  CHECK(automatic.expert_layers_on_gpu == 1);
  CHECK(automatic.expert_cache_per_layer == 2);
  CHECK(automatic.expert_cache_layers == 2);
  CHECK(automatic.expert_cache_bytes == 4 * expert);
  CHECK(automatic.vram_bytes == fixed.vram_bytes + layer0 + 4 * expert);
  CHECK(automatic.vram_bytes <= automatic.vram_budget_bytes);
  bool listed = false;
  for (const PlanLine& l : automatic.lines) listed = listed || (l.what == "expert cache" && l.device == gpu0 && l.bytes == 4 * expert);
  CHECK(listed);

  // A size: the cache's share first. With all of a layer's bytes for it no whole layer fits after,
  // so every layer holds some (fewer than all: the working memory of experts on the GPU comes out).
  r.flags.expert_cache = std::to_string(layer0);
  const PlacementPlan sized = plan_placement(m.files, m.weights, r);
  CHECK(sized.expert_layers_on_gpu == 0);
  CHECK(sized.expert_cache_layers == 3);
  CHECK(sized.expert_cache_per_layer >= 1);
  CHECK(sized.expert_cache_per_layer <= 2);
  CHECK(sized.vram_bytes <= sized.vram_budget_bytes);
  r.flags.expert_cache = "50%";  // of the budget
  CHECK(plan_placement(m.files, m.weights, r).expert_cache_per_layer >= 1);

  // Off, nothing left over, or a budget that fits everything: no cache.
  r.flags.expert_cache = "off";
  CHECK(plan_placement(m.files, m.weights, r).expert_cache_bytes == 0);
  r.flags.expert_cache = "";
  r.flags.vram_budget = "2G";
  const PlacementPlan all = plan_placement(m.files, m.weights, r);
  CHECK(all.expert_layers_on_gpu == 3);
  CHECK(all.expert_cache_per_layer == 0);

  // Bad text, or no GPU.
  r.flags.expert_cache = "lots";
  CHECK_THAT(error_message([&] { plan_placement(m.files, m.weights, r); }, ErrorKind::invalid_argument),
             Contains("--expert-cache 'lots'"));
  r.flags.expert_cache = "1G";
  r.flags.vram_budget = "";
  r.gpu_available = false;
  r.flags.vram_total_bytes = 0;
  CHECK_THAT(error_message([&] { plan_placement(m.files, m.weights, r); }, ErrorKind::invalid_argument),
             Contains("--expert-cache 1G") && Contains("no GPU"));
}

TEST_CASE("the automatic hybrid defaults: experts on the CPU, the rest on the GPU, or all on the CPU saying why",
          "[engine][plan]") {
  const Model& m = qwen();
  PlanRequest r;
  r.gpu_available = true;
  r.gpu_by_default = true;
  r.context_tokens = 32;
  r.flags.vram_total_bytes = 80 * kGiB;  // planning for a card when this machine has none
  const PlacementPlan hybrid = plan_placement(m.files, m.weights, r);
  CHECK(hybrid.gpu_defaults_declined.empty());
  CHECK(hybrid.placement.to_string() == "experts=cpu,*=cuda:0");
  for (int64_t layer = 0; layer < m.files.config.num_layers; ++layer) {
    CHECK(hybrid.placement.device_for(WeightGroup::experts, layer) == cpu);
    CHECK(hybrid.placement.device_for(WeightGroup::attention, layer) == gpu0);
    CHECK(hybrid.placement.device_for(WeightGroup::router, layer) == gpu0);
  }
  CHECK(hybrid.placement.device_for(WeightGroup::output) == gpu0);
  CHECK(hybrid.vram_bytes > 0);

  const auto all_on_cpu = [&](const PlacementPlan& p) {
    CHECK(p.vram_bytes == 0);
    for (WeightGroup g : kAllWeightGroups)
      for (int64_t layer = kNoLayer; layer < m.files.config.num_layers; ++layer) CHECK(p.placement.device_for(g, layer) == cpu);
  };
  SECTION("a load that needs the CPU's attention") {
    r.cpu_attention_reason = "--kv-policy sinks:4,64 needs the CPU's attention";
    const PlacementPlan p = plan_placement(m.files, m.weights, r);
    CHECK(p.gpu_defaults_declined == r.cpu_attention_reason);
    all_on_cpu(p);
  }
  SECTION("a KV type without a CUDA kernel") {
    r.kv_type = KvType::int4;
    const PlacementPlan p = plan_placement(m.files, m.weights, r);
    CHECK_THAT(p.gpu_defaults_declined, Contains("--kv-type int4"));
    all_on_cpu(p);
    r.kv_type = KvType::int4_g64;
    const PlacementPlan g64 = plan_placement(m.files, m.weights, r);
    CHECK_THAT(g64.gpu_defaults_declined, Contains("--kv-type int4:64"));
    all_on_cpu(g64);
    r.kv_type = KvType::bf16;
    CHECK(plan_placement(m.files, m.weights, r).gpu_defaults_declined.empty());
    // fp8 runs on the GPU for GQA and for an MLA latent cache
    r.kv_type = KvType::fp8;
    CHECK(plan_placement(m.files, m.weights, r).gpu_defaults_declined.empty());
    const PlacementPlan mla = plan_placement(deepseek().files, deepseek().weights, r);
    CHECK(mla.gpu_defaults_declined.empty());
    CHECK(mla.vram_bytes > 0);
  }
  SECTION("more than the card holds: 1,024 sessions of 16M tokens") {
    r.max_sessions = 1024;
    r.context_tokens = int64_t{1} << 24;
    const PlacementPlan p = plan_placement(m.files, m.weights, r);
    CHECK_THAT(p.gpu_defaults_declined, Contains("free") && Contains("cuda:0"));
    all_on_cpu(p);
  }
  SECTION("a flag that asks for the hybrid defaults is the user's choice: no fall-back") {
    r.cpu_attention_reason = "--kv-disk needs the CPU's attention";
    r.flags.cpu_moe = true;
    const PlacementPlan p = plan_placement(m.files, m.weights, r);
    CHECK(p.gpu_defaults_declined.empty());
    CHECK(p.placement.device_for(WeightGroup::attention, 0) == gpu0);
  }
  SECTION("rules of the user's come first; the defaults fill the rest") {
    r.rules = "output=cpu";
    const PlacementPlan p = plan_placement(m.files, m.weights, r);
    CHECK(p.placement.device_for(WeightGroup::output) == cpu);
    CHECK(p.placement.device_for(WeightGroup::attention, 1) == gpu0);
  }
  SECTION("no GPU: the CPU does everything, and nothing was declined") {
    r.gpu_available = false;
    r.flags.vram_total_bytes = 0;
    const PlacementPlan p = plan_placement(m.files, m.weights, r);
    CHECK(p.gpu_defaults_declined.empty());
    all_on_cpu(p);
  }
  SECTION("without gpu_by_default the defaults stay on the CPU") {
    r.gpu_by_default = false;
    all_on_cpu(plan_placement(m.files, m.weights, r));
  }
}

TEST_CASE("the CUDA backend's working memory is planned with attention on the GPU and counted in the budget",
          "[engine][plan]") {
  const Model& m = qwen();
  const ModelConfig& c = m.files.config;
  const Placement all_gpu = Placement::parse("*=cuda:0", true);
  const Placement hybrid = Placement::parse("experts=cpu,*=cuda:0", true);
  CHECK(planned_cuda_working_bytes(c, m.weights, Placement::parse("*=cpu", true), 4096, 256) == 0);
  CHECK(planned_cuda_working_bytes(c, m.weights, Placement::parse("attention=cpu,*=cuda:0", true), 4096, 256) == 0);
  // Hybrid, no streaming and passes below cuBLAS's 256 rows: nothing beyond the buffers.
  CHECK(planned_cuda_working_bytes(c, m.weights, hybrid, 128, 0) == 0);
  // Passes grow the scratch; resident experts add their pairs' rows.
  const uint64_t dense_512 = planned_cuda_working_bytes(c, m.weights, hybrid, 512, 0);
  CHECK(dense_512 > 0);
  CHECK(planned_cuda_working_bytes(c, m.weights, hybrid, 4096, 0) > dense_512);
  const uint64_t resident = planned_cuda_working_bytes(c, m.weights, all_gpu, 512, 0);
  const uint64_t pairs = 512 * static_cast<uint64_t>(c.num_experts_per_tok);
  // At least every (token, expert) pair's gathered input and output rows in float32.
  CHECK(resident >= dense_512 + pairs * static_cast<uint64_t>(c.hidden_size) * 2 * 4);
  // Streaming host experts for prefill adds two slots of the largest layer's experts, once the
  // passes are long enough to stream.
  uint64_t layer_experts = 0;
  for (const PlacedBytes& p : place_weights(m.weights, all_gpu))
    if (p.group == WeightGroup::experts) layer_experts = p.bytes / static_cast<uint64_t>(c.num_layers);
  const uint64_t streamed = planned_cuda_working_bytes(c, m.weights, hybrid, 512, 256);
  CHECK(streamed == resident + 2 * layer_experts);
  CHECK(planned_cuda_working_bytes(c, m.weights, hybrid, 512, 1024) == dense_512);

  // A budget that holds everything but the working memory is refused, naming it.
  PlanRequest r;
  r.rules = "*=cuda:0";
  r.gpu_available = true;
  r.context_tokens = 32;
  r.max_batch_tokens = 4096;
  r.flags.vram_total_bytes = 80 * kGiB;
  const PlacementPlan plan = plan_placement(m.files, m.weights, r);
  CHECK(plan.cuda_working_bytes == planned_cuda_working_bytes(c, m.weights, plan.placement, 4096, 256));
  bool listed = false;
  for (const PlanLine& l : plan.lines) listed = listed || (l.what == "CUDA working memory" && l.bytes == plan.cuda_working_bytes);
  CHECK(listed);
  r.flags.vram_budget = std::to_string(plan.vram_bytes - plan.cuda_working_bytes / 2);
  CHECK_THAT(error_message([&] { plan_placement(m.files, m.weights, r); }, ErrorKind::out_of_memory),
             Contains("CUDA working") && Contains("--ubatch"));
  r.flags.vram_budget = std::to_string(plan.vram_bytes);
  CHECK(plan_placement(m.files, m.weights, r).vram_bytes == plan.vram_bytes);
}

TEST_CASE("the weight and KV types the CUDA backend reads, known in every build", "[engine][plan]") {
  for (DType t : {DType::f32, DType::f16, DType::bf16, DType::f8_e4m3, DType::q4_0, DType::q8_0, DType::q4_k,
                  DType::q5_k, DType::q6_k, DType::iq4_xs})
    CHECK(cuda_weight_type_supported(t));
  for (DType t : {DType::q2_k, DType::q3_k, DType::i32, DType::f64}) CHECK_FALSE(cuda_weight_type_supported(t));
  CHECK(cuda_kv_type_supported(KvType::f16));
  CHECK(cuda_kv_type_supported(KvType::fp8));
  CHECK(cuda_kv_type_supported(KvType::int8));
  CHECK_FALSE(cuda_kv_type_supported(KvType::int4));
  CHECK_FALSE(cuda_kv_type_supported(KvType::int4_g64));
  CHECK(cuda_kv_type_supported(KvType::bf16));
}

TEST_CASE("the plan's staged output head: the Q6_K shapes the CUDA decode kernel stages in shared memory",
          "[engine][plan]") {
  const auto head = [](DType t, int64_t rows, int64_t width) {
    TensorView v;
    v.dtype = t;
    v.shape = Shape{rows, width};
    return v;
  };
  CHECK(gpu_head_staged(head(DType::q6_k, 151936, 2048)));   // Qwen3-30B-A3B: 1,680-byte rows
  CHECK(gpu_head_staged(head(DType::q6_k, 151936, 4096)));   // Qwen3-235B-A22B: 3,360
  CHECK_FALSE(gpu_head_staged(head(DType::q6_k, 129280, 7168)));  // DeepSeek-V3: 5,880, not 16-byte aligned
  CHECK_FALSE(gpu_head_staged(head(DType::q6_k, 32000, 1024)));   // 840-byte rows, not 16-byte aligned
  CHECK_FALSE(gpu_head_staged(head(DType::q6_k, 1024, 2048)));    // too few rows
  CHECK_FALSE(gpu_head_staged(head(DType::q4_k, 151936, 2048)));
  // Reads at the fitted rate, or that share of a slower card's bandwidth.
  CHECK(gpu_staged_head_read_gbps(3073) == kGpuStagedHeadReadGbps);
  CHECK(gpu_staged_head_read_gbps(1008) == Approx(0.72 * 1008));
}

TEST_CASE("an engine loads with llama.cpp's spellings; without a GPU everything stays on the CPU", "[engine][plan]") {
  if (cuda_forward_available()) {
    WARN("skipped: this machine has a GPU, so the CPU-only fallback is not what runs");
    return;
  }
  LoadOptions o;
  o.max_context_tokens = 32;
  o.max_sessions = 1;
  o.threads = 2;
  o.load_tokenizer = false;
  o.placement_flags.cpu_moe = true;
  o.placement_flags.n_gpu_layers = "99";
  const auto engine = Engine::load(test::data_dir() + "/tiny-qwen3moe/qwen3moe-q8_0.gguf", o);
  for (WeightGroup g : kAllWeightGroups) CHECK(engine->placement().device_for(g, 1) == cpu);

  // The CLI's automatic defaults: no GPU, so the CPU does everything, and no notice about it.
  LoadOptions automatic = o;
  automatic.placement_flags = {};
  automatic.gpu_by_default = true;
  const auto plain = Engine::load(test::data_dir() + "/tiny-qwen3moe/qwen3moe-q8_0.gguf", automatic);
  for (WeightGroup g : kAllWeightGroups) CHECK(plain->placement().device_for(g, 1) == cpu);
  for (const std::string& w : plain->warnings()) CHECK_THAT(w, !Contains("placement"));
}

namespace {

// Bytes one decode token reads by definition: routed experts top_k/num_experts of theirs, the
// embedding one row, every other tensor all of its bytes (each tensor once per group).
double decode_bytes_by_definition(const Model& m) {
  const ModelConfig& c = m.files.config;
  std::set<std::tuple<const void*, uint64_t, WeightGroup>> seen;
  double bytes = 0;
  for_each_weight_tensor(m.weights, [&](WeightGroup g, int64_t, const TensorView& v, TensorRole) {
    if (v.empty() || !seen.insert({v.data, v.nbytes, g}).second) return;
    const auto b = static_cast<double>(v.nbytes);
    if (g == WeightGroup::experts)
      bytes += b * static_cast<double>(c.num_experts_per_tok) / static_cast<double>(c.num_experts);
    else if (g == WeightGroup::embedding)
      bytes += b / static_cast<double>(c.vocab_size);
    else
      bytes += b;
  });
  return bytes;
}

nlohmann::json plan_json(const std::string& args) {
  const auto r = test::run_cli_captured("plan " + args + " --json");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return nlohmann::json::parse(r.out);
}

void check_plan_file(const std::string& path) {
  const Model m(path);
  const nlohmann::json cpu_only = plan_json("-m " + test::shell_quote(path) + " --dram-gbps 10 --placement '*=cpu'");
  for (const char* key : {"decode_tok_s", "prefill_4k_tok_s", "prefill_8k_tok_s", "vram_bytes", "placement"})
    CHECK(cpu_only.contains(key));
  CHECK(cpu_only["vram_bytes"] == 0);
  // The rule, then the defaults (a GPU machine's put the rest on it; the first match wins).
  const std::string rules = cpu_only["placement"]["rules"];
  CHECK(rules.rfind("*=cpu,", 0) == 0);
  CHECK((rules == "*=cpu,*=cpu" || cuda_forward_available()));
  const double expected = 10e9 / decode_bytes_by_definition(m);
  CHECK(cpu_only["decode_tok_s"].get<double>() == Approx(expected).epsilon(1e-6));
  CHECK(cpu_only["prefill_4k_tok_s"].get<double>() > 0);
  // A longer prompt attends over more keys per token: never faster.
  CHECK(cpu_only["prefill_8k_tok_s"].get<double>() <= cpu_only["prefill_4k_tok_s"].get<double>());

  const nlohmann::json budget = plan_json("-m " + test::shell_quote(path) + " --dram-gbps 10 --vram-budget 4G --vram-total 80G");
  CHECK(budget["vram_bytes"].get<uint64_t>() <= 4 * kGiB);
  CHECK(budget["vram_bytes"].get<uint64_t>() > 0);
  CHECK(budget["vram_budget_bytes"] == 4 * kGiB);
  CHECK(budget["placement"]["groups"].is_array());
  // Everything fits the budget: every layer on the GPU pays its kernels' latency and reads its bytes
  // at the GEMV kernels' share of the VRAM bandwidth.
  REQUIRE(budget["decode_bytes_per_token_cpu"] == 0);
  REQUIRE(budget["split_layers"] == 0);
  // The GEMV kernels' rate: the fitted one on the H100 and H200 (3,073 and 4,355 GB/s measured),
  // 0.75 of a 24 GB card's 1,008 GB/s.
  CHECK(gpu_decode_read_gbps(3073) == 970.0);
  CHECK(gpu_decode_read_gbps(4355) == 970.0);
  CHECK(gpu_decode_read_gbps(1008) == Approx(756.0));
  const double vram_gbps = budget["vram_read_gbps"].get<double>();
  CHECK(budget["gpu_decode_read_gbps"].get<double>() ==
        Approx(std::min(kGpuDecodeReadGbps, kGpuDecodeReadShare * vram_gbps)).epsilon(1e-12));
  CHECK(budget["gpu_decode_read_fraction"].get<double>() ==
        Approx(budget["gpu_decode_read_gbps"].get<double>() / vram_gbps).epsilon(1e-12));
  // A Q6_K head the CUDA kernel stages (gpu_head_staged) reads at its own rate, the other GPU bytes
  // at the GEMV rate.
  const auto gpu_read_seconds = [](const nlohmann::json& j) {
    const double staged = j["decode_bytes_staged_head"].get<double>();
    return (j["decode_bytes_per_token_gpu"].get<double>() - staged) / (j["gpu_decode_read_gbps"].get<double>() * 1e9) +
           staged / (j["gpu_staged_head_read_gbps"].get<double>() * 1e9);
  };
  const double gpu_seconds =
      budget["gpu_token_seconds"].get<double>() +
      static_cast<double>(m.files.config.num_layers) * budget["gpu_layer_seconds"].get<double>() +
      gpu_read_seconds(budget);
  CHECK(budget["decode_tok_s"].get<double>() == Approx(1.0 / gpu_seconds).epsilon(1e-6));
  // Routed experts on the CPU, the rest on the GPU: each MoE layer runs both sides in turn and pays
  // the hand-off; every layer pays the GPU's kernel latency; the embedding and head stay on the GPU.
  const nlohmann::json hybrid =
      plan_json("-m " + test::shell_quote(path) + " --dram-gbps 10 --placement 'experts=cpu,*=cuda:0' --vram-total 80G");
  int64_t moe_layers = 0;
  for (const LayerWeights& layer : m.weights.layers) moe_layers += layer.is_moe ? 1 : 0;
  CHECK(hybrid["split_layers"] == moe_layers);  // a dense layer runs wholly on the GPU
  // Its prefill streams every MoE layer's experts to the GPU; with nothing in host memory, or no GPU
  // router, nothing streams.
  CHECK(hybrid["stream_experts_min_tokens"] == kStreamExpertsMinTokens);
  CHECK(hybrid["prefill_streamed_layers"] == moe_layers);
  CHECK(hybrid["prefill_streamed_bytes"].get<double>() == static_cast<double>(streamable_expert_bytes(
                                                              m.weights, Placement::parse("experts=cpu,*=cuda:0", true))));
  CHECK(cpu_only["prefill_streamed_layers"] == 0);
  CHECK(cpu_only["prefill_streamed_bytes"] == 0);
  CHECK(budget["prefill_streamed_layers"] == 0);
  const double hybrid_seconds =
      hybrid["gpu_token_seconds"].get<double>() +
      static_cast<double>(m.files.config.num_layers) * hybrid["gpu_layer_seconds"].get<double>() +
      static_cast<double>(moe_layers) * hybrid["layer_sync_seconds"].get<double>() +
      hybrid["decode_bytes_per_token_cpu"].get<double>() / 10e9 + gpu_read_seconds(hybrid);
  CHECK(hybrid["decode_bytes_per_token_cpu"].get<double>() > 0);
  CHECK(hybrid["decode_tok_s"].get<double>() == Approx(1.0 / hybrid_seconds).epsilon(1e-6));
  // Expert deferral (N of top_k): every split layer but the model's last runs N/top_k of its CPU experts
  // while the next layer's GPU part runs, hiding the shorter of the two. From 10 GB/s these tiny
  // experts take nanoseconds against the GPU's 34 µs a layer: each MoE layer but the last hides its
  // deferred part whole.
  const int64_t top_k = m.files.config.num_experts_per_tok;
  REQUIRE(top_k >= 2);
  const nlohmann::json deferred = plan_json("-m " + test::shell_quote(path) +
                                            " --dram-gbps 10 --placement 'experts=cpu,*=cuda:0' --vram-total 80G --defer-experts 1");
  CHECK(deferred["defer_experts"] == 1);
  const double cpu_layer_seconds = hybrid["decode_bytes_per_token_cpu"].get<double>() / 10e9 / static_cast<double>(moe_layers);
  CHECK(1.0 / deferred["decode_tok_s"].get<double>() ==
        Approx(hybrid_seconds - static_cast<double>(moe_layers - 1) * cpu_layer_seconds / static_cast<double>(top_k))
            .epsilon(1e-9));
  // With nothing split, nothing overlaps: the prediction stays.
  CHECK(plan_json("-m " + test::shell_quote(path) + " --dram-gbps 10 --placement '*=cpu' --defer-experts 1")["decode_tok_s"] ==
        cpu_only["decode_tok_s"]);
  const auto too_many = test::run_cli_captured("plan -m " + test::shell_quote(path) + " --dram-gbps 10 --defer-experts " +
                                               std::to_string(top_k));
  CHECK(too_many.exit_code != 0);
  CHECK_THAT(too_many.err, Contains("--defer-experts " + std::to_string(top_k)));
  // Which placement wins depends on the model (a tiny one decodes faster from 10 GB/s of DRAM than
  // through a GPU's kernel latency); from DRAM a thousand times slower, the GPU's always does.
  const std::string slow_dram = "-m " + test::shell_quote(path) + " --dram-gbps 0.01";
  CHECK(plan_json(slow_dram + " --vram-budget 4G --vram-total 80G")["decode_tok_s"].get<double>() >
        plan_json(slow_dram + " --placement '*=cpu'")["decode_tok_s"].get<double>());

  const auto small = test::run_cli_captured("plan -m " + test::shell_quote(path) + " --dram-gbps 10 --vram-budget 100M --vram-total 80G");
  CHECK(small.exit_code != 0);
  CHECK_THAT(small.err, Contains("too small") && Contains("needed") && Contains("CUDA reserve"));
}

}  // namespace

TEST_CASE("tandem plan on the bundled models: keys, budget, CPU-only decode = bandwidth / bytes per token",
          "[engine][plan][cli]") {
  check_plan_file(test::data_dir() + "/tiny-qwen3moe/qwen3moe-q8_0.gguf");
  check_plan_file(test::data_dir() + "/tiny-deepseekv3/deepseekv3-q8_0.gguf");
}

TEST_CASE("tandem plan: the hybrid split by default for a card, declined with the reason when it cannot serve",
          "[engine][plan][cli]") {
  const std::string model = "-m " + test::shell_quote(test::data_dir() + "/tiny-qwen3moe/qwen3moe-q8_0.gguf");
  // --vram-total plans for a card this machine need not have.
  const nlohmann::json hybrid = plan_json(model + " --dram-gbps 10 --vram-total 24G");
  CHECK(hybrid["placement"]["rules"] == "experts=cpu,*=cuda:0");
  CHECK(hybrid["gpu_defaults_declined"] == "");
  CHECK(hybrid["vram_bytes"].get<uint64_t>() > 0);
  CHECK(hybrid["split_layers"].get<int64_t>() > 0);
  // --expert-cache SIZE without a budget: that much holds experts of every layer (all but one each
  // here), whose share of the decode bytes the speed model reads from VRAM.
  const nlohmann::json cached = plan_json(model + " --dram-gbps 10 --vram-total 24G --expert-cache 1G");
  CHECK(cached["expert_cache_per_layer"] == 7);
  CHECK(cached["expert_cache_layers"] == 3);
  CHECK(cached["expert_cache_bytes"].get<uint64_t>() > 0);
  CHECK(cached["vram_bytes"].get<uint64_t>() == hybrid["vram_bytes"].get<uint64_t>() +
                                                     cached["expert_cache_bytes"].get<uint64_t>());
  CHECK(cached["decode_bytes_per_token_cpu"].get<double>() < hybrid["decode_bytes_per_token_cpu"].get<double>());
  CHECK(cached["decode_bytes_per_token_gpu"].get<double>() > hybrid["decode_bytes_per_token_gpu"].get<double>());
  CHECK(hybrid["expert_cache_bytes"] == 0);
  const auto cache_text = test::run_cli_captured("plan " + model + " --dram-gbps 10 --vram-total 24G --expert-cache 1G");
  CHECK_THAT(cache_text.out, Contains("expert cache     7 experts held in each of 3 layers"));
  const auto bad = test::run_cli_captured("plan " + model + " --dram-gbps 10 --vram-total 24G --expert-cache lots");
  CHECK(bad.exit_code != 0);
  CHECK_THAT(bad.err, Contains("--expert-cache 'lots'"));
  const nlohmann::json int4 = plan_json(model + " --dram-gbps 10 --vram-total 24G --kv-type int4");
  CHECK(int4["placement"]["rules"] == "*=cpu");
  CHECK(int4["vram_bytes"] == 0);
  CHECK_THAT(int4["gpu_defaults_declined"].get<std::string>(), Contains("--kv-type int4"));
  // A 100 MiB card cannot hold even the KV pool of 8 sessions of 4k tokens and the CUDA reserve.
  const nlohmann::json small = plan_json(model + " --dram-gbps 10 --vram-total 100M --parallel 8 -c 4096");
  CHECK(small["placement"]["rules"] == "*=cpu");
  CHECK_THAT(small["gpu_defaults_declined"].get<std::string>(), Contains("free"));
  const auto text = test::run_cli_captured("plan " + model + " --dram-gbps 10 --vram-total 24G --kv-type int4");
  CHECK(text.exit_code == 0);
  CHECK_THAT(text.out, Contains("not the hybrid defaults") && Contains("--kv-type int4"));
}

namespace {

// The GPU's FLOPs of one Qwen3-30B-A3B layer in an N-token pass by the plan's count: 2 × the weight
// elements a token reads (the routed experts at top_k/num_experts, every norm) and causal attention
// over N/2 keys.
double qwen3_layer_flops(const ModelConfig& c, int64_t tokens) {
  const auto hidden = static_cast<double>(c.hidden_size), head = static_cast<double>(c.head_dim);
  const auto heads = static_cast<double>(c.num_heads), kv_heads = static_cast<double>(c.num_kv_heads);
  const double attention = hidden * head * (2 * heads + 2 * kv_heads) + 2 * head + 2 * hidden;  // q, o, k, v; 4 norms
  const double experts = static_cast<double>(c.num_experts_per_tok) * 3 * static_cast<double>(c.moe_intermediate_size) * hidden;
  const double router = static_cast<double>(c.num_experts) * hidden;
  const auto n = static_cast<double>(tokens);
  return 2 * (attention + experts + router) * n + 2 * heads * 2 * head * static_cast<double>(tokens / 2) * n;
}

// Hybrid prefill on the one-layer synthetic Qwen3-30B-A3B Q4_K_M: the pass streams the layer's
// routed experts (gate and up Q4_K, 144 bytes a 256-value block; down Q6_K, 210, llama.cpp's "more
// bits" for a last layer) and computes them on the GPU, the layer taking max(copy, GPU compute).
// `gpu`: the same file all on cuda:0.
void check_streamed_prefill(const Model& m, const std::string& path, const nlohmann::json& gpu) {
  const ModelConfig& c = m.files.config;
  const nlohmann::json hybrid =
      plan_json("-m " + test::shell_quote(path) + " --dram-gbps 10 --vram-total 80G --placement 'experts=cpu,*=cuda:0'");
  const double values = static_cast<double>(c.num_experts * c.moe_intermediate_size * c.hidden_size);
  const double layer_bytes = values / 256 * (144 + 144 + 210);
  CHECK(layer_bytes == 128.0 * (2 * 884736 + 1290240));
  CHECK(hybrid["prefill_streamed_layers"] == 1);
  CHECK(hybrid["prefill_streamed_bytes"].get<double>() == layer_bytes);
  const double stream_gbps = hybrid["prefill_stream_gbps"].get<double>();
  CHECK(stream_gbps == Approx(0.91 * hybrid["pcie_gbps"].get<double>()).epsilon(1e-12));
  const double copy = layer_bytes / (stream_gbps * 1e9);
  const double compute = qwen3_layer_flops(c, 4096) / (gpu["gpu_gflops"].get<double>() * 1e9);
  // 391.6 MB at 0.91 × 55 GB/s (7.8 ms) against 4.9 ms of compute: the copy bounds it.
  CHECK(copy > compute);
  const double gpu_pass = 4096.0 / gpu["prefill_4k_tok_s"].get<double>();
  const double hybrid_pass = 4096.0 / hybrid["prefill_4k_tok_s"].get<double>();
  CHECK(hybrid_pass == Approx(gpu_pass - compute + std::max(copy, compute)).epsilon(1e-6));
  // The CPU computing the experts instead (streaming off in the environment, as for the engine).
  setenv("TANDEM_STREAM_EXPERTS_MIN_TOKENS", "0", 1);
  const nlohmann::json unstreamed =
      plan_json("-m " + test::shell_quote(path) + " --dram-gbps 10 --vram-total 80G --placement 'experts=cpu,*=cuda:0'");
  unsetenv("TANDEM_STREAM_EXPERTS_MIN_TOKENS");
  CHECK(unstreamed["stream_experts_min_tokens"] == 0);
  CHECK(unstreamed["prefill_streamed_layers"] == 0);
  CHECK(unstreamed["prefill_4k_tok_s"].get<double>() < hybrid["prefill_4k_tok_s"].get<double>());

  // In process: with a link fast enough the streamed layer is the all-GPU one; a pass below the
  // threshold keeps the CPU's experts; CPU-only and all-GPU placements stream nothing.
  MachineRates rates;
  rates.dram_read_gbps = 10;
  rates.cpu_gflops = 800;
  rates.gpu_present = true;
  const Placement hybrid_placement = Placement::parse("experts=cpu,*=cuda:0", true);
  const Placement gpu_placement = Placement::parse("*=cuda:0", true);
  const Placement cpu_placement = Placement::parse("*=cpu", true);
  const auto prefill = [&](const Placement& placement, const MachineRates& r, int64_t tokens) {
    return predict_prefill_tok_s(c, m.weights, placement, r, tokens);
  };
  MachineRates off = rates;
  off.stream_experts_min_tokens = 0;
  MachineRates fast_link = rates;
  fast_link.pcie_gbps = 1e6;
  CHECK(prefill(hybrid_placement, fast_link, 4096) == Approx(prefill(gpu_placement, fast_link, 4096)).epsilon(1e-12));
  const double copy_here = layer_bytes / (streamed_copy_gbps(rates.pcie_gbps) * 1e9);
  const double compute_here = qwen3_layer_flops(c, 4096) / (rates.gpu_gflops * 1e9);
  CHECK(4096.0 / prefill(hybrid_placement, rates, 4096) ==
        Approx(4096.0 / prefill(gpu_placement, rates, 4096) - compute_here + std::max(copy_here, compute_here))
            .epsilon(1e-6));
  CHECK(rates.stream_experts_min_tokens == 256);
  CHECK(prefill(hybrid_placement, rates, 255) == prefill(hybrid_placement, off, 255));
  CHECK(prefill(hybrid_placement, rates, 256) > 2 * prefill(hybrid_placement, off, 256));
  for (const Placement* p : {&cpu_placement, &gpu_placement}) {
    CHECK(prefill(*p, rates, 4096) == prefill(*p, off, 4096));
    CHECK(prefill(*p, rates, 8192) == prefill(*p, off, 8192));
  }
  // A prompt in passes (as bench model predicts it): one pass is the pass above; a pass after cached
  // tokens adds their attention (the CPU's layer is compute-bound here); a streamed 8k prompt in 4k
  // passes copies each layer's experts twice, slower than one 8k pass.
  const auto prompt = [&](const Placement& placement, int64_t tokens, int64_t pass, int64_t before) {
    return predict_prompt_prefill_tok_s(c, m.weights, placement, rates, tokens, pass, before);
  };
  CHECK(prompt(hybrid_placement, 4096, 4096, 0) == prefill(hybrid_placement, rates, 4096));
  CHECK(prompt(cpu_placement, 4096, 8192, 0) == prefill(cpu_placement, rates, 4096));
  const double attention_seconds =
      2.0 * c.num_heads * (2.0 * c.head_dim) * 4096.0 * 4096.0 * static_cast<double>(c.num_layers) / (rates.cpu_gflops * 1e9);
  CHECK(4096.0 / prompt(cpu_placement, 4096, 4096, 4096) ==
        Approx(4096.0 / prompt(cpu_placement, 4096, 4096, 0) + attention_seconds).epsilon(1e-9));
  CHECK(8192.0 / prompt(cpu_placement, 8192, 4096, 0) ==
        Approx(4096.0 / prompt(cpu_placement, 4096, 4096, 0) + 4096.0 / prompt(cpu_placement, 4096, 4096, 4096))
            .epsilon(1e-9));
  CHECK(prompt(hybrid_placement, 8192, 4096, 0) < prefill(hybrid_placement, rates, 8192));
  CHECK_THROWS_AS(prompt(cpu_placement, 0, 4096, 0), Error);
  CHECK_THROWS_AS(prompt(cpu_placement, 4096, 0, 0), Error);
  // The automatic threshold: streaming while the pinned mirrors take at most 40 % of the memory.
  CHECK(automatic_stream_experts_min_tokens(400, 1000.0) == 256);
  CHECK(automatic_stream_experts_min_tokens(401, 1000.0) == 0);
  CHECK(automatic_stream_experts_min_tokens(0, 1000.0) == 0);
  CHECK(automatic_stream_experts_min_tokens(400, 0.0) == 0);
}

}  // namespace

TEST_CASE("tandem plan on a synthetic Qwen3-30B-A3B layer", "[engine][plan][cli][synth]") {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "tandem-plan-test";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "qwen3-30b-1l.gguf").string();
  const auto synth = test::run_cli_captured("synth --preset qwen3-30b-a3b --layers 1 --quant q4_k_m -o " + test::shell_quote(path));
  REQUIRE(synth.exit_code == 0);
  check_plan_file(path);
  // The measured bandwidth is cached per machine and read back.
  setenv("XDG_CACHE_HOME", dir.string().c_str(), 1);
  const nlohmann::json measured = plan_json("-m " + test::shell_quote(path) + " --stream-mib 64");
  CHECK(measured["dram_source"] == "measured");
  if (!measured["gpu_present"].get<bool>()) {
    CHECK(measured["gpu_rates"] == "no GPU visible");
    CHECK(measured["pcie_h2d_gbps"] == 0.0);
  } else {  // measured on cuda:0 the first time, cached the second
    CHECK(measured["gpu_rates"] == "measured on cuda:0");
    CHECK(measured["pcie_gbps"].get<double>() > 1.0);
    CHECK(measured["vram_read_gbps"].get<double>() > measured["pcie_gbps"].get<double>());
  }
  const nlohmann::json cached = plan_json("-m " + test::shell_quote(path) + " --placement '*=cpu'");
  CHECK(cached["dram_source"].get<std::string>().starts_with("cached"));
  CHECK(cached["dram_read_gbps"] == measured["dram_read_gbps"]);
  if (cached["gpu_present"].get<bool>()) {
    CHECK(cached["gpu_rates"].get<std::string>().starts_with("cached"));
    CHECK(cached["vram_read_gbps"] == measured["vram_read_gbps"]);
  }
  // The CUDA working memory at 4,096-token passes with every expert on the GPU: cuBLAS's grouped rows
  // of 32,768 (token, expert) pairs and a 256 MiB chunk of dequantised experts, about 1 GB
  // (docs/PLACEMENT.md).
  const nlohmann::json gpu = plan_json("-m " + test::shell_quote(path) +
                                       " --dram-gbps 10 --vram-total 80G --placement '*=cuda:0' --max-batch-tokens 4096");
  CHECK(gpu["cuda_working_bytes"].get<double>() > 0.9e9);
  CHECK(gpu["cuda_working_bytes"].get<double>() < 1.2e9);
  // Decode: the Q6_K output head (151,936 rows of 1,680 bytes) at the staged kernel's rate, the rest
  // at the GEMV rate, one layer's latency and the token's.
  const double staged = gpu["decode_bytes_staged_head"].get<double>();
  CHECK(staged == 151936.0 * 1680.0);
  CHECK(gpu["gpu_staged_head_read_gbps"].get<double>() ==
        Approx(gpu_staged_head_read_gbps(gpu["vram_read_gbps"].get<double>())).epsilon(1e-12));
  const double token_seconds =
      gpu["gpu_token_seconds"].get<double>() + gpu["gpu_layer_seconds"].get<double>() +
      (gpu["decode_bytes_per_token_gpu"].get<double>() - staged) / (gpu["gpu_decode_read_gbps"].get<double>() * 1e9) +
      staged / (gpu["gpu_staged_head_read_gbps"].get<double>() * 1e9);
  CHECK(gpu["decode_tok_s"].get<double>() == Approx(1.0 / token_seconds).epsilon(1e-6));
  // Prefill all on the GPU at the fitted compute rate: the 48-layer file's one 4,096-token pass ran at
  // 17,401 tok/s on an H100 (docs/PERF.md), 4.90 ms a layer; this file's one layer takes that, plus
  // the output head read once (~0.07 ms; it computes one row).
  const double pass_seconds = 4096.0 / gpu["prefill_4k_tok_s"].get<double>();
  CHECK(pass_seconds > 4.8e-3);
  CHECK(pass_seconds < 5.05e-3);
  const Model m(path);
  CHECK(cached["decode_tok_s"].get<double>() ==
        Approx(cached["dram_read_gbps"].get<double>() * 1e9 / decode_bytes_by_definition(m)).epsilon(1e-6));
  check_streamed_prefill(m, path, gpu);
  unsetenv("XDG_CACHE_HOME");
  std::filesystem::remove_all(dir);
}
