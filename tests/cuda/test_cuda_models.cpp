// Whole models on the GPU: the bundled tiny models (F32 safetensors, Q8_0 GGUF) and the trained
// Qwen3-MoE Q4_K_M give the same logits with roles on cuda:0 as on the CPU, within the fixtures'
// tolerance (max |Δlogit| / max |logit| ≤ 1e-3, same argmax everywhere), and the same greedy
// continuation. Runs on the GPU machine; skips, saying so, without a GPU.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <string>

#include "cuda/cuda_test_support.hpp"
#include "support/fixtures.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/safetensors.hpp"
#include "tandem/kv/kv_disk_tier.hpp"
#include "tandem/text/tokenizer.hpp"

using namespace tandem;
using test::have_gpu;
using test::relative_error;

namespace {

// Prefill on the GPU in float32-accurate tiles unless prefill_bf16 (the bf16 tiles have their own test).
std::unique_ptr<Engine> load(const std::string& path, const std::string& placement, int64_t defer_experts = 0,
                             int64_t stream_experts_min_tokens = 0, bool prefill_bf16 = false,
                             KvType kv_type = KvType::f32) {
  LoadOptions o;
  o.cuda_prefill_bf16 = prefill_bf16;
  o.cuda_decode_q8 = false;  // float activations: the int8 products have their own test
  o.stream_experts_min_tokens = stream_experts_min_tokens;
  o.defer_experts = defer_experts;
  o.kv_type = kv_type;
  o.max_context_tokens = 512;
  o.max_sessions = 1;
  o.kv_block_tokens = 16;
  o.max_batch_tokens = 64;
  o.load_tokenizer = false;
  o.placement = placement;
  o.cpu_kernels = CpuKernels::reference;  // the CPU side as the yardstick: float32 activations, as the GPU's
  return Engine::load(path, o);
}

std::vector<float> prompt_logits(Engine& engine, const std::vector<int32_t>& ids) {
  auto session = engine.new_session();
  session->prefill(ids, /*all_logits=*/true);
  const auto all = session->all_logits();
  return {all.begin(), all.end()};
}

std::vector<int32_t> greedy(Engine& engine, const std::vector<int32_t>& prompt, size_t count) {
  auto session = engine.new_session();
  session->prefill(prompt);
  std::vector<int32_t> got;
  while (got.size() < count) {
    const auto logits = session->logits();
    got.push_back(static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    if (got.size() < count) session->decode(got.back());
  }
  return got;
}

int64_t argmax_mismatches(const std::vector<float>& a, const std::vector<float>& b, int64_t vocab) {
  int64_t n = 0;
  for (size_t row = 0; row + size_t(vocab) <= a.size(); row += size_t(vocab))
    n += std::max_element(a.begin() + long(row), a.begin() + long(row) + vocab) - a.begin() !=
         std::max_element(b.begin() + long(row), b.begin() + long(row) + vocab) - b.begin();
  return n;
}

// The golden prompts of a tiny model folder, or a fixed prompt when there is none.
std::vector<std::vector<int32_t>> prompts(const std::string& folder) {
  std::vector<std::vector<int32_t>> out;
  const std::string golden = folder + "/golden.safetensors";
  if (std::filesystem::exists(golden)) {
    const auto st = SafetensorsModel::open(golden);
    for (int k = 0; k < 4; ++k) {
      const TensorEntry* e = st.tensors().find("prompt" + std::to_string(k) + ".ids");
      if (e == nullptr) continue;
      const auto* p = static_cast<const int32_t*>(e->view.data);
      out.emplace_back(p, p + e->view.shape.elements());
    }
  }
  if (out.empty()) out.push_back({1, 22, 333, 44, 5, 66, 7, 88, 9, 100, 11, 120});
  return out;
}

void check_model(const std::string& path, const std::string& folder,
                 const std::vector<std::string>& placements = {"*=cuda:0", "experts=cpu,*=cuda:0",
                                                                "attention=cuda:0,*=cpu"},
                 KvType kv_type = KvType::f32) {
  // An fp8 cache: a K/V value the two backends project a float rounding apart can land on
  // neighbouring codes (1/16 apart at 3 mantissa bits), which moves the logits by more than the
  // float32 paths' 1e-3 (measured on the H200: up to 1.7e-3 on tiny-qwen3moe); int8 codes are 1/127
  // of a group's scale apart and stay within it.
  const double tolerance = kv_type == KvType::fp8 ? 5e-3 : 1e-3;
  const auto cpu = load(path, "*=cpu", 0, 0, false, kv_type);
  const int64_t vocab = cpu->config().vocab_size;
  const auto all_prompts = prompts(folder);
  for (const std::string& placement : placements) {
    const auto gpu = load(path, placement, 0, 0, false, kv_type);
    for (size_t k = 0; k < all_prompts.size(); ++k) {
      const auto expected = prompt_logits(*cpu, all_prompts[k]);
      const auto got = prompt_logits(*gpu, all_prompts[k]);
      INFO(path << " --placement '" << placement << "' --kv-type " << kv_type_name(kv_type) << " prompt " << k);
      CHECK(relative_error(got, expected) <= tolerance);
      CHECK(argmax_mismatches(got, expected, vocab) == 0);
    }
    INFO(path << " --placement '" << placement << "' --kv-type " << kv_type_name(kv_type) << " greedy");
    CHECK(greedy(*gpu, all_prompts[0], 24) == greedy(*cpu, all_prompts[0], 24));
  }
}

}  // namespace

TEST_CASE("cuda whole model: tiny Qwen3-MoE (F32 and Q8_0) on cuda:0 equals the CPU", "[cuda][model]") {
  if (!have_gpu()) return;
  const std::string folder = test::data_dir() + "/tiny-qwen3moe";
  check_model(folder, folder);
  check_model(folder + "/qwen3moe-q8_0.gguf", folder);
}

TEST_CASE("cuda whole model: tiny DeepSeek-V3 (MLA, F32 and Q8_0) on cuda:0 equals the CPU", "[cuda][model]") {
  if (!have_gpu()) return;
  const std::string folder = test::data_dir() + "/tiny-deepseekv3";
  check_model(folder, folder);
  check_model(folder + "/deepseekv3-q8_0.gguf", folder);
}

// A quantised cache on both sides: the GPU encodes the rows the CPU would (the same codes, up to the
// float rounding of the K/V projections feeding them) and attends over the same dequantised values.
TEST_CASE("cuda whole model: fp8 and int8 KV in VRAM equal the CPU with the same KV type", "[cuda][model][kv]") {
  if (!have_gpu()) return;
  const std::vector<std::string> all_gpu = {"*=cuda:0"};
  for (KvType type : {KvType::fp8, KvType::int8}) {
    const std::string folder = test::data_dir() + "/tiny-qwen3moe";
    check_model(folder, folder, all_gpu, type);
    const std::string mla = test::data_dir() + "/tiny-deepseekv3";  // the MLA latent cache
    check_model(mla, mla, all_gpu, type);
    const std::string trained = test::data_dir() + "/trained-qwen3moe";  // head_dim 64: split-K decode
    check_model(trained + "/qwen3moe-q4_k_m.gguf", trained, all_gpu, type);
  }
}

// Mean negative log-likelihood of each next id under the logits of the position before it.
double mean_nll(const std::vector<float>& logits, const std::vector<int32_t>& ids, int64_t vocab) {
  double total = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* row = logits.data() + t * static_cast<size_t>(vocab);
    const double top = *std::max_element(row, row + vocab);
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - top);
    total += top + std::log(sum) - row[ids[t + 1]];
  }
  return total / static_cast<double>(ids.size() - 1);
}

