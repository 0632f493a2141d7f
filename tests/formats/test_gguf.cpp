// GGUF reader: the converter's files open with the right metadata and tensor table, split sets
// merge, and corrupt files are refused with errors naming the problem.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "formats/gguf_test_writer.hpp"
#include "formats/unreadable_file.hpp"
#include "support/fixtures.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/gguf.hpp"
#include "tandem/formats/safetensors.hpp"

using namespace tandem;
namespace fs = std::filesystem;
using test::GgufTestWriter;

namespace {

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

GgufTestWriter sample_writer() {
  GgufTestWriter w;
  w.kv_string("general.architecture", "qwen3moe");
  w.kv_u32("qwen3moe.block_count", 2);
  w.kv_f32("qwen3moe.rope.freq_base", 1e6f);
  w.kv_bool("flag", true);
  w.kv_string_array("tokenizer.ggml.tokens", {"a", "bc", ""});
  w.kv_nested_i32("nested", {{1, 2}, {}, {-3}});
  w.tensor("w", {3, 2}, 0, f32_bytes({1, 2, 3, 4, 5, 6}));
  w.tensor("q", {1, 32}, 8, std::vector<uint8_t>(34, 7));
  return w;
}

std::string error_of(const std::vector<uint8_t>& bytes) {
  try {
    GgufFile::from_memory(bytes.data(), bytes.size(), "mem.gguf");
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

template <typename T>
void poke(std::vector<uint8_t>& b, size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof(T));
}

bool bitwise_equal(const TensorView& a, const TensorView& b) {
  return a.nbytes == b.nbytes && std::memcmp(a.data, b.data, a.nbytes) == 0;
}

}  // namespace

TEST_CASE("gguf: a hand-built file gives back its metadata and tensors") {
  const auto bytes = sample_writer().bytes();
  const auto g = GgufFile::from_memory(bytes.data(), bytes.size(), "mem.gguf");
  CHECK(g.version() == 3);
  CHECK(g.architecture() == "qwen3moe");
  CHECK(g.get_int("qwen3moe.block_count") == 2);
  CHECK(g.get_float("qwen3moe.rope.freq_base") == 1e6);
  CHECK(g.require("flag").as_bool());
  const auto& toks = g.require("tokenizer.ggml.tokens").as_array();
  REQUIRE(toks.size() == 3);
  CHECK(toks.values.empty());  // strings are stored compactly
  CHECK(toks.string_at(1) == "bc");
  CHECK(toks.string_at(2).empty());
  CHECK_THROWS_AS(toks.string_at(3), tandem::Error);
  const auto& nested = g.require("nested").as_array();
  REQUIRE(nested.values.size() == 3);
  CHECK(nested.values[0].as_array().values[1].as_int() == 2);
  CHECK(nested.values[2].as_array().values[0].as_int() == -3);
  CHECK_FALSE(g.get_int("missing").has_value());
  CHECK_THROWS_WITH(g.get_int("general.architecture"), Catch::Contains("general.architecture"));
  CHECK_THROWS_WITH(g.require("nope"), Catch::Contains("'nope'"));

  const auto& w = g.tensors().require("w").view;
  CHECK(w.shape == Shape{3, 2});
  float x;
  std::memcpy(&x, w.row_ptr(2), 4);
  CHECK(x == 5.0f);
  CHECK(reinterpret_cast<uintptr_t>(w.data) % 32 == reinterpret_cast<uintptr_t>(bytes.data()) % 32);
  const auto& q = g.tensors().require("q").view;
  CHECK(q.dtype == DType::q8_0);
  CHECK(q.nbytes == 34);
}

TEST_CASE("gguf: version 2 and a 64-byte alignment") {
  GgufTestWriter w(2, 64);
  w.kv_string("general.architecture", "llama");
  w.tensor("a", {3}, 0, f32_bytes({1, 2, 3}));
  w.tensor("b", {2}, 30, {0x80, 0x3f, 0x00, 0xc0});  // bf16 1.0, -2.0
  const auto bytes = w.bytes();
  const auto g = GgufFile::from_memory(bytes.data(), bytes.size(), "v2.gguf");
  CHECK(g.version() == 2);
  CHECK(g.alignment() == 64);
  const auto& b = g.tensors().require("b").view;
  CHECK(b.dtype == DType::bf16);
  CHECK(static_cast<const uint8_t*>(b.data) - bytes.data() == static_cast<ptrdiff_t>(bytes.size() - 4));
  CHECK((static_cast<const uint8_t*>(b.data) - bytes.data()) % 64 == 0);
  // Under an alignment of 128, tensor b's offset of 64 is misaligned.
  auto misaligned = bytes;
  const std::string key = "general.alignment";
  const auto at = std::search(misaligned.begin(), misaligned.end(), key.begin(), key.end()) - misaligned.begin();
  poke<uint32_t>(misaligned, static_cast<size_t>(at) + key.size() + 4, 128);
  CHECK_THAT(error_of(misaligned), Catch::Contains("past the end") || Catch::Contains("not a multiple of the alignment"));
}

TEST_CASE("gguf: corrupt files are refused with a clear error") {
  const auto good = sample_writer().bytes();
  auto patched = [&](auto f) {
    auto b = good;
    f(b);
    return error_of(b);
  };
  CHECK_THAT(patched([](auto& b) { b[0] = 'X'; }), Catch::Contains("bad magic"));
  CHECK_THAT(patched([](auto& b) { poke<uint32_t>(b, 4, 7); }), Catch::Contains("bad version 7"));
  CHECK_THAT(patched([](auto& b) { poke<uint32_t>(b, 4, 1); }), Catch::Contains("version 1"));
  CHECK_THAT(patched([](auto& b) { poke<uint64_t>(b, 8, uint64_t{1} << 60); }), Catch::Contains("tensor count"));
  CHECK_THAT(patched([](auto& b) { poke<uint64_t>(b, 16, uint64_t{1} << 60); }), Catch::Contains("metadata count"));
  CHECK_THAT(patched([](auto& b) { poke<uint64_t>(b, 24, uint64_t{1} << 62); }), Catch::Contains("string length"));
  // The first key is "general.architecture" (20 bytes): its type sits at 24 + 8 + 20.
  CHECK_THAT(patched([](auto& b) { poke<uint32_t>(b, 52, 99); }), Catch::Contains("unknown value type 99"));
  CHECK_THAT(patched([](auto& b) { poke<uint32_t>(b, 52, 4); poke<uint32_t>(b, 56, 0); }),
             Catch::Contains("truncated") || Catch::Contains("unknown value type") || Catch::Contains("string length") ||
                 Catch::Contains("count"));

  auto built = [](auto f) {
    GgufTestWriter w;
    f(w);
    return error_of(w.bytes());
  };
  CHECK_THAT(built([](auto& w) { w.kv_u32("k", 1); w.kv_u32("k", 2); }), Catch::Contains("duplicate metadata key 'k'"));
  CHECK_THAT(built([](auto& w) { w.tensor("t", {1}, 0, f32_bytes({1})); w.tensor("t", {1}, 0, f32_bytes({1})); }),
             Catch::Contains("duplicate tensor name 't'"));
  CHECK_THAT(built([](auto& w) { w.tensor("t", {1, 1, 1, 1, 1}, 0, f32_bytes({1})); }), Catch::Contains("5 dims"));
  CHECK_THAT(built([](auto& w) { w.tensor("t", {0, 4}, 0, {}); }), Catch::Contains("tensor 't': dim 1 is 0"));
  CHECK_THAT(built([](auto& w) { w.tensor("t", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, {}); }),
             Catch::Contains("tensor 't': shape") && Catch::Contains("overflows"));
  CHECK_THAT(built([](auto& w) { w.tensor("t", {1, 33}, 8, std::vector<uint8_t>(64)); }),
             Catch::Contains("not a whole number of q8_0 blocks"));
  CHECK_THAT(built([](auto& w) { w.tensor("t", {4}, 0, f32_bytes({1, 2})); }), Catch::Contains("past the end"));
  CHECK_THAT(built([](auto& w) { w.tensor("t", {256}, 16, std::vector<uint8_t>(66)); }),
             Catch::Contains("tensor 't' has GGUF tensor type id 16"));
  CHECK_THAT(built([](auto& w) { w.kv_u32("general.alignment", 24); }), Catch::Contains("alignment 24"));
  CHECK_THAT(built([](auto& w) { w.tensor("a", {16}, 0, std::vector<uint8_t>(64)); w.tensor_info_only("b", {1}, 0, 4); }),
             Catch::Contains("tensor 'b': data offset 4 is not a multiple of the alignment 32"));
  CHECK_THAT(built([](auto& w) { w.tensor("a", {16}, 0, std::vector<uint8_t>(64)); w.tensor_info_only("b", {1}, 0, uint64_t{1} << 63); }),
             Catch::Contains("tensor 'b'") && Catch::Contains("past the end"));
  CHECK_THAT(built([](auto& w) { w.tensor_info_only("b", {1}, 0, UINT64_MAX - 31); }),
             Catch::Contains("tensor 'b'") && Catch::Contains("past the end"));

  // Truncated anywhere: an error, never a crash or a read past the end (ASan watches).
  for (size_t n = 0; n < good.size(); ++n) {
    const std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<ptrdiff_t>(n));
    CHECK_THROWS_AS(GgufFile::from_memory(cut.data(), cut.size(), "cut.gguf"), Error);
  }
}

