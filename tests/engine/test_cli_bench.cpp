// tandem bench experts / bench model through the CLI at tiny sizes: the JSON keys the issue names,
// values that hang together (ratio = achieved / stream, roofline = bandwidth / bytes per token,
// bytes per step = the experts routed), and sizes past the limits refused with clear errors.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>

#include "support/cli.hpp"
#include "support/fixtures.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/cuda_backend.hpp"
#include "tandem/backend/stream_bandwidth.hpp"

namespace {

using tandem::test::run_cli_captured;
using tandem::test::shell_quote;

nlohmann::json run_json(const std::string& args) {
  const auto r = run_cli_captured(args);
  INFO(args << "\nstderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  return nlohmann::json::parse(r.out);
}

// Bytes of one Qwen3-30B-A3B expert in Q4_K: gate and up 768 rows of 2048, down 2048 rows of 768.
constexpr double kQwen3ExpertBytes = 768.0 * (2048 / 256 * 144) * 2 + 2048.0 * (768 / 256 * 144);

}  // namespace

TEST_CASE("bench experts: JSON keys and consistent values", "[engine][bench][cli]") {
  const auto j = run_json("bench experts --preset qwen3-30b-a3b --batch 1 -t 1 --seconds 0.2 --stream-mib 64 --json");
  for (const char* key : {"achieved_gbps", "stream_read_gbps", "ratio", "tflops"}) {
    INFO(key);
    REQUIRE(j.contains(key));
    CHECK(j[key].get<double>() > 0);
  }
  CHECK(j["gate_type"] == "q4_k");
  CHECK(j["down_type"] == "q4_k");
  CHECK(j["threads"] == 1);
  CHECK(j["cpu_kernels"] == "fast");
  // The copies cycled through span at least the stream probe's buffer (64 MiB here; one 340 MB layer).
  CHECK(j["layer_copies"] == 1);
  // Batch 1, top 8: exactly eight distinct experts read per step.
  CHECK(j["expert_bytes_per_step"].get<double>() == kQwen3ExpertBytes * 8);
  const double achieved = j["achieved_gbps"], stream = j["stream_read_gbps"];
  CHECK(j["ratio"].get<double>() == Approx(achieved / stream));
  CHECK(stream > 0.5);  // any machine that runs these tests reads memory faster than this
  CHECK(achieved == Approx(kQwen3ExpertBytes * 8 / j["seconds_per_step"].get<double>() / 1e9).epsilon(1e-6));
  const double flops = 2.0 * 3 * 2048 * 768 * 1 * 8;
  CHECK(j["tflops"].get<double>() == Approx(flops / j["seconds_per_step"].get<double>() / 1e12).epsilon(1e-6));

  // 64 tokens of random top-8 routing hit between 8 and all 128 experts per step.
  const auto big = run_json("bench experts --preset qwen3-30b-a3b --batch 64 -t 2 --seconds 0.2 --stream-mib 64 --json");
  const double bytes = big["expert_bytes_per_step"];
  CHECK(bytes > kQwen3ExpertBytes * 8);
  CHECK(bytes <= kQwen3ExpertBytes * 128);
  CHECK(big["batch"] == 64);

  // The reference kernels read the same bytes per step (batch 1: eight experts).
  const auto ref = run_json("bench experts --preset qwen3-30b-a3b -t 1 --seconds 0.1 --stream-mib 64 --cpu-kernels reference --json");
  CHECK(ref["cpu_kernels"] == "reference");
  CHECK(ref["expert_bytes_per_step"].get<double>() == kQwen3ExpertBytes * 8);
}

TEST_CASE("bench experts and model refuse sizes past their limits", "[engine][bench][cli]") {
  auto r = run_cli_captured("bench experts --preset qwen3-30b-a3b --batch 0");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("--batch 0 is outside 1..16384"));
  r = run_cli_captured("bench experts --preset qwen3-30b-a3b --batch 100000");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("--batch 100000 is outside 1..16384"));
  r = run_cli_captured("bench experts --preset gpt-5 --batch 1");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("unknown preset 'gpt-5'"));
  r = run_cli_captured("bench experts --preset qwen3-30b-a3b --quant q2_k");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("unknown quant type 'q2_k'"));

  const std::string model = shell_quote(tandem::test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf");
  r = run_cli_captured("bench model -m " + model + " -p 1000000");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("-p 1000000 is outside 1..") && Catch::Contains("context"));
  r = run_cli_captured("bench model -m " + model + " -n 0");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("-n 0 is outside 1.."));
  r = run_cli_captured("bench model -m " + model + " -r 1000");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("-r 1000 is outside 1..100"));
  r = run_cli_captured("bench model -m " + model + " --placement 'atention=cpu'");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("unknown role group 'atention'"));
  if (!(tandem::cuda_device_count() > 0)) {  // a budget for a card that is not there
    r = run_cli_captured("bench model -m " + model + " --vram-budget 24G");
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("--vram-budget 24G: no GPU is visible"));
  }
  r = run_cli_captured("bench model -m " + model + " --vram-budget 24Q --vram-total 80G");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("24Q"));
  r = run_cli_captured("bench model -m " + model + " --ubatch -2");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("--ubatch must be within [1, 1048576]") && Catch::Contains("not -2"));
  r = run_cli_captured("bench model -m /nonexistent-tandem-model.gguf");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("/nonexistent-tandem-model.gguf"));
}

