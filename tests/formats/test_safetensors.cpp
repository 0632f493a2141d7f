// safetensors reader: real files open with the shapes their config implies; every kind of bad
// header is refused with an error naming the problem.
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "support/fixtures.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/safetensors.hpp"

using namespace tandem;
namespace fs = std::filesystem;

namespace {

std::vector<uint8_t> make_safetensors(const std::string& header, size_t data_bytes, uint64_t claimed_len = UINT64_MAX) {
  std::vector<uint8_t> out(8 + header.size() + data_bytes, 0);
  const uint64_t len = claimed_len == UINT64_MAX ? header.size() : claimed_len;
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<uint8_t>(len >> (8 * i));
  std::memcpy(out.data() + 8, header.data(), header.size());
  for (size_t i = 0; i < data_bytes; ++i) out[8 + header.size() + i] = static_cast<uint8_t>(i);
  return out;
}

std::string error_of(const std::vector<uint8_t>& bytes) {
  try {
    SafetensorsModel::from_memory(bytes.data(), bytes.size(), "mem.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

void write_file(const fs::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

float f32_at(const TensorView& v, int64_t i) {
  float x;
  std::memcpy(&x, static_cast<const uint8_t*>(v.data) + 4 * i, 4);
  return x;
}

}  // namespace

TEST_CASE("safetensors: tiny qwen3moe opens with the config's shapes") {
  const std::string dir = test::data_dir() + "/tiny-qwen3moe";
  const auto model = SafetensorsModel::open(dir);
  const auto cfg = nlohmann::json::parse(std::ifstream(dir + "/config.json"));
  const int64_t hidden = cfg["hidden_size"], vocab = cfg["vocab_size"], layers = cfg["num_hidden_layers"];
  const int64_t experts = cfg["num_experts"];
  const auto& emb = model.tensors().require("model.embed_tokens.weight");
  CHECK(emb.view.dtype == DType::f32);
  CHECK(emb.view.shape == Shape{vocab, hidden});
  CHECK(emb.view.nbytes == static_cast<uint64_t>(vocab * hidden * 4));
  CHECK(model.tensors().find("model.layers." + std::to_string(layers - 1) + ".mlp.experts." +
                             std::to_string(experts - 1) + ".down_proj.weight") != nullptr);
  CHECK(model.tensors().find("model.layers." + std::to_string(layers) + ".mlp.gate.weight") == nullptr);
  // A folder, the file itself and from_memory agree.
  const auto file = SafetensorsModel::open(dir + "/model.safetensors");
  CHECK(file.tensors().size() == model.tensors().size());
}

TEST_CASE("safetensors: hand-built file round-trips dtypes, offsets and metadata") {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},"c":{"dtype":"I64","shape":[],"data_offsets":[24,32]},)"
      R"("d":{"dtype":"BOOL","shape":[0,5],"data_offsets":[32,32]},"e":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[32,36]}})";
  const auto bytes = make_safetensors(header, 36);
  const auto m = SafetensorsModel::from_memory(bytes.data(), bytes.size(), "mem");
  REQUIRE(m.tensors().size() == 5);
  CHECK(m.metadata().at("format") == "pt");
  const auto& b = m.tensors().require("b").view;
  CHECK(b.dtype == DType::bf16);
  CHECK(static_cast<const uint8_t*>(b.data) - bytes.data() == static_cast<ptrdiff_t>(8 + header.size() + 16));
  CHECK(m.tensors().require("c").view.shape.rank == 0);
  CHECK(m.tensors().require("d").view.nbytes == 0);
  CHECK(m.tensors().require("e").view.dtype == DType::f8_e4m3);
}

TEST_CASE("safetensors: bad headers are refused with a clear error") {
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  CHECK_THAT(error_of({1, 2, 3}), Catch::Contains("too short"));
  CHECK_THAT(error_of(make_safetensors(ok, 8, 1u << 30)), Catch::Contains("exceeds the file size"));
  CHECK_THAT(error_of(make_safetensors(ok, 8, ok.size() + 8)), Catch::Contains("not valid JSON"));
  CHECK_THAT(error_of(make_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8})", 8)),
             Catch::Contains("not valid JSON"));
  CHECK_THAT(error_of(make_safetensors("[1,2]", 0)), Catch::Contains("not an object"));
  CHECK_THAT(error_of(make_safetensors(ok, 4)), Catch::Contains("exceed the data section"));
  CHECK_THAT(error_of(make_safetensors(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)),
             Catch::Contains("needs 12"));
  CHECK_THAT(error_of(make_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8)),
             Catch::Contains("reversed"));
  CHECK_THAT(error_of(make_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12)),
             Catch::Contains("overlap"));
  CHECK_THAT(error_of(make_safetensors(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8)),
             Catch::Contains("overflows"));
  CHECK_THAT(error_of(make_safetensors(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8)),
             Catch::Contains("non-negative"));
  CHECK_THAT(error_of(make_safetensors(R"({"a":{"dtype":"C64","shape":[2],"data_offsets":[0,8]}})", 8)),
             Catch::Contains("unsupported dtype 'C64'"));
  CHECK_THAT(error_of(make_safetensors(R"({"a":{"dtype":"F32","shape":[2]}})", 8)), Catch::Contains("data_offsets"));
  CHECK_THAT(error_of(make_safetensors(R"({"a":{"dtype":"F32","shape":[1,1,1,1,2],"data_offsets":[0,8]}})", 8)),
             Catch::Contains("rank 5"));
  // Truncating a valid file anywhere gives an error, never a crash.
  const auto good = make_safetensors(ok, 8);
  for (size_t n = 0; n < good.size(); ++n) {
    const std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<ptrdiff_t>(n));
    CHECK_THROWS_AS(SafetensorsModel::from_memory(cut.data(), cut.size(), "cut"), Error);
  }
}