TEST_CASE("gguf: tensors whose data overlap are refused, naming both") {
  auto built = [](auto f) {
    GgufTestWriter w;
    f(w);
    return error_of(w.bytes());
  };
  // "b" starts inside "a".
  CHECK_THAT(built([](auto& w) { w.tensor("a", {16}, 0, std::vector<uint8_t>(64)); w.tensor_info_only("b", {8}, 0, 32); }),
             Catch::Contains("'a' [offset 0, 64 bytes]") && Catch::Contains("'b' [offset 32, 32 bytes]") &&
                 Catch::Contains("overlap"));
  // The same offset twice.
  CHECK_THAT(built([](auto& w) { w.tensor("a", {16}, 0, std::vector<uint8_t>(64)); w.tensor_info_only("b", {1}, 0, 0); }),
             Catch::Contains("'a'") && Catch::Contains("'b'") && Catch::Contains("overlap"));
  // "inner" is listed after a later tensor and lies inside the first.
  CHECK_THAT(built([](auto& w) {
               w.tensor("big", {64}, 0, std::vector<uint8_t>(256));
               w.tensor("after", {8}, 0, std::vector<uint8_t>(32));
               w.tensor_info_only("inner", {8}, 0, 64);
             }),
             Catch::Contains("'big'") && Catch::Contains("'inner'") && Catch::Contains("overlap"));
  // Listed out of offset order, touching but not overlapping: fine.
  GgufTestWriter w;
  w.tensor_info_only("c", {8}, 0, 64);
  w.tensor("a", {8}, 0, std::vector<uint8_t>(32));
  w.tensor("b", {8}, 0, std::vector<uint8_t>(32));
  auto bytes = w.bytes();
  bytes.resize(bytes.size() + 32);
  CHECK(error_of(bytes) == "no error");
  try {
    GgufTestWriter o;
    o.tensor("a", {16}, 0, std::vector<uint8_t>(64));
    o.tensor_info_only("b", {8}, 0, 32);
    const auto ob = o.bytes();
    GgufFile::from_memory(ob.data(), ob.size(), "mem.gguf");
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::corrupt_file);
    CHECK_THAT(e.what(), Catch::StartsWith("mem.gguf: "));
  }
}

