// Every tiny model in every format against HF golden logits, greedy continuations against the
// manifest, and quantised files (tiny q8_0, small/ K-quants and IQ4_XS) as "runs, finite, equal to
// the same forward on dequantised weights".
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/golden_check.hpp"
#include "support/fixtures.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/cpu/reference/linear.hpp"
#include "tandem/engine/forward.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/model/model_files.hpp"
#include "tandem/model/weight_roles.hpp"

using namespace tandem;
namespace fs = std::filesystem;

namespace {

std::unique_ptr<Engine> load_with(const std::string& path, const ModelOverrides& overrides,
                                  KvType kv_type = KvType::f32) {
  LoadOptions options;
  options.kv_type = kv_type;
  options.max_context_tokens = 512;
  options.load_tokenizer = false;
  options.overrides = overrides;
  return Engine::load(path, options);
}

// F32: every position within tolerance, every argmax equal.
void check_golden(const std::string& model_path, const std::string& golden_path, double tolerance,
                  const ModelOverrides& overrides = {}) {
  auto engine = load_with(model_path, overrides);
  const auto r = test::compare_with_golden(*engine, golden_path);
  WARN(fs::path(model_path).filename().string()
       << " (" << fs::path(model_path).parent_path().filename().string() << "): " << r.prompts
       << " prompts, worst max|d|/max|golden| = " << r.worst_relative << ", argmax mismatches "
       << r.argmax_mismatches << "/" << r.positions);
  CHECK(r.prompts >= 4);
  CHECK(r.worst_relative <= tolerance);
  CHECK(r.argmax_mismatches == 0);
}

// BF16 weights against the F32 golden: rounding moves typical positions by ~3e-3, but on these
// random-weight models it also flips an expert choice at a few positions (a spike of 5e-2..1e-1
// at that one row) and near-tied argmaxes. Held to: 97% of positions within tolerance, argmax
// equal at 97% of positions.
void check_golden_rounded(const std::string& model_path, const std::string& golden_path, double tolerance,
                          const ModelOverrides& overrides = {}) {
  auto engine = load_with(model_path, overrides);
  const auto r = test::compare_with_golden(*engine, golden_path);
  std::vector<double> sorted = r.position_relative;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted.empty() ? INFINITY : sorted[sorted.size() / 2];
  WARN(fs::path(model_path).filename().string()
       << ": median position max|d|/max|golden| = " << median << ", worst " << r.worst_relative << ", within "
       << tolerance << ": " << r.fraction_within(tolerance) * 100 << "% of positions, argmax mismatches "
       << r.argmax_mismatches << "/" << r.positions);
  CHECK(r.prompts == 5);
  CHECK(median <= tolerance / 2);
  CHECK(r.fraction_within(tolerance) >= 0.97);
  CHECK(static_cast<double>(r.argmax_mismatches) <= 0.03 * static_cast<double>(r.positions));
}

// An f16 KV cache (the default) with F32 weights: rounding the cache moves a typical position by
// ~1e-4 of max|logit|; every argmax holds, and at least 99% of positions stay within the F32
// tolerance (an expert choice near a tie may flip at a single row, as on tiny-deepseekv3).
void check_golden_f16_kv(const std::string& model_path, const std::string& golden_path, double tolerance,
                         const ModelOverrides& overrides = {}) {
  auto engine = load_with(model_path, overrides, KvType::f16);
  const auto r = test::compare_with_golden(*engine, golden_path);
  WARN(fs::path(model_path).filename().string()
       << " f16 KV: worst " << r.worst_relative << ", within " << tolerance << ": "
       << r.fraction_within(tolerance) * 100 << "% of positions, argmax mismatches " << r.argmax_mismatches
       << "/" << r.positions);
  CHECK(r.prompts >= 4);
  CHECK(r.fraction_within(tolerance) >= 0.99);
  CHECK(r.argmax_mismatches == 0);
}

// The qwen2moe GGUFs lack rope.freq_base (llama.cpp then uses 10000); config.json says 1e6. Given
// as a user would: `--override-kv qwen2moe.rope.freq_base=float:1000000`.
ModelOverrides overrides_for(const std::string& name) {
  ModelOverrides o;
  if (name == "qwen2moe") o.metadata.push_back(parse_metadata_override("qwen2moe.rope.freq_base=float:1000000"));
  return o;
}

}  // namespace