TEST_CASE("cuda whole model: bf16 prefill tiles on quantised files stay within their error", "[cuda][model]") {
  if (!have_gpu()) return;
  const std::string data = test::data_dir();
  for (const std::string& path : {data + "/tiny-qwen3moe/qwen3moe-q8_0.gguf", data + "/tiny-deepseekv3/deepseekv3-q8_0.gguf",
                                 data + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf"}) {
    if (!std::filesystem::exists(path)) {
      WARN("skipped: " << path << " is missing");
      continue;
    }
    const auto cpu = load(path, "*=cpu");
    const int64_t vocab = cpu->config().vocab_size;
    std::vector<int32_t> ids;  // 150 tokens: passes of 64, 64 and 22 (tiles from 32 tokens)
    for (int32_t i = 0; i < 150; ++i) ids.push_back(1 + (i * 37) % 200);
    const auto expected = prompt_logits(*cpu, ids);
    for (const std::string placement : {"*=cuda:0", "experts=cpu,*=cuda:0"}) {
      const auto precise = prompt_logits(*load(path, placement), ids);
      const auto got = prompt_logits(*load(path, placement, 0, 0, /*prefill_bf16=*/true), ids);
      const double error = relative_error(got, expected);
      int64_t positions_off = 0;  // positions whose logits differ by more than 1e-2 (a routing choice flipped)
      for (size_t row = 0; row < got.size(); row += static_cast<size_t>(vocab))
        positions_off += relative_error(std::span(got).subspan(row, size_t(vocab)),
                                        std::span(expected).subspan(row, size_t(vocab))) > 1e-2;
      const double nll = mean_nll(got, ids, vocab), nll_cpu = mean_nll(expected, ids, vocab);
      const int64_t flips = argmax_mismatches(got, expected, vocab);
      INFO(path << " --placement '" << placement << "': bf16 tiles " << error << " from the CPU (3xTF32 "
                << relative_error(precise, expected) << "), " << positions_off << " of 150 positions off by 1e-2, "
                << flips << " argmax differ, NLL " << nll << " vs " << nll_cpu);
      CHECK(relative_error(precise, expected) <= 1e-3);
      CHECK(got != precise);  // the bf16 tiles ran
      // Measured on the H200: 1e-2 or less on the tiny files and the trained file on cuda:0; on the
      // trained file in hybrid a near-tied routing choice flipped and the later positions moved with
      // it (0.158 at most, 64 of 150 positions beyond 1e-2, 5 argmax differ) while its NLL stayed
      // within 0.12 % (11.552 vs 11.565): the likelihood is the measure that matters there.
      const bool trained = path.find("trained") != std::string::npos;
      CHECK(error <= (trained ? 0.25 : 1e-2));
      CHECK(flips <= 15);  // a tenth: random tiny models have near ties
      CHECK(std::fabs(nll - nll_cpu) <= 3e-3 * nll_cpu);  // the perplexity bound: 0.3 %
      WARN("bf16 prefill (measured): " << path << " '" << placement << "' " << error << ", " << positions_off
                                        << " positions off by 1e-2, " << flips << " argmax differ, NLL " << nll
                                        << " vs " << nll_cpu);
    }
  }
}

// The first `max_bytes` of a text file as the model's tokenizer encodes them (no special tokens).
std::vector<int32_t> text_tokens(const std::string& model, const std::string& text_path,
                                 size_t max_bytes = SIZE_MAX) {
  std::ifstream in(text_path, std::ios::binary);
  REQUIRE(in);
  std::string text;
  text.assign(std::istreambuf_iterator<char>(in), {});
  if (text.size() > max_bytes) text.resize(max_bytes);
  LoadOptions o;
  o.max_sessions = 1;
  o.max_context_tokens = 64;
  o.placement = "*=cpu";
  return Engine::load(model, o)->tokenizer()->encode(text, /*add_special=*/false);
}

// Token by token, so that every position goes through the decode GEMVs: each position's logits
// (appended to `logits`) and the mean negative log-likelihood of the next id.
double decode_nll(Engine& engine, const std::vector<int32_t>& ids, std::vector<float>& logits) {
  auto session = engine.new_session();
  session->prefill(std::span(ids).first(1));
  std::vector<float> mine;
  for (size_t t = 1; t < ids.size(); ++t) {
    const auto l = session->logits();
    mine.insert(mine.end(), l.begin(), l.end());
    if (t + 1 < ids.size()) session->decode(ids[t]);
  }
  logits.insert(logits.end(), mine.begin(), mine.end());
  return mean_nll(mine, ids, engine.config().vocab_size);
}

TEST_CASE("cuda whole model: int8 decode products on the trained Q4_K_M file stay within their error",
          "[cuda][model][q8]") {
  if (!have_gpu()) return;
  const std::string path = test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf";
  const std::vector<int32_t> tokens = text_tokens(path, test::data_dir() + "/trained-qwen3moe/eval-dev-head.txt");
  REQUIRE(tokens.size() >= 512);
  const auto cpu = load(path, "*=cpu");
  for (const std::string placement : {"*=cuda:0", "experts=cpu,*=cuda:0"}) {
    LoadOptions o = cpu->options();
    o.placement = placement;
    const auto precise = load(path, placement);
    o.cuda_decode_q8 = true;
    o.cuda_prefill_bf16 = false;
    const auto q8 = Engine::load(path, o);
    double nll_cpu = 0, nll_precise = 0, nll_q8 = 0;
    std::vector<float> l_cpu, l_precise, l_q8;
    for (size_t w = 0; w < 2; ++w) {  // two windows of 256 tokens
      const std::vector<int32_t> ids(tokens.begin() + static_cast<long>(256 * w),
                                     tokens.begin() + static_cast<long>(256 * (w + 1)));
      nll_cpu += decode_nll(*cpu, ids, l_cpu) / 2;
      nll_precise += decode_nll(*precise, ids, l_precise) / 2;
      nll_q8 += decode_nll(*q8, ids, l_q8) / 2;
    }
    const int64_t vocab = cpu->config().vocab_size;
    const double error = relative_error(l_q8, l_cpu);
    INFO("--placement '" << placement << "': int8 products " << error << " from the CPU (float "
                         << relative_error(l_precise, l_cpu) << "), " << argmax_mismatches(l_q8, l_cpu, vocab)
                         << " of 510 argmax differ, NLL " << nll_q8 << " vs " << nll_cpu);
    CHECK(relative_error(l_precise, l_cpu) <= 1e-3);
    CHECK(l_q8 != l_precise);  // the int8 products ran
    CHECK(std::fabs(nll_q8 - nll_cpu) <= 3e-3 * nll_cpu);  // the perplexity bound: 0.3 %
    CHECK(argmax_mismatches(l_q8, l_cpu, vocab) <= 10);    // 2 % of positions: near ties
    WARN("int8 decode (measured): '" << placement << "' " << error << " from the CPU, "
                                     << argmax_mismatches(l_q8, l_cpu, vocab) << " of 510 argmax differ, NLL "
                                     << nll_q8 << " vs " << nll_cpu << " (float on the GPU " << nll_precise << ")");
  }
}

// Issue 16's quality bound on the second trained model: DeepSeek-V3 (MLA, a dense first layer, a
// shared expert, group-limited routing) in Q4_K_M, each placement with the GPU's default paths (int8
// decode products, bf16 prefill tiles) and the CPU's fast kernels, as users run it, against the CPU's
// reference kernels: perplexity token by token over two 256-token windows of the held-out text, and
// over four windows each in one prefill (the prefill tiles), each within 0.3 % of the CPU's.
TEST_CASE("cuda whole model: trained DeepSeek-V3 Q4_K_M on the GPU's default paths keeps the CPU's perplexity "
          "within 0.3 %",
          "[cuda][model][q8][fixtures]") {
  if (!have_gpu()) return;
  TANDEM_REQUIRE_FIXTURES(fx);
  const std::string path = fx + "/trained/deepseekv3-q4_k_m.gguf";
  const std::vector<int32_t> tokens = text_tokens(path, fx + "/trained/text/eval-dev.txt", 96 * 1024);
  const auto cpu = load(path, "*=cpu");
  const int64_t vocab = cpu->config().vocab_size;
  // One prefill per 256-token window, four windows: a single window's perplexity moves by up to
  // ~0.6 % between the CPU's own fast and reference kernels on this model (windows 1-2 of `tandem
  // perplexity --ctx 256`), where eight agree within 0.013 %; on the H100 the hybrid's one window
  // was past 0.3 % while its 510 decode positions were within it.
  const auto window = [&](size_t w) {
    return std::vector<int32_t>(tokens.begin() + static_cast<long>(256 * w),
                                tokens.begin() + static_cast<long>(256 * (w + 1)));
  };
  const auto prefill_nll = [&](Engine& engine) {
    double nll = 0;
    for (size_t w = 0; w < 4; ++w) nll += mean_nll(prompt_logits(engine, window(w)), window(w), vocab) / 4;
    return nll;
  };
  REQUIRE(tokens.size() >= 4 * 256);
  const double prefill_nll_cpu = prefill_nll(*cpu);
  double nll_cpu = 0;
  std::vector<float> l_cpu;
  for (size_t w = 0; w < 2; ++w) nll_cpu += decode_nll(*cpu, window(w), l_cpu) / 2;
  for (const std::string placement : {"*=cuda:0", "experts=cpu,*=cuda:0"}) {
    LoadOptions o = cpu->options();
    o.placement = placement;
    o.cuda_decode_q8 = true;
    o.cuda_prefill_bf16 = true;
    o.cpu_kernels = CpuKernels::fast;
    const auto gpu = Engine::load(path, o);
    double nll_gpu = 0;
    std::vector<float> l_gpu;
    for (size_t w = 0; w < 2; ++w) nll_gpu += decode_nll(*gpu, window(w), l_gpu) / 2;
    const double prefill_nll_gpu = prefill_nll(*gpu);
    // exp(Δ mean NLL) is the perplexity ratio.
    const double decode_ratio = std::exp(nll_gpu - nll_cpu), prefill_ratio = std::exp(prefill_nll_gpu - prefill_nll_cpu);
    INFO("--placement '" << placement << "': perplexity token by token " << std::exp(nll_gpu) << " vs the CPU's "
                         << std::exp(nll_cpu) << " (" << decode_ratio << "), " << argmax_mismatches(l_gpu, l_cpu, vocab)
                         << " of 510 argmax differ; four prefills " << std::exp(prefill_nll_gpu) << " vs "
                         << std::exp(prefill_nll_cpu) << " (" << prefill_ratio << ")");
    CHECK(std::fabs(decode_ratio - 1) <= 3e-3);
    CHECK(std::fabs(prefill_ratio - 1) <= 3e-3);
    CHECK(argmax_mismatches(l_gpu, l_cpu, vocab) <= 10);  // 2 % of positions: near ties
    WARN("trained DeepSeek-V3 (measured): '" << placement << "' perplexity ratio " << decode_ratio
                                              << " token by token, " << prefill_ratio << " in four prefills");
  }
}

// Programmatic dependent launch (the default; TANDEM_CUDA_PDL=0 turns it off, read when a backend is made):
// the decode chain's kernels may be scheduled while their predecessor finishes and wait for it
// inside, so every logit must equal the plain launches' bit for bit, recorded (graphs) and eager.
TEST_CASE("cuda dependent launch gives the plain launches' logits bit for bit", "[cuda][model][pdl]") {
  if (!have_gpu()) return;
  const std::string path = test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf";
  const std::vector<int32_t> prompt = {1, 22, 333, 44, 5, 66, 7, 88, 9, 100, 11};
  for (const bool graphs : {true, false}) {
    LoadOptions o;
    o.kv_type = KvType::f16;
    o.max_context_tokens = 256;
    o.max_sessions = 1;
    o.load_tokenizer = false;
    o.placement = "*=cuda:0";
    o.cuda_graphs = graphs;
    auto steps = [&](bool dependent) {
      const auto engine = [&] {
        const test::ScopedEnv pdl("TANDEM_CUDA_PDL", dependent ? "1" : "0");  // read as the backend is made
        return Engine::load(path, o);
      }();
      auto session = engine->new_session();
      session->prefill(prompt);
      std::vector<float> all;
      for (int step = 0; step < 40; ++step) {
        const auto logits = session->logits();
        all.insert(all.end(), logits.begin(), logits.end());
        session->decode(static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
      }
      return all;
    };
    INFO((graphs ? "graphs" : "eager"));
    CHECK(steps(true) == steps(false));
  }
}

namespace {
// The trained Qwen3-MoE prompt's prefill and 6 greedy steps: every position's logits.
std::vector<float> prefill_and_decode(Session& session) {
  const std::vector<int32_t> prompt = {1, 22, 333, 44, 5, 66, 7, 88, 9, 100, 11};
  session.prefill(prompt);
  std::vector<float> all;
  for (int step = 0; step < 6; ++step) {
    const auto logits = session.logits();
    all.insert(all.end(), logits.begin(), logits.end());
    session.decode(static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
  }
  return all;
}

LoadOptions trained_qwen3_options(const std::string& placement, bool graphs) {
  LoadOptions o;
  o.kv_type = KvType::f16;
  o.max_context_tokens = 256;
  o.max_sessions = 2;
  o.load_tokenizer = false;
  o.placement = placement;
  o.cuda_graphs = graphs;
  return o;
}

// The first differing float of two runs, for the failure message.
std::string first_difference(const std::vector<float>& a, const std::vector<float>& b, int64_t vocab) {
  if (a.size() != b.size()) return "sizes " + std::to_string(a.size()) + " and " + std::to_string(b.size());
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i] && !(std::isnan(a[i]) && std::isnan(b[i])))
      return "step " + std::to_string(static_cast<int64_t>(i) / vocab) + ", logit " +
             std::to_string(static_cast<int64_t>(i) % vocab) + ": " + std::to_string(a[i]) + " vs " +
             std::to_string(b[i]);
  return "none";
}
}  // namespace

// A shape's first pass runs unrecorded and later ones replay its recording (graphs): the same prompt
// run again on one engine must give its first run's logits bit for bit.
TEST_CASE("cuda: a prompt run again on one engine gives its first logits bit for bit", "[cuda][model][graphs]") {
  if (!have_gpu()) return;
  const std::string path = test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf";
  for (const std::string placement : {"*=cuda:0", "experts=cpu,*=cuda:0"}) {
    const auto engine = Engine::load(path, trained_qwen3_options(placement, true));
    auto session = engine->new_session();
    const std::vector<float> first = prefill_and_decode(*session);
    session->reset();
    const std::vector<float> second = prefill_and_decode(*session);
    const std::vector<float> third = prefill_and_decode(*engine->new_session());
    const int64_t vocab = static_cast<int64_t>(first.size()) / 6;
    INFO(placement << ": first difference of the second run " << first_difference(first, second, vocab)
                   << "; of the third " << first_difference(first, third, vocab));
    CHECK(second == first);
    CHECK(third == first);
  }
}

// Issue 16's bad input: a CUDA error inside a step fails that call with an error naming it, and the
// process, the engine and the session (once reset) go on, giving what an engine that never failed
// gives after the same runs. The error is CUDA's own: a launch made with an invalid block size
// (TANDEM_CUDA_FAULT_AT_LAUNCH=n, the n-th dependent launch after the backend is made), early in the
// first prefill.
TEST_CASE("cuda: a CUDA error inside a step is that call's error; the engine and a reset session go on",
          "[cuda][model][fault]") {
  if (!have_gpu()) return;
  const std::string path = test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf";
  for (const std::string placement : {"*=cuda:0", "experts=cpu,*=cuda:0"}) {
    for (const bool graphs : {false, true}) {
      const LoadOptions o = trained_qwen3_options(placement, graphs);
      // The same history without the fault: a first run, a run after reset, a run on a new session.
      const auto clean = Engine::load(path, o);
      auto clean_session = clean->new_session();
      prefill_and_decode(*clean_session);
      clean_session->reset();
      const std::vector<float> again = prefill_and_decode(*clean_session);
      const std::vector<float> fresh = prefill_and_decode(*clean->new_session());
      INFO(placement << (graphs ? ", graphs" : ", eager"));
      const auto engine = [&] {
        const test::ScopedEnv fault("TANDEM_CUDA_FAULT_AT_LAUNCH", "12");  // read as the backend is made
        return Engine::load(path, o);
      }();
      auto session = engine->new_session();
      std::string message;
      try {
        prefill_and_decode(*session);
      } catch (const Error& e) {
        message = e.what();
      }
      INFO("the failed run's error: " << message);
      CHECK(message.find("TANDEM_CUDA_FAULT_AT_LAUNCH") != std::string::npos);
      session->reset();
      const std::vector<float> retried = prefill_and_decode(*session);
      const std::vector<float> renewed = prefill_and_decode(*engine->new_session());
      const int64_t vocab = static_cast<int64_t>(again.size()) / 6;
      INFO("first difference after reset " << first_difference(again, retried, vocab) << "; on a new session "
                                           << first_difference(fresh, renewed, vocab));
      CHECK(retried == again);
      CHECK(renewed == fresh);
    }
  }
}

TEST_CASE("cuda whole model: expert deferral on cuda:0 and hybrid equals the CPU's", "[cuda][model][deferral]") {
  if (!have_gpu()) return;
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    const std::string folder = test::data_dir() + "/" + name;
    const auto cpu = load(folder, "*=cpu", 1);
    const auto cpu_plain = load(folder, "*=cpu");
    const auto all_prompts = prompts(folder);
    for (const std::string placement : {"*=cuda:0", "experts=cpu,*=cuda:0", "router=cpu,*=cuda:0"}) {
      const auto gpu = load(folder, placement, 1);
      for (size_t k = 0; k < all_prompts.size(); ++k) {
        const auto expected = prompt_logits(*cpu, all_prompts[k]);
        INFO(name << " --placement '" << placement << "' --defer-experts 1, prompt " << k);
        CHECK(relative_error(prompt_logits(*gpu, all_prompts[k]), expected) <= 1e-3);
        CHECK(prompt_logits(*cpu_plain, all_prompts[k]) != expected);  // deferral did something
      }
    }
  }
}