TEST_CASE("gguf: arrays nested deeper than 8 are refused") {
  auto nested = [](int depth) {
    GgufTestWriter w;
    w.kv_nested_empty("deep", depth);
    return error_of(w.bytes());
  };
  CHECK(nested(8) == "no error");
  CHECK_THAT(nested(9), Catch::Contains("metadata key 'deep': arrays nested deeper than 8"));
  CHECK_THAT(nested(100000), Catch::Contains("arrays nested deeper than 8"));
}

TEST_CASE("gguf: metadata that would take far more memory than its bytes is refused") {
  // Each one-byte element becomes a 48-byte value: 4 MB of u8 would take 200 MB.
  GgufTestWriter one;
  one.kv_u8_array("bytes", uint64_t{1} << 22);
  const auto one_bytes = one.bytes();
  try {
    GgufFile::from_memory(one_bytes.data(), one_bytes.size(), "mem.gguf");
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::corrupt_file);
    CHECK_THAT(e.what(), Catch::Contains("mem.gguf: metadata key 'bytes'") &&
                             Catch::Contains("metadata would take more than"));
  }
  // Arrays each below the element limit add up.
  GgufTestWriter many;
  for (int i = 0; i < 8; ++i) many.kv_u8_array("bytes" + std::to_string(i), uint64_t{1} << 20);
  CHECK_THAT(error_of(many.bytes()), Catch::Contains("metadata would take more than"));

  // A large real vocabulary's worth of metadata is fine: 300k tokens, scores, types and merges.
  GgufTestWriter vocab;
  const size_t n = 300000;
  std::vector<std::string> tokens(n), merges(n);
  for (size_t i = 0; i < n; ++i) {
    tokens[i] = "tok" + std::to_string(i);
    merges[i] = "t" + std::to_string(i) + " ok" + std::to_string(i);
  }
  vocab.kv_string_array("tokenizer.ggml.tokens", tokens);
  vocab.kv_i32_array("tokenizer.ggml.scores", n);
  vocab.kv_i32_array("tokenizer.ggml.token_type", n, 1);
  vocab.kv_string_array("tokenizer.ggml.merges", merges);
  CHECK(error_of(vocab.bytes()) == "no error");
  // 2M empty strings (16 MB of file) parse, stored compactly: 8 bytes of offset each, no more.
  GgufTestWriter empties;
  empties.kv_string_array("empty", std::vector<std::string>(size_t{1} << 21));
  const auto empty_bytes = empties.bytes();
  CHECK(error_of(empty_bytes) == "no error");
  const auto parsed = GgufFile::from_memory(empty_bytes.data(), empty_bytes.size(), "empties.gguf");
  const GgufArray& array = parsed.require("empty").as_array();
  CHECK(array.size() == (size_t{1} << 21));
  CHECK(array.string_bytes.empty());
  CHECK(array.string_ends.capacity() * sizeof(uint64_t) + array.values.capacity() * sizeof(GgufValue) <=
        empty_bytes.size());
}

