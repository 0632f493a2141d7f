// GGUF writer: what it writes reads back through the reader (every metadata type, tensor shapes,
// types, bytes and alignment), data streams from the callback, and bad input is refused.
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <numeric>

#include "tandem/error.hpp"
#include "tandem/formats/gguf.hpp"
#include "tandem/formats/gguf_writer.hpp"

using namespace tandem;
namespace fs = std::filesystem;

namespace {

fs::path temp_file(const std::string& name) { return fs::temp_directory_path() / ("tandem_test_writer_" + name); }

// Tensor bytes that differ per tensor and position, so misplaced data is caught.
uint8_t pattern(size_t tensor, uint64_t i) { return static_cast<uint8_t>(tensor * 37 + i * 13 + (i >> 8)); }

GgufWriter::FillTensor fill_in_pieces(size_t piece) {
  return [piece](const GgufWriter::TensorInfo& t, GgufWriter::DataSink& sink) {
    const size_t index = static_cast<size_t>(t.name.back() - '0');
    std::vector<uint8_t> bytes(t.nbytes);
    for (uint64_t i = 0; i < t.nbytes; ++i) bytes[i] = pattern(index, i);
    for (size_t at = 0; at < bytes.size(); at += piece) sink.write(bytes.data() + at, std::min(piece, bytes.size() - at));
  };
}

}  // namespace

TEST_CASE("GGUF writer: every metadata type reads back", "[formats][gguf_writer]") {
  GgufWriter w;
  w.set_string("general.architecture", "qwen3moe");
  w.set_u8("u8", 250);
  w.set_i8("i8", -100);
  w.set_u16("u16", 65000);
  w.set_i16("i16", -30000);
  w.set_u32("u32", 4000000000u);
  w.set_i32("i32", -2000000000);
  w.set_u64("u64", uint64_t{1} << 40);
  w.set_i64("i64", -(int64_t{1} << 40));
  w.set_f32("f32", 0.25f);
  w.set_f64("f64", 1e-300);
  w.set_bool("bool_t", true);
  w.set_bool("bool_f", false);
  w.set_string("str", "héllo");
  w.set_i32_array("i32s", {1, -2, 3});
  w.set_f32_array("f32s", {0.5f, -1.5f});
  w.set_string_array("strs", {"a", "", "xyz"});
  GgufArray inner;
  inner.element_type = GgufType::u16;
  inner.values = {GgufValue{GgufType::u16, uint64_t{7}}};
  GgufArray outer;
  outer.element_type = GgufType::array;
  outer.values = {GgufValue{GgufType::array, inner}, GgufValue{GgufType::array, GgufArray{GgufType::u16, {}, {}, {}}}};
  w.set("nested", GgufValue{GgufType::array, outer});
  w.add_tensor("t0", DType::f32, {3, 2});

  const fs::path path = temp_file("kv.gguf");
  w.write(path.string(), fill_in_pieces(5));
  CHECK(fs::file_size(path) == w.file_bytes());
  {
    const GgufFile f = GgufFile::open(path.string());
    CHECK(f.version() == 3);
    CHECK(f.architecture() == "qwen3moe");
    auto type_of = [&](const char* k) { return f.require(k).type; };
    CHECK(type_of("u8") == GgufType::u8);
    CHECK(f.require("u8").as_int() == 250);
    CHECK(type_of("i8") == GgufType::i8);
    CHECK(f.require("i8").as_int() == -100);
    CHECK(type_of("u16") == GgufType::u16);
    CHECK(f.require("u16").as_int() == 65000);
    CHECK(type_of("i16") == GgufType::i16);
    CHECK(f.require("i16").as_int() == -30000);
    CHECK(type_of("u32") == GgufType::u32);
    CHECK(f.require("u32").as_int() == 4000000000);
    CHECK(type_of("i32") == GgufType::i32);
    CHECK(f.require("i32").as_int() == -2000000000);
    CHECK(type_of("u64") == GgufType::u64);
    CHECK(f.require("u64").as_int() == (int64_t{1} << 40));
    CHECK(type_of("i64") == GgufType::i64);
    CHECK(f.require("i64").as_int() == -(int64_t{1} << 40));
    CHECK(type_of("f32") == GgufType::f32);
    CHECK(f.require("f32").as_float() == 0.25);
    CHECK(type_of("f64") == GgufType::f64);
    CHECK(f.require("f64").as_float() == 1e-300);
    CHECK(type_of("bool_t") == GgufType::boolean);
    CHECK(f.require("bool_t").as_bool());
    CHECK_FALSE(f.require("bool_f").as_bool());
    CHECK(f.require("str").as_string() == "héllo");
    const GgufArray& i32s = f.require("i32s").as_array();
    REQUIRE(i32s.size() == 3);
    CHECK(i32s.element_type == GgufType::i32);
    CHECK(i32s.values[1].as_int() == -2);
    const GgufArray& f32s = f.require("f32s").as_array();
    REQUIRE(f32s.size() == 2);
    CHECK(f32s.values[1].as_float() == -1.5);
    const GgufArray& strs = f.require("strs").as_array();
    REQUIRE(strs.size() == 3);
    CHECK(strs.string_at(0) == "a");
    CHECK(strs.string_at(1).empty());
    CHECK(strs.string_at(2) == "xyz");
    const GgufArray& nested = f.require("nested").as_array();
    REQUIRE(nested.size() == 2);
    CHECK(nested.values[0].as_array().values.at(0).as_int() == 7);
    CHECK(nested.values[1].as_array().size() == 0);
  }
  fs::remove(path);
}