TEST_CASE("cuda whole model: trained Qwen3-MoE Q4_K_M on cuda:0 equals the CPU", "[cuda][model]") {
  if (!have_gpu()) return;
  const std::string folder = test::data_dir() + "/trained-qwen3moe";
  check_model(folder + "/qwen3moe-q4_k_m.gguf", folder);
}

TEST_CASE("cuda whole model: every fixture architecture and weight type on cuda:0 equals the CPU",
          "[cuda][model][fixtures]") {
  if (!have_gpu()) return;
  TANDEM_REQUIRE_FIXTURES(fx);
  const std::vector<std::string> all_gpu = {"*=cuda:0"};
  // A partial copy of the fixtures (the GPU machine gets what fits its upload) checks what it has
  // and names what it skipped.
  const auto check_present = [&](const std::string& path, const std::string& folder) {
    if (!std::filesystem::exists(path) || !std::filesystem::exists(folder + "/config.json")) {
      WARN("skipped: " << path << " is not in this copy of the fixtures");
      return;
    }
    check_model(path, folder, all_gpu);
  };
  for (const std::string name : {"qwen3moe", "deepseekv3", "deepseekv2lite", "qwen2moe", "mixtral", "deepseekv3-fp8"}) {
    const std::string folder = fx + "/tiny/" + name;
    check_present(folder, folder);
    if (std::filesystem::exists(folder + "/" + name + "-bf16.gguf")) check_present(folder + "/" + name + "-bf16.gguf", folder);
  }
  for (const std::string name : {"qwen3moe", "deepseekv3"})
    for (const std::string quant : {"q4_k_m", "q5_k_m", "q6_k", "q8_0", "iq4_xs"}) {
      const std::string folder = fx + "/small/" + name;
      check_present(folder + "/" + name + "-" + quant + ".gguf", folder);
    }
  for (const std::string name : {"qwen3moe", "deepseekv3"}) check_present(fx + "/trained/" + name, fx + "/trained/" + name);
}