static std::string golden_path_for(const std::string& fx, const std::string& name) {
  return fx + "/tiny/" + name + "/golden.safetensors";
}

TEST_CASE("every tiny model and format matches HF golden logits", "[engine][golden][fixtures]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  for (const std::string name : {"qwen3moe", "qwen2moe", "mixtral", "deepseekv2lite", "deepseekv3"}) {
    const std::string dir = fx + "/tiny/" + name;
    const std::string golden = dir + "/golden.safetensors";
    SECTION(name + " safetensors F32") { check_golden(dir, golden, 1e-3); }
    SECTION(name + " safetensors F32, f16 KV cache") { check_golden_f16_kv(dir, golden, 1e-3); }
    if (fs::exists(dir + "/" + name + "-f32.gguf")) {
      SECTION(name + " GGUF F32") {
        check_golden(dir + "/" + name + "-f32.gguf", golden, 1e-3, overrides_for(name));
      }
      SECTION(name + " GGUF BF16") {
        check_golden_rounded(dir + "/" + name + "-bf16.gguf", golden, 2e-2, overrides_for(name));
      }
    }
  }
  SECTION("qwen2moe GGUF F32 with ModelOverrides::rope_theta (the older spelling)") {
    ModelOverrides o;
    o.rope_theta = 1e6;
    check_golden(fx + "/tiny/qwen2moe/qwen2moe-f32.gguf", golden_path_for(fx, "qwen2moe"), 1e-3, o);
  }
  SECTION("deepseekv3-fp8 safetensors FP8") {
    const std::string dir = fx + "/tiny/deepseekv3-fp8";
    check_golden(dir, dir + "/golden.safetensors", 2e-2);
  }
}

TEST_CASE("greedy continuations equal the manifest's (F32 safetensors, prefill + decode)",
          "[engine][greedy][fixtures]") {
  const KvType kv_type = GENERATE(KvType::f32, KvType::f16);
  INFO("KV " << kv_type_name(kv_type));
  TANDEM_REQUIRE_FIXTURES(fx);
  std::ifstream in(fx + "/tiny/manifest.json");
  const auto manifest = nlohmann::json::parse(in);
  int checked = 0;
  for (const auto& [name, model] : manifest["models"].items()) {
    auto engine = test::load_for_test(fx + "/tiny/" + name, 4, 512, kv_type);
    for (const auto& gen : model["generations"]) {
      const auto prompt = gen["prompt_ids"].get<std::vector<int32_t>>();
      const auto expected = gen["greedy_ids"].get<std::vector<int32_t>>();
      auto session = engine->new_session();
      session->prefill(prompt);
      std::vector<int32_t> got;
      while (got.size() < expected.size()) {
        const auto logits = session->logits();
        const auto next =
            static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        got.push_back(next);
        if (got.size() < expected.size()) session->decode(next);
      }
      INFO(name << ": prompt of " << prompt.size() << " tokens");
      CHECK(got == expected);
      ++checked;
    }
  }
  CHECK(checked >= 6);
}

namespace {

// The same weights, every tensor dequantised to float32 into `storage`.
struct DequantisedWeights {
  std::vector<std::vector<float>> storage;
  Weights weights;

