// `tandem inspect --json` against what config.json, manifest.json and the files themselves imply.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "support/fixtures.hpp"
#include <catch2/catch.hpp>

namespace {

struct CliResult {
  int status = -1;
  std::string output;
};

CliResult run_cli(const std::string& args) {
  const std::string command = "'" + tandem::test::cli_path() + "' " + args + " 2>&1";
  CliResult r;
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe);
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) r.output.append(buffer, n);
  r.status = pclose(pipe);
  return r;
}

nlohmann::json inspect_json(const std::string& path) {
  const CliResult r = run_cli("inspect --json '" + path + "'");
  INFO(r.output);
  REQUIRE(r.status == 0);
  return nlohmann::json::parse(r.output);
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// Bytes of tensor data in a safetensors file: everything after the 8-byte length and the header.
uint64_t safetensors_data_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  uint64_t header = 0;
  in.read(reinterpret_cast<char*>(&header), 8);
  return std::filesystem::file_size(path) - 8 - header;
}

int64_t get_or(const nlohmann::json& j, const char* key, int64_t fallback) {
  return j.contains(key) && !j[key].is_null() ? j[key].get<int64_t>() : fallback;
}

}  // namespace

TEST_CASE("inspect reports what config.json and manifest.json imply", "[model][cli][inspect]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  for (const char* size : {"tiny", "small"}) {
    const auto manifest = read_json(fx + "/" + size + "/manifest.json");
    for (const auto& [name, entry] : manifest["models"].items()) {
      const std::string dir = fx + "/" + size + "/" + name;
      INFO(dir);
      const auto cfg = read_json(dir + "/config.json");
      const bool deepseek = cfg["model_type"].get<std::string>().rfind("deepseek", 0) == 0;
      const int64_t layers = cfg["num_hidden_layers"].get<int64_t>();
      const int64_t dense = deepseek ? cfg["first_k_dense_replace"].get<int64_t>() : 0;
      const int64_t experts = get_or(cfg, "num_experts", get_or(cfg, "n_routed_experts", get_or(cfg, "num_local_experts", 0)));
      const int64_t hidden = cfg["hidden_size"].get<int64_t>();
      const int64_t expert_width = get_or(cfg, "moe_intermediate_size", cfg["intermediate_size"].get<int64_t>());
      const int64_t heads = cfg["num_attention_heads"].get<int64_t>();
      const int64_t kv_per_layer =
          deepseek ? cfg["kv_lora_rank"].get<int64_t>() + cfg["qk_rope_head_dim"].get<int64_t>()
                   : 2 * cfg["num_key_value_heads"].get<int64_t>() * get_or(cfg, "head_dim", hidden / heads);

      std::vector<std::string> paths = {dir};
      for (const auto& file : std::filesystem::directory_iterator(dir))
        if (file.path().extension() == ".gguf") paths.push_back(file.path().string());
      for (const auto& path : paths) {
        INFO(path);
        const auto j = inspect_json(path);
        CHECK(j["architecture"] == cfg["model_type"]);
        CHECK(j["parameters"].get<int64_t>() == entry["params"].get<int64_t>());
        CHECK(j["layers"]["total"].get<int64_t>() == layers);
        CHECK(j["layers"]["dense"].get<int64_t>() == dense);
        CHECK(j["layers"]["moe"].get<int64_t>() == layers - dense);
        CHECK(j["experts"]["routed"].get<int64_t>() == experts);
        CHECK(j["experts"]["used"] == cfg["num_experts_per_tok"]);
        CHECK(j["hidden_size"].get<int64_t>() == hidden);
        CHECK(j["attention"]["kind"] == (deepseek ? "mla" : "gqa"));
        CHECK(j["context_length"] == cfg["max_position_embeddings"]);
        CHECK(j["kv_cache_bytes_per_token"]["f16"].get<int64_t>() == 2 * layers * kv_per_layer);
        CHECK(j["kv_cache_bytes_per_token"]["f32"].get<int64_t>() == 4 * layers * kv_per_layer);
        const int64_t expert_values = (layers - dense) * experts * 3 * hidden * expert_width;
        CHECK(j["routed_expert_parameters"].get<int64_t>() == expert_values);
        uint64_t by_type = 0;
        for (const auto& [type, bytes] : j["bytes_by_type"].items()) by_type += bytes.get<uint64_t>();
        CHECK(by_type == j["total_bytes"].get<uint64_t>());
        CHECK(j["routed_expert_bytes"].get<uint64_t>() + j["other_bytes"].get<uint64_t>() == by_type);
        if (path == dir) {  // F32 safetensors: 4 bytes a value, and every tensor in the file is used
          CHECK(j["routed_expert_bytes"].get<int64_t>() == expert_values * 4);
          CHECK(j["total_bytes"].get<uint64_t>() == safetensors_data_bytes(dir + "/model.safetensors"));
        } else if (path.ends_with("q8_0.gguf")) {  // 34-byte blocks of 32 values
          CHECK(j["routed_expert_bytes"].get<int64_t>() == expert_values / 32 * 34);
        } else if (path.ends_with("f32.gguf")) {
          CHECK(j["routed_expert_bytes"].get<int64_t>() == expert_values * 4);
        } else if (path.ends_with("bf16.gguf")) {
          CHECK(j["routed_expert_bytes"].get<int64_t>() == expert_values * 2);
        }
      }
    }
  }
}

TEST_CASE("inspect prints a table, and fails cleanly on bad paths", "[model][cli][inspect]") {
  const std::string dir = tandem::test::data_dir() + "/tiny-deepseekv3";
  const CliResult table = run_cli("inspect '" + dir + "'");
  INFO(table.output);
  CHECK(table.status == 0);
  CHECK(table.output.find("deepseek_v3") != std::string::npos);
  CHECK(table.output.find("routed experts (host DRAM)") != std::string::npos);

  const CliResult missing = run_cli("inspect /nonexistent/model");
  CHECK(missing.status != 0);
  CHECK(missing.output.find("/nonexistent/model") != std::string::npos);

  const CliResult not_a_model = run_cli("inspect '" + dir + "/tokenizer.json'");
  CHECK(not_a_model.status != 0);
  CHECK(not_a_model.output.find("error") != std::string::npos);
}