TEST_CASE("cuda placement: a rule naming a missing GPU is a clear error", "[cuda][model]") {
  if (!have_gpu()) return;
  const int count = cuda::device_count();
  const std::string rule = "*=cuda:" + std::to_string(count);
  try {
    (void)load(test::data_dir() + "/tiny-qwen3moe", rule);
    FAIL("loading with " << rule << " did not throw");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::invalid_argument);
    CHECK(std::string(e.what()).find("'" + rule + "'") != std::string::npos);
    CHECK(std::string(e.what()).find("CUDA device") != std::string::npos);
  }
}

// Issue 16's bad input: a KV pool the card cannot hold (the card filled by another allocation first)
// is out_of_memory naming the bytes needed and free and what to change, never a CUDA abort; once the
// memory is back, the same process loads and runs.
TEST_CASE("cuda out of memory at load is a clear error, and the process loads again after", "[cuda][model][oom]") {
  if (!have_gpu()) return;
  const std::string path = test::data_dir() + "/tiny-qwen3moe/qwen3moe-q8_0.gguf";
  LoadOptions o;
  o.placement = "*=cuda:0";
  o.load_tokenizer = false;
  o.max_sessions = 64;
  o.max_context_tokens = 131072;  // 8M tokens of KV: far past what is left free below
  {
    const uint64_t keep = uint64_t{512} << 20;
    const uint64_t free_bytes = cuda::device_info(0).free_bytes;
    REQUIRE(free_bytes > keep);
    const cuda::DeviceBuffer hog(0, free_bytes - keep);
    try {
      (void)Engine::load(path, o);
      FAIL("a load past the card's free memory did not throw");
    } catch (const Error& e) {
      const std::string what = e.what();
      INFO(what);
      CHECK(e.kind() == ErrorKind::out_of_memory);
      CHECK(what.find("cuda:0 is out of memory") != std::string::npos);
      CHECK(what.find("bytes") != std::string::npos);
      CHECK(what.find("free") != std::string::npos);
      CHECK((what.find("--placement") != std::string::npos || what.find("--ctx-size") != std::string::npos));
    }
  }
  o.max_sessions = 1;
  o.max_context_tokens = 256;
  const auto engine = Engine::load(path, o);
  auto session = engine->new_session();
  const std::vector<int32_t> prompt = {1, 22, 333, 44, 5};
  session->prefill(prompt);
  const auto logits = session->logits();
  CHECK(std::all_of(logits.begin(), logits.end(), [](float v) { return std::isfinite(v); }));
}