TEST_CASE("gguf: has_gguf_magic tells GGUF files apart and reports why a file cannot be read") {
  const fs::path dir = fs::temp_directory_path() / ("tandem-magic-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  CHECK(has_gguf_magic(test::data_dir() + "/tiny-qwen3moe/qwen3moe-q8_0.gguf"));
  CHECK_FALSE(has_gguf_magic(test::data_dir() + "/tiny-qwen3moe/config.json"));
  CHECK_FALSE(has_gguf_magic(dir.string()));
  std::ofstream(dir / "short.gguf") << "GG";
  CHECK_FALSE(has_gguf_magic((dir / "short.gguf").string()));
  try {
    has_gguf_magic((dir / "missing.gguf").string());
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::io);
    CHECK_THAT(e.what(), Catch::Contains("missing.gguf: cannot open: No such file or directory"));
  }
  if (const auto unreadable = test::unreadable_file(dir)) {
    try {
      has_gguf_magic(*unreadable);
      FAIL("no error");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::io);
      CHECK_THAT(e.what(), Catch::Contains(*unreadable + ": cannot open: Permission denied"));
    }
  } else {
    WARN("skipped the unreadable-file case: no file here that this user cannot read");
  }
  fs::remove_all(dir);
}

TEST_CASE("gguf: truncating the bundled tiny model anywhere gives an error") {
  const MappedFile map(test::data_dir() + "/tiny-qwen3moe/qwen3moe-q8_0.gguf");
  const auto whole = GgufFile::from_memory(map.data(), map.size(), "whole");
  CHECK(whole.tensors().size() > 10);
  int failures = 0;
  for (uint64_t n = 0; n < map.size(); n += 1 + n / 8 + (n > 20000 ? 997 : 0)) {
    try {
      GgufFile::from_memory(map.data(), n, "cut.gguf");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::corrupt_file);
      ++failures;
      continue;
    }
    FAIL("no error at size " << n);
  }
  CHECK(failures > 30);
}