TEST_CASE("bench model: JSON keys and consistent values on the bundled model", "[engine][bench][cli]") {
  const std::string model = shell_quote(tandem::test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf");
  const auto j = run_json("bench model -m " + model + " -p 16 -n 4 -r 2 -t 2 --spread-tokens 64 --stream-mib 64 --json");
  for (const char* key : {"prefill_tok_s", "decode_tok_s", "decode_roofline_tok_s", "experts_hit_fraction"}) {
    INFO(key);
    REQUIRE(j.contains(key));
    CHECK(j[key].get<double>() > 0);
  }
  CHECK(j["repetitions"] == 2);
  CHECK(j["prefill_tok_s_sd"].get<double>() >= 0);
  const double bytes = j["decode_bytes_per_token"];
  CHECK(bytes > 0);
  CHECK(bytes < j["model_bytes"].get<double>());  // top-k experts and one embedding row, not the whole file
  CHECK(j["decode_roofline_tok_s"].get<double>() ==
        Approx(j["stream_read_gbps"].get<double>() * 1e9 / bytes).epsilon(1e-9));
  // tandem plan's prediction at the same bandwidth, and the fraction of it achieved.
  REQUIRE(j.contains("plan_decode_tok_s"));
  CHECK(j["plan_decode_tok_s"].get<double>() > 0);
  CHECK(j["plan_decode_fraction"].get<double>() ==
        Approx(j["decode_tok_s"].get<double>() / j["plan_decode_tok_s"].get<double>()).epsilon(1e-9));
  REQUIRE(j.contains("plan_prefill_tok_s"));
  CHECK(j["plan_prefill_tok_s"].get<double>() > 0);
  CHECK(j["plan_prefill_fraction"].get<double>() ==
        Approx(j["prefill_tok_s"].get<double>() / j["plan_prefill_tok_s"].get<double>()).epsilon(1e-9));
  // A trained router spreads 64 tokens over most experts of each layer.
  const double hit = j["experts_hit_fraction"];
  REQUIRE(j["experts_hit_per_layer"].size() == 4);  // the bundled model's four MoE layers
  double sum = 0;
  for (const auto& layer : j["experts_hit_per_layer"]) sum += layer.get<double>();
  CHECK(hit == Approx(sum / 4));
  CHECK(hit <= 1.0);
  CHECK(hit > 0.5 * j["experts_hit_uniform"].get<double>());
  CHECK(j["placement"] == "");  // the engine's default placement, as the engine resolved it:
  if (!(tandem::cuda_device_count() > 0)) CHECK(j["placement_resolved"] == "*=cpu");
  CHECK(j["vram_budget"] == "");
  CHECK(j["ubatch"] == 33);  // the default 512 tokens per pass, cut to the bench's context (33: its warm-up)
  CHECK(j["prefill_passes"] == 1);
  CHECK(j["kv_type"] == "f16");
}

TEST_CASE("bench model --kv-type: the timed engine's KV cache type; an unknown type is refused", "[engine][bench][cli]") {
  const std::string model = shell_quote(tandem::test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf");
  const auto j = run_json("bench model -m " + model + " -p 8 -n 2 -r 1 -t 1 --spread-tokens 0 --stream-mib 16 --kv-type int4 --json");
  CHECK(j["kv_type"] == "int4");
  CHECK(j["decode_tok_s"].get<double>() > 0);
  const auto bad = run_cli_captured("bench model -m " + model + " -p 8 -n 2 -r 1 --kv-type q3");
  CHECK(bad.exit_code != 0);
  CHECK(bad.err.find("--kv-type must be") != std::string::npos);
}

TEST_CASE("bench model --ubatch: the prompt runs in passes of N tokens, counted by the scheduler",
          "[engine][bench][cli]") {
  const std::string model = shell_quote(tandem::test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf");
  for (const auto& [ubatch, passes] : {std::pair{7, 6}, std::pair{20, 2}, std::pair{40, 1}, std::pair{0, 1}}) {
    INFO("--ubatch " << ubatch);
    const auto j = run_json("bench model -m " + model + " -p 40 -n 2 -r 1 -t 1 --spread-tokens 0 --stream-mib 16 --ubatch " +
                            std::to_string(ubatch) + " --json");
    CHECK(j["ubatch"] == (ubatch == 0 ? 40 : ubatch));  // the default 512, cut to the 40-token context
    CHECK(j["prefill_passes"] == passes);
    CHECK(j["prefill_tok_s"].get<double>() > 0);
  }
}

TEST_CASE("bench model -d: each test starts from N cached tokens, which are not timed", "[engine][bench][cli]") {
  const std::string model = shell_quote(tandem::test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf");
  const std::string flags = " -p 8 -n 2 -r 1 -t 1 --spread-tokens 0 --stream-mib 16 --ubatch 8";
  const auto j = run_json("bench model -m " + model + flags + " -d 20 --json");
  CHECK(j["n_depth"] == 20);
  CHECK(j["depth_passes"] == 3);    // the 20 cached tokens, in passes of 8, before each test
  CHECK(j["prefill_passes"] == 1);  // the 8 timed tokens only
  CHECK(j["prefill_tok_s"].get<double>() > 0);
  CHECK(j["decode_tok_s"].get<double>() > 0);
  CHECK(run_json("bench model -m " + model + flags + " --json")["depth_passes"] == 0);
  const auto table = run_cli_captured("bench model -m " + model + flags + " -d 20");
  CHECK(table.exit_code == 0);
  CHECK_THAT(table.out, Catch::Contains("| pp8 @ d20 |") && Catch::Contains("| tg2 @ d20 |"));
  const auto refused = run_cli_captured("bench model -m " + model + flags + " -d 100000000");
  CHECK(refused.exit_code == 1);
  CHECK_THAT(refused.err, Catch::Contains("-d 100000000 leaves no room for the tests"));
  const auto negative = run_cli_captured("bench model -m " + model + flags + " -d -3");
  CHECK(negative.exit_code == 1);
  CHECK_THAT(negative.err, Catch::Contains("-d -3 is negative"));
}


TEST_CASE("stream read probe: a plausible bandwidth, bad sizes refused", "[engine][bench]") {
  auto backend = tandem::make_cpu_backend(2);
  tandem::StreamReadOptions o;
  o.buffer_bytes = uint64_t{64} << 20;
  o.passes = 3;
  const double gbps = tandem::measure_stream_read_gbps(*backend, o);
  CHECK(gbps > 0.5);
  CHECK(gbps < 10000);
  o.buffer_bytes = (uint64_t{1} << 20) - 1;
  CHECK_THROWS_WITH(tandem::measure_stream_read_gbps(*backend, o), Catch::Contains("under 1 MiB"));
  o.buffer_bytes = uint64_t{1} << 20;
  o.passes = 0;
  CHECK_THROWS_WITH(tandem::measure_stream_read_gbps(*backend, o), Catch::Contains("passes outside 1..100"));
}