TEST_CASE("cuda automatic pass size: 4096 tokens when every MoE layer's experts live on the GPU, else 512",
          "[cuda][model]") {
  if (!have_gpu()) return;
  auto pass_tokens = [](const std::string& placement) {
    LoadOptions o;
    o.max_context_tokens = 8192;
    o.max_sessions = 1;
    o.load_tokenizer = false;
    o.stream_experts_min_tokens = 0;  // no streaming: its own rule would choose 8192
    o.placement = placement;
    return Engine::load(test::data_dir() + "/tiny-qwen3moe", o)->options().max_batch_tokens;
  };
  CHECK(pass_tokens("*=cuda:0") == LoadOptions::kGpuExpertsBatchTokens);
  CHECK(pass_tokens("experts=cpu,*=cuda:0") == LoadOptions::kDefaultBatchTokens);
  CHECK(pass_tokens("*=cpu") == LoadOptions::kDefaultBatchTokens);
}

TEST_CASE("cuda whole model: f16/bf16/fp8/int8 KV in VRAM with prefix reuse equals the CPU; other KV options are "
          "refused",
          "[cuda][model]") {
  if (!have_gpu()) return;
  const std::string folder = test::data_dir() + "/tiny-qwen3moe";
  const std::vector<int32_t> prompt = {1, 22, 333, 44, 5, 66, 7, 88, 9, 100, 11, 120, 13, 14, 150, 16, 17};
  for (KvType type : {KvType::f16, KvType::bf16, KvType::fp8, KvType::int8}) {
    auto options = [&](const std::string& placement) {
      LoadOptions o;
      o.kv_type = type;
      o.max_context_tokens = 128;
      o.max_sessions = 2;
      o.kv_block_tokens = 4;
      o.kv_prefix_cache = true;
      o.load_tokenizer = false;
      o.placement = placement;
      o.cpu_kernels = CpuKernels::reference;
      return o;
    };
    // The second session adopts the first one's full blocks (by id: the GPU reads them in VRAM).
    auto twice = [&](Engine& engine, int64_t& cached) {
      auto first = engine.new_session();
      first->prefill(prompt);
      auto second = engine.new_session();
      second->prefill(prompt);  // last row only: a prefill asking for all logits does not adopt
      cached = second->cached_prompt_tokens();
      const auto last = second->logits();
      return std::vector<float>(last.begin(), last.end());
    };
    const auto cpu = Engine::load(folder, options("*=cpu"));
    const auto gpu = Engine::load(folder, options("*=cuda:0"));
    int64_t cached_cpu = 0, cached_gpu = 0;
    const auto expected = twice(*cpu, cached_cpu);
    const auto got = twice(*gpu, cached_gpu);
    INFO(kv_type_name(type));
    CHECK(cached_gpu == cached_cpu);
    CHECK(cached_gpu > 0);
    CHECK(relative_error(got, expected) <= 1e-3);
    CHECK(argmax_mismatches(got, expected, cpu->config().vocab_size) == 0);
    // The KV layers live in VRAM only: no host planes for them, the same bytes on the GPU.
    auto bytes_of = [](Engine& engine, const std::string& what) {
      uint64_t bytes = 0;
      for (const auto& line : engine.memory_report().lines)
        if (line.what == what) bytes += line.bytes;
      return bytes;
    };
    CHECK(bytes_of(*gpu, "KV pool") == 0);
    CHECK(bytes_of(*gpu, "KV cache") == bytes_of(*cpu, "KV pool"));
  }
  LoadOptions o;
  o.max_context_tokens = 64;
  o.max_sessions = 1;
  o.load_tokenizer = false;
  o.placement = "*=cuda:0";
  o.kv_type = KvType::int4;
  try {
    (void)Engine::load(folder, o);
    FAIL("an int4 KV cache with attention on cuda:0 loaded");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
    CHECK(std::string(e.what()).find("--kv-type") != std::string::npos);
  }
  o.kv_type = KvType::f16;
  o.kv_policy = "sinks:4,32";
  try {
    (void)Engine::load(folder, o);
    FAIL("a retention policy with attention on cuda:0 loaded");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
    CHECK(std::string(e.what()).find("--kv-policy") != std::string::npos);
  }
}