TEST_CASE("gguf: a split set opens from any part and merges the tensors") {
  const fs::path dir = fs::temp_directory_path() / ("tandem-split-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  GgufTestWriter p1, p2;
  p1.kv_string("general.architecture", "qwen3moe");
  p1.kv_u16("split.no", 0);
  p1.kv_u16("split.count", 2);
  p1.kv_i32("split.tensors.count", 3);
  p1.tensor("a", {2}, 0, f32_bytes({1, 2}));
  p1.tensor("b", {1}, 0, f32_bytes({3}));
  p2.kv_u16("split.no", 1);
  p2.kv_u16("split.count", 2);
  p2.kv_i32("split.tensors.count", 3);
  p2.tensor("c", {2, 2}, 0, f32_bytes({4, 5, 6, 7}));
  p1.write(dir / "m-00001-of-00002.gguf");
  p2.write(dir / "m-00002-of-00002.gguf");

  for (const char* part : {"m-00001-of-00002.gguf", "m-00002-of-00002.gguf"}) {
    const auto g = GgufFile::open((dir / part).string());
    CHECK(g.files().size() == 2);
    CHECK(g.architecture() == "qwen3moe");
    REQUIRE(g.tensors().size() == 3);
    const auto& c = g.tensors().require("c");
    CHECK(c.file == (dir / "m-00002-of-00002.gguf").string());
    float x;
    std::memcpy(&x, c.view.row_ptr(1), 4);
    CHECK(x == 6.0f);
  }

  auto error_of_open = [&](const fs::path& p) -> std::string {
    try {
      GgufFile::open(p.string());
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  GgufTestWriter bad = p2;
  bad.kv_u32("extra", 1);
  bad.tensor("d", {1}, 0, f32_bytes({8}));
  bad.write(dir / "m-00002-of-00002.gguf");
  CHECK_THAT(error_of_open(dir / "m-00001-of-00002.gguf"), Catch::Contains("split.tensors.count is 3") && Catch::Contains("hold 4"));
  fs::remove(dir / "m-00002-of-00002.gguf");
  CHECK_THAT(error_of_open(dir / "m-00001-of-00002.gguf"), Catch::Contains("split part 2 of 2 is missing"));
  p1.write(dir / "m-00002-of-00002.gguf");  // part 1 again, under part 2's name
  CHECK_THAT(error_of_open(dir / "m-00001-of-00002.gguf"), Catch::Contains("split.no is 0, expected 1"));
  p1.write(dir / "lonely.gguf");
  CHECK_THAT(error_of_open(dir / "lonely.gguf"), Catch::Contains("split.count is 2"));
  fs::remove_all(dir);
}

TEST_CASE("gguf: every fixture GGUF opens, and f32 GGUFs equal the safetensors bit for bit") {
  TANDEM_REQUIRE_FIXTURES(fx);
  int opened = 0, compared = 0;
  for (const auto& size : {"tiny", "small"}) {
    for (const auto& model_dir : fs::directory_iterator(fs::path(fx) / size)) {
      if (!model_dir.is_directory() || !fs::exists(model_dir.path() / "config.json")) continue;
      const auto cfg = nlohmann::json::parse(std::ifstream(model_dir.path() / "config.json"));
      const int64_t hidden = cfg["hidden_size"], vocab = cfg["vocab_size"], layers = cfg["num_hidden_layers"];
      for (const auto& f : fs::directory_iterator(model_dir.path())) {
        if (f.path().extension() != ".gguf") continue;
        INFO(f.path().string());
        const auto g = GgufFile::open(f.path().string());
        ++opened;
        CHECK(g.version() == 3);
        CHECK(g.get_int(g.architecture() + ".block_count") == layers);
        CHECK(g.require("tokenizer.ggml.tokens").as_array().size() == static_cast<size_t>(vocab));
        const auto& emb = g.tensors().require("token_embd.weight").view;
        CHECK(emb.shape == Shape{vocab, hidden});
        for (const auto& e : g.tensors().entries()) {
          CHECK(e.view.nbytes == *row_bytes(e.view.dtype, e.view.shape.back()) * static_cast<uint64_t>(e.view.shape.rows()));
        }
        if (f.path().string().find("-f32.gguf") == std::string::npos) continue;
        const auto st = SafetensorsModel::open(model_dir.path().string());
        CHECK(bitwise_equal(emb, st.tensors().require("model.embed_tokens.weight").view));
        CHECK(bitwise_equal(g.tensors().require("output_norm.weight").view, st.tensors().require("model.norm.weight").view));
        CHECK(bitwise_equal(g.tensors().require("blk.0.attn_norm.weight").view,
                            st.tensors().require("model.layers.0.input_layernorm.weight").view));
        if (const auto* q = g.tensors().find("blk.0.attn_q.weight")) {
          // llama-family converters permute q/k rows for rotary; qwen3 and deepseek are stored as is.
          if (g.architecture() != "llama") {
            CHECK(bitwise_equal(q->view, st.tensors().require("model.layers.0.self_attn.q_proj.weight").view));
          }
        }
        // Merged experts: slice e of blk.L.ffn_down_exps is experts.e.down_proj of the last layer.
        const std::string last = std::to_string(layers - 1);
        if (const auto* down = g.tensors().find("blk." + last + ".ffn_down_exps.weight")) {
          const int64_t experts = down->view.shape[0];
          const auto& hf = st.tensors().require("model.layers." + last + ".mlp.experts." + std::to_string(experts - 1) +
                                                ".down_proj.weight");
          CHECK(bitwise_equal(down->view.slice_outer(experts - 1), hf.view));
        }
        ++compared;
      }
    }
  }
  CHECK(opened >= 20);
  CHECK(compared >= 4);
}