TEST_CASE("safetensors: sharded sets via the index, and missing shards or tensors") {
  const fs::path dir = fs::temp_directory_path() / ("tandem-st-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  write_file(dir / "s1.safetensors", make_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8));
  write_file(dir / "s2.safetensors", make_safetensors(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4));
  auto write_index = [&](const std::string& weight_map) {
    std::ofstream(dir / "model.safetensors.index.json") << R"({"metadata":{},"weight_map":)" << weight_map << "}";
  };
  write_index(R"({"a":"s1.safetensors","b":"s2.safetensors"})");
  const auto m = SafetensorsModel::open(dir.string());
  CHECK(m.files().size() == 2);
  CHECK(m.tensors().require("b").file == (dir / "s2.safetensors").string());
  CHECK(f32_at(m.tensors().require("a").view, 1) == f32_at(SafetensorsModel::open((dir / "s1.safetensors").string()).tensors().require("a").view, 1));

  auto error_of_open = [&]() -> std::string {
    try {
      SafetensorsModel::open((dir / "model.safetensors.index.json").string());
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  write_index(R"({"a":"s1.safetensors","b":"s3.safetensors"})");
  CHECK_THAT(error_of_open(), Catch::Contains("shard 's3.safetensors'") && Catch::Contains("missing"));
  write_index(R"({"a":"s1.safetensors","c":"s2.safetensors"})");
  CHECK_THAT(error_of_open(), Catch::Contains("tensor 'c'") && Catch::Contains("missing from it"));
  write_index(R"({"a":"../s1.safetensors"})");
  CHECK_THAT(error_of_open(), Catch::Contains("not a plain file name"));
  write_index(R"([)");
  CHECK_THAT(error_of_open(), Catch::Contains("not valid JSON"));
  fs::remove_all(dir);
}

TEST_CASE("safetensors: every fixture model opens") {
  TANDEM_REQUIRE_FIXTURES(fx);
  int opened = 0;
  for (const auto& size : {"tiny", "small"}) {
    for (const auto& e : fs::directory_iterator(fs::path(fx) / size)) {
      if (!fs::exists(e.path() / "model.safetensors")) continue;
      const auto m = SafetensorsModel::open(e.path().string());
      CHECK(m.tensors().size() > 10);
      const auto g = SafetensorsModel::open((e.path() / "golden.safetensors").string());
      CHECK(g.tensors().find("prompt0.logits") != nullptr);
      ++opened;
    }
  }
  CHECK(opened >= 8);
}