// The VRAM pool holds one prompt: a second one evicts the first's cached blocks, which go to the
// host tier (pinned memory) or, with none, stay on the SSD tier; the first prompt again adopts
// them from there (copied back into VRAM) and its logits equal those of its cold run bit for bit
// (4-token passes both times: the same kernels over the same KV bytes). The SSD records are a CPU
// pool's too: an engine with attention on the CPU adopts them, its logits within 1e-3 of the GPU's.
TEST_CASE(
    "cuda whole model: a prefix evicted from VRAM to the host or disk tier and adopted back gives the cold "
    "run's logits bit for bit",
    "[cuda][model][kv]") {
  if (!have_gpu()) return;
  const std::string folder = test::data_dir() + "/tiny-qwen3moe";
  const std::filesystem::path disk_dir =
      std::filesystem::temp_directory_path() / ("tandem_test_cuda_kv_tiers_" + std::to_string(::getpid()));
  std::vector<int32_t> first, second;
  for (int32_t i = 0; i < 24; ++i) first.push_back(1 + (i * 37) % 250);
  for (int32_t i = 0; i < 31; ++i) second.push_back(3 + (i * 53) % 240);
  for (const bool through_disk : {false, true}) {
    INFO((through_disk ? "disk tier, no host tier" : "host tier"));
    LoadOptions o;
    o.kv_type = KvType::f16;
    o.max_context_tokens = 32;  // the pool: 8 blocks of 4 tokens, one prompt's worth
    o.max_sessions = 1;
    o.kv_block_tokens = 4;
    o.max_batch_tokens = 4;
    o.kv_prefix_cache = true;
    o.load_tokenizer = false;
    o.placement = "*=cuda:0";
    o.cpu_kernels = CpuKernels::reference;
    if (through_disk) {
      std::filesystem::remove_all(disk_dir);
      std::filesystem::create_directories(disk_dir);
      o.kv_disk_dir = disk_dir.string();
      o.kv_disk_bytes = uint64_t{1} << 30;
      o.kv_host_bytes = 0;
    }
    const auto engine = Engine::load(folder, o);
    const auto last_logits = [&](const std::vector<int32_t>& prompt, int64_t& cached) {
      auto session = engine->new_session();
      session->prefill(prompt);
      cached = session->cached_prompt_tokens();
      const auto logits = session->logits();
      return std::vector<float>(logits.begin(), logits.end());
    };
    int64_t cached = -1;
    const std::vector<float> cold = last_logits(first, cached);
    CHECK(cached == 0);
    (void)last_logits(second, cached);  // takes the whole pool: the first prompt's blocks leave VRAM
    CHECK(cached == 0);
    const std::vector<float> warm = last_logits(first, cached);
    CHECK(cached == 20);  // 5 whole blocks before the last token
    REQUIRE(warm.size() == cold.size());
    CHECK(std::memcmp(warm.data(), cold.data(), cold.size() * sizeof(float)) == 0);
    if (through_disk) {
      CHECK_FALSE(engine->kv_host_stats().has_value());
      REQUIRE(engine->kv_disk_stats().has_value());
      CHECK(engine->kv_disk_stats()->loaded == 5);
      // Read through the pinned staging chunks, whole files with O_DIRECT where the file system takes it.
      const std::string fs_type = KvDiskTier::file_system_type(disk_dir.string());
      INFO("file system " << fs_type);
      if (fs_type == "ext4" || fs_type == "xfs") CHECK(engine->kv_disk_stats()->read_direct == 5);
      uint64_t staging = 0;
      for (const auto& line : engine->memory_report().lines)
        if (line.what == "KV disk tier staging" && line.device == "cpu") staging += line.bytes;
      CHECK(staging > 0);
      CHECK(staging <= uint64_t{128} << 20);
      // The records are the ones a CPU pool writes: an engine with attention on the CPU adopts them.
      LoadOptions on_cpu = o;
      on_cpu.placement = "*=cpu";
      const auto cpu_engine = Engine::load(folder, on_cpu);
      CHECK(cpu_engine->kv_disk_stats()->found_at_start >= 6);
      auto session = cpu_engine->new_session();
      session->prefill(first);
      CHECK(session->cached_prompt_tokens() == 20);
      CHECK(cpu_engine->kv_disk_stats()->loaded == 5);
      CHECK(cpu_engine->kv_disk_stats()->rejected_foreign == 0);
      CHECK(relative_error(session->logits(), cold) <= 1e-3);
    } else {
      REQUIRE(engine->kv_host_stats().has_value());
      const KvHostStats host = *engine->kv_host_stats();
      CHECK(host.capacity_blocks == 8);  // by default, the VRAM pool's size
      CHECK(host.loaded == 5);
      CHECK(host.stored >= 6);
      CHECK_FALSE(engine->kv_disk_stats().has_value());
      uint64_t reported = 0;
      for (const auto& line : engine->memory_report().lines)
        if (line.what == "KV host tier" && line.device == "cpu") reported += line.bytes;
      CHECK(reported == host.capacity_bytes);
      const PrefixCacheCounts counts = engine->prefix_cache_counts();
      CHECK(counts.host_tier_blocks == host.blocks);
      CHECK(counts.host_tier_loaded_blocks == 5);
    }
  }
  std::filesystem::remove_all(disk_dir);
}