TEST_CASE("GGUF writer: tensors stream from the callback at the alignment", "[formats][gguf_writer]") {
  for (const uint64_t alignment : {uint64_t{32}, uint64_t{64}, uint64_t{4096}}) {
    INFO("alignment " << alignment);
    GgufWriter w(alignment);
    w.set_string("general.architecture", "llama");
    w.add_tensor("t0", DType::f32, {3, 5});
    w.add_tensor("t1", DType::q8_0, {2, 64});
    w.add_tensor("t2", DType::q4_k, {2, 3, 256});
    w.add_tensor("t3", DType::bf16, {7});
    CHECK(w.tensors()[1].nbytes == 2 * 2 * 34);
    CHECK(w.tensors()[2].nbytes == 6 * 144);
    const fs::path path = temp_file("tensors.gguf");
    w.write(path.string(), fill_in_pieces(alignment == 64 ? 1000000 : 7));
    CHECK(fs::file_size(path) == w.file_bytes());
    {
      const GgufFile f = GgufFile::open(path.string());
      CHECK(f.alignment() == alignment);
      const TensorView& t0 = f.tensors().find("t0")->view;
      for (size_t i = 0; i < w.tensors().size(); ++i) {
        const GgufWriter::TensorInfo& info = w.tensors()[i];
        const TensorView& v = f.tensors().find(info.name)->view;
        CHECK(v.dtype == info.dtype);
        CHECK(v.shape.rank == static_cast<int>(info.dims.size()));
        for (int d = 0; d < v.shape.rank; ++d) CHECK(v.shape[d] == info.dims[static_cast<size_t>(d)]);
        CHECK(v.nbytes == info.nbytes);
        const auto* bytes = static_cast<const uint8_t*>(v.data);
        CHECK(static_cast<uint64_t>(bytes - static_cast<const uint8_t*>(t0.data)) == info.offset);
        CHECK(info.offset % alignment == 0);
        bool same = true;
        for (uint64_t b = 0; b < info.nbytes; ++b) same = same && bytes[b] == pattern(i, b);
        CHECK(same);
      }
    }
    fs::remove(path);
  }
}

TEST_CASE("GGUF writer: bad input is refused with a clear error", "[formats][gguf_writer]") {
  GgufWriter w;
  w.set_u32("k", 1);
  CHECK_THROWS_WITH(w.set_u32("k", 2), Catch::Contains("k is set twice"));
  CHECK_THROWS_WITH(w.set("bad", GgufValue{GgufType::u8, uint64_t{300}}), Catch::Contains("out of range"));
  CHECK_THROWS_WITH(w.set("bad", GgufValue{GgufType::string, uint64_t{3}}), Catch::Contains("no string value"));
  CHECK_THROWS_WITH(w.add_tensor("q", DType::q4_k, {2, 100}), Catch::Contains("not whole q4_k blocks"));
  CHECK_THROWS_WITH(w.add_tensor("z", DType::f32, {0, 4}), Catch::Contains("not positive"));
  CHECK_THROWS_WITH(w.add_tensor("r", DType::f32, {1, 1, 1, 1, 1}), Catch::Contains("rank 5"));
  CHECK_THROWS_AS(GgufWriter(48), Error);
  w.add_tensor("t0", DType::f32, {4});
  CHECK_THROWS_WITH(w.add_tensor("t0", DType::f32, {4}), Catch::Contains("added twice"));

  // An unwritable path: the error names it and the reason.
  const std::string unwritable = "/nonexistent-tandem-dir/out.gguf";
  try {
    w.write(unwritable, fill_in_pieces(4));
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::io);
    CHECK_THAT(e.what(), Catch::Contains(unwritable) && Catch::Contains("No such file or directory"));
  }

  // A callback that writes too little or too much: an error, and no partial file is left.
  const fs::path path = temp_file("short.gguf");
  CHECK_THROWS_WITH(w.write(path.string(), [](const GgufWriter::TensorInfo&, GgufWriter::DataSink& sink) {
    const float x = 1;
    sink.write(&x, 4);
  }), Catch::Contains("was written 4 of its 16 bytes"));
  CHECK_FALSE(fs::exists(path));
  CHECK_THROWS_WITH(w.write(path.string(), [](const GgufWriter::TensorInfo&, GgufWriter::DataSink& sink) {
    const std::vector<float> x(5);
    sink.write(x.data(), 20);
  }), Catch::Contains("only 16 left"));
  CHECK_FALSE(fs::exists(path));
}