  TensorView to_f32(const TensorView& v) {
    if (v.empty()) return v;
    storage.push_back(dequantize_to_vector(v));
    TensorView out = v;
    out.dtype = DType::f32;
    out.data = storage.back().data();
    out.nbytes = storage.back().size() * sizeof(float);
    return out;
  }
  LinearWeight to_f32(const LinearWeight& l) {
    LinearWeight out = l;
    out.weight = to_f32(l.weight);
    out.bias = to_f32(l.bias);
    if (!l.scale_inv.empty()) {  // fold FP8 block scales in, as the reference path does
      std::vector<float> rows(static_cast<size_t>(l.weight.shape.elements()));
      dequantize_weight_rows(l, 0, l.out_features(), rows.data());
      storage.push_back(std::move(rows));
      out.weight.data = storage.back().data();
      out.scale_inv = {};
    }
    return out;
  }
  explicit DequantisedWeights(const Weights& w) : weights(w) {
    storage.reserve(4096);
    // Every role, through the one enumeration the memory report and placement use.
    for_each_weight(weights, [&](WeightGroup, int64_t, auto& tensor_or_linear, auto...) {
      tensor_or_linear = to_f32(tensor_or_linear);
    });
    REQUIRE(storage.size() <= 4096);  // reserve keeps the pointers stable
  }
};

std::vector<float> forward_all_logits(const ModelConfig& c, const Weights& w, std::span<const int32_t> ids,
                                      CpuKernels kernels = CpuKernels::reference) {
  auto backend = make_cpu_backend(0, kernels);
  const int64_t n = static_cast<int64_t>(ids.size());
  KvPool kv({c.attention == AttentionKind::mla ? KvLayout::mla_latent : KvLayout::gqa, c.num_layers,
             c.kv_values_per_token_per_layer(), 16, (n + 15) / 16, Device::cpu()});
  BlockTable table;
  table.reserve(kv, n);
  ForwardPass forward(c, w, *backend, kv, n);
  std::vector<float> logits(static_cast<size_t>(n * c.vocab_size));
  const SequenceChunk chunk{ids, 0, &table, true};
  forward.run({&chunk, 1}, logits.data());
  return logits;
}

void check_quantised_file(const std::string& path, std::span<const int32_t> ids) {
  const ModelFiles files = open_model_files(path);
  const Weights weights = bind_weights(files);
  const auto quantised = forward_all_logits(files.config, weights, ids);
  CHECK(std::all_of(quantised.begin(), quantised.end(), [](float x) { return std::isfinite(x); }));
  const DequantisedWeights f32(weights);
  const auto reference = forward_all_logits(files.config, f32.weights, ids);
  const double rel = test::relative_max_error(quantised, reference);
  WARN(fs::path(path).filename().string() << ": finite; vs dequantised-F32 forward max|d|/max = " << rel);
  CHECK(rel <= 1e-5);
  // The fast kernels on the same file: activations rounded per block (Q8K / Q8) add their error,
  // and with these random weights' decisive routing a rounding may flip an expert (the README's
  // "test as a chain"), so per position the logits must keep their direction (cosine), not every value.
  const auto fast = forward_all_logits(files.config, weights, ids, CpuKernels::fast);
  const auto vocab = static_cast<size_t>(files.config.vocab_size);
  double worst = 1.0;
  for (size_t p = 0; p < ids.size(); ++p) {
    double dot = 0, nf = 0, nr = 0;
    for (size_t i = p * vocab; i < (p + 1) * vocab; ++i) {
      dot += double(fast[i]) * reference[i];
      nf += double(fast[i]) * fast[i];
      nr += double(reference[i]) * reference[i];
    }
    worst = std::min(worst, dot / std::sqrt(nf * nr));
  }
  WARN(fs::path(path).filename().string() << ": fast kernels vs dequantised-F32 forward: max|d|/max = "
                                          << test::relative_max_error(fast, reference) << ", worst cosine " << worst);
  CHECK(worst >= 0.85);  // measured: 0.87 on small deepseekv3 q4_k_m (flips), >= 0.96 on the rest
}

}  // namespace

TEST_CASE("tiny q8_0 GGUFs run and equal the forward on their dequantised weights",
          "[engine][quant][fixtures]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  const std::vector<int32_t> ids = {51, 261, 220, 80, 84, 72, 481, 263, 304, 86, 77, 280, 78, 87, 220, 73};
  for (const std::string name : {"qwen3moe", "qwen2moe", "deepseekv2lite", "deepseekv3"}) SECTION(name) {
      check_quantised_file(fx + "/tiny/" + name + "/" + name + "-q8_0.gguf", ids);
    }
}

TEST_CASE("small/ K-quant and IQ4_XS GGUFs load and run", "[engine][quant][fixtures]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  const std::vector<int32_t> ids = {51, 261, 220, 80, 84, 72, 481, 263, 304, 86, 77, 280};
  for (const std::string name : {"qwen3moe", "deepseekv3"})
    for (const std::string quant : {"q4_k_m", "q5_k_m", "q6_k", "iq4_xs", "q8_0"}) {
      const std::string path = fx + "/small/" + name + "/" + name + "-" + quant + ".gguf";
      if (!fs::exists(path)) continue;
      SECTION(name + " " + quant) { check_quantised_file(path, ids); }
    }
}