// Decode on cuda:0 is recorded once per shape and replayed (a CUDA graph): the logits of every step
// equal those of kernels launched one by one, bit for bit, across block-table widths (16-token
// blocks: the recorded width doubles at 16, 32 and 64 tokens of context).
TEST_CASE("cuda graphs: replayed decode steps equal launching the kernels one by one", "[cuda][model]") {
  if (!have_gpu()) return;
  for (const std::string& path : {test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf",
                                 test::data_dir() + "/tiny-deepseekv3/deepseekv3-q8_0.gguf"}) {
    LoadOptions o;
    o.kv_type = KvType::f16;
    o.max_context_tokens = 512;
    o.max_sessions = 2;
    o.kv_block_tokens = 16;
    o.max_batch_tokens = 64;
    o.load_tokenizer = false;
    o.placement = "*=cuda:0";
    const auto recorded = Engine::load(path, o);
    o.cuda_graphs = false;
    const auto launched = Engine::load(path, o);
    auto a = recorded->new_session(), b = launched->new_session();
    const std::vector<int32_t> prompt = {1, 22, 333, 44, 5, 66, 7, 88, 9, 100, 11};
    a->prefill(prompt);
    b->prefill(prompt);
    int64_t mismatched_steps = 0;
    for (int step = 0; step < 70; ++step) {
      const auto la = a->logits(), lb = b->logits();
      mismatched_steps += !std::equal(la.begin(), la.end(), lb.begin(), lb.end());
      const auto next = static_cast<int32_t>(std::max_element(lb.begin(), lb.end()) - lb.begin());
      a->decode(next);
      b->decode(next);
    }
    INFO(path);
    CHECK(mismatched_steps == 0);
    CHECK(recorded->replayed_passes() >= 60);  // all but the first two passes of each shape
    CHECK(launched->replayed_passes() == 0);
  }
}

TEST_CASE("cuda hybrid prefill: experts in host memory streamed to the GPU equal the CPU", "[cuda][model][stream]") {
  if (!have_gpu()) return;
  const std::string data = test::data_dir();
  // Safetensors (one tensor per expert) and GGUF (experts merged in one tensor); MLA with shared experts.
  const std::vector<std::string> models = {data + "/tiny-qwen3moe", data + "/tiny-qwen3moe/qwen3moe-q8_0.gguf",
                                           data + "/tiny-deepseekv3", data + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf"};
  for (const std::string& path : models) {
    if (!std::filesystem::exists(path)) {
      WARN("skipped: " << path << " is missing");
      continue;
    }
    const auto cpu = load(path, "*=cpu");
    // Prompts of 40 tokens: every MoE layer streams (from 8 tokens), in chunks of up to 64.
    const auto streamed = load(path, "experts=cpu,*=cuda:0", 0, 8);
    std::vector<int32_t> ids;
    for (int32_t i = 0; i < 40; ++i) ids.push_back(1 + (i * 37) % 200);
    const auto expected = prompt_logits(*cpu, ids);
    const auto got = prompt_logits(*streamed, ids);
    INFO(path);
    CHECK(streamed->streamed_expert_layers() > 0);
    CHECK(relative_error(got, expected) <= 1e-3);
    CHECK(argmax_mismatches(got, expected, cpu->config().vocab_size) == 0);
    // A second prompt reuses the slots (and the prefetched first layer).
    const auto again = prompt_logits(*streamed, ids);
    CHECK(relative_error(again, got) == 0);
  }
  // The default (automatic) streams passes of 256+ tokens when the experts' pinned copies are small
  // beside the machine's memory, as the tiny model's are.
  // The automatic pass size is then 8192 tokens (every pass copies the streamed experts), cut to the
  // context.
  LoadOptions o;
  o.kv_type = KvType::f32;
  o.max_context_tokens = 1024;
  o.load_tokenizer = false;
  o.cpu_kernels = CpuKernels::reference;
  o.cuda_prefill_bf16 = false;
  o.cuda_decode_q8 = false;
  o.placement = "experts=cpu,*=cuda:0";
  REQUIRE(o.stream_experts_min_tokens == LoadOptions::kStreamExpertsAutomatic);
  REQUIRE(o.max_batch_tokens == LoadOptions::kBatchTokensAutomatic);
  const std::string tiny = data + "/tiny-qwen3moe/qwen3moe-q8_0.gguf";
  const auto automatic = Engine::load(tiny, o);
  CHECK(automatic->options().max_batch_tokens == 1024);
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < 300; ++i) ids.push_back(1 + (i * 37) % 200);
  const auto short_prompt = std::vector<int32_t>(ids.begin(), ids.begin() + 200);
  (void)prompt_logits(*automatic, short_prompt);
  CHECK(automatic->streamed_expert_layers() == 0);  // below 256 tokens
  const auto got = prompt_logits(*automatic, ids);
  CHECK(automatic->streamed_expert_layers() > 0);
  CHECK(relative_error(got, prompt_logits(*load(tiny, "*=cpu"), ids)) <= 1e-3);
}

TEST_CASE("cuda hybrid: with expert deferral on, a pass that streams experts defers none; a short pass defers",
          "[cuda][model][stream][deferral]") {
  if (!have_gpu()) return;
  const std::string path = test::data_dir() + "/tiny-qwen3moe/qwen3moe-q8_0.gguf";
  const auto plain = load(path, "experts=cpu,*=cuda:0", 0, 8);
  const auto deferring = load(path, "experts=cpu,*=cuda:0", 1, 8);
  const auto cpu_deferring = load(path, "*=cpu", 1);
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < 40; ++i) ids.push_back(1 + (i * 37) % 200);
  // 40 tokens stream (from 8): every expert computed on the GPU in its own layer, as without deferral.
  const auto streamed = prompt_logits(*deferring, ids);
  CHECK(deferring->streamed_expert_layers() > 0);
  CHECK(relative_error(streamed, prompt_logits(*plain, ids)) == 0);
  // 4 tokens do not stream: the CPU computes the deferred experts one layer later, as the CPU alone does.
  const std::vector<int32_t> few(ids.begin(), ids.begin() + 4);
  const auto deferred = prompt_logits(*deferring, few);
  CHECK(relative_error(deferred, prompt_logits(*cpu_deferring, few)) <= 1e-3);
  CHECK(deferred != prompt_logits(*plain, few));
}

TEST_CASE("cuda hybrid: the GPU expert cache (half of each layer's experts) equals the CPU, before and after a "
          "refresh; greedy as with the cache off",
          "[cuda][model][expert-cache]") {
  if (!have_gpu()) return;
  for (const char* name : {"tiny-qwen3moe", "tiny-deepseekv3"}) {
    const std::string folder = test::data_dir() + "/" + name;
    const ModelFiles files = open_model_files(folder);
    const Weights weights = bind_weights(files);
    uint64_t per_expert = 0;
    int64_t moe_layers = 0;
    for (const LayerWeights& l : weights.layers) {
      if (!l.is_moe) continue;
      per_expert = l.experts.gate[0].weight.nbytes + l.experts.up[0].weight.nbytes + l.experts.down[0].weight.nbytes;
      ++moe_layers;
    }
    const int64_t half = files.config.num_experts / 2;
    auto hybrid = [&](const std::string& cache) {
      LoadOptions o;
      o.cuda_prefill_bf16 = false;
      o.cuda_decode_q8 = false;
      o.stream_experts_min_tokens = 0;
      o.kv_type = KvType::f32;
      o.max_context_tokens = 512;
      o.kv_block_tokens = 16;
      o.max_batch_tokens = 64;
      o.load_tokenizer = false;
      o.placement = "experts=cpu,*=cuda:0";
      o.placement_flags.expert_cache = cache;
      o.cpu_kernels = CpuKernels::reference;
      return Engine::load(folder, o);
    };
    const auto cached = hybrid(std::to_string(per_expert * static_cast<uint64_t>(moe_layers * half)));
    const auto off = hybrid("off");
    const auto cpu = load(folder, "*=cpu");
    INFO(name);
    REQUIRE(cached->expert_cache_stats().layers == moe_layers);
    CHECK(cached->expert_cache_stats().experts_per_layer == half);
    CHECK(off->expert_cache_stats().layers == 0);
    const auto all_prompts = prompts(folder);
    const int64_t vocab = files.config.vocab_size;
    for (int round = 0; round < 2; ++round) {  // the lowest numbers held, then the most routed
      for (size_t k = 0; k < all_prompts.size(); ++k) {
        INFO("round " << round << " prompt " << k);
        const auto expected = prompt_logits(*cpu, all_prompts[k]);
        const auto got = prompt_logits(*cached, all_prompts[k]);
        CHECK(relative_error(got, expected) <= 1e-3);
        CHECK(argmax_mismatches(got, expected, vocab) == 0);
      }
      CHECK(greedy(*cached, all_prompts[0], 24) == greedy(*off, all_prompts[0], 24));
      const ForwardPass::ExpertCacheStats stats = cached->expert_cache_stats();
      CHECK(stats.held_pairs > 0);
      CHECK(stats.held_pairs < stats.counted_pairs);
      if (round == 0) (void)cached->refresh_expert_cache();  // new_session refreshes too
    }
  }
}
