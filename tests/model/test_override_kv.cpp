// `--override-kv KEY=TYPE:VALUE` at the model layer: parsing, applying to GGUF metadata reads,
// and the errors for malformed specs, wrong types, unknown keys and HF folders.
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/fixtures.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/gguf.hpp"
#include "tandem/model/config_readers.hpp"
#include "tandem/model/model_files.hpp"

using namespace tandem;

namespace {

std::string parse_error(const std::string& spec) {
  try {
    parse_metadata_override(spec);
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::invalid_argument);
    return e.what();
  }
  return "";
}

ModelOverrides with(std::initializer_list<const char*> specs) {
  ModelOverrides o;
  for (const char* s : specs) o.metadata.push_back(parse_metadata_override(s));
  return o;
}

std::string load_error(const std::string& path, const ModelOverrides& o) {
  try {
    open_model_files(path, o);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("override-kv specs parse as llama.cpp spells them", "[model][override-kv]") {
  auto i = parse_metadata_override("a.b=int:-42");
  CHECK(i.key == "a.b");
  CHECK(i.value.type == GgufType::i64);
  CHECK(i.value.as_int() == -42);
  auto f = parse_metadata_override("qwen2moe.rope.freq_base=float:1e6");
  CHECK(f.value.type == GgufType::f64);
  CHECK(f.value.as_float() == 1e6);
  auto b = parse_metadata_override("x=bool:false");
  CHECK(b.value.type == GgufType::boolean);
  CHECK_FALSE(b.value.as_bool());
  auto s = parse_metadata_override("x=str:a:b=c");  // only the first '=' and ':' split
  CHECK(s.value.as_string() == "a:b=c");
  CHECK(parse_metadata_override("x=str:").value.as_string().empty());

  CHECK(parse_error("noequals").find("no '='") != std::string::npos);
  CHECK(parse_error("=int:1").find("empty key") != std::string::npos);
  CHECK(parse_error("k=int").find("no ':'") != std::string::npos);
  CHECK(parse_error("k=double:1").find("unknown type 'double'") != std::string::npos);
  CHECK(parse_error("k=float:abc").find("'abc' is not a finite float") != std::string::npos);
  CHECK(parse_error("k=float:inf").find("not a finite float") != std::string::npos);
  CHECK(parse_error("k=float:").find("not a finite float") != std::string::npos);
  CHECK(parse_error("k=int:1.5").find("not an int") != std::string::npos);
  CHECK(parse_error("k=int:").find("not an int") != std::string::npos);
  CHECK(parse_error("k=bool:yes").find("not a bool") != std::string::npos);

  const auto list = parse_metadata_overrides("a=int:1, b=float:2\nc=bool:true,,");
  REQUIRE(list.size() == 3);
  CHECK(list[1].key == "b");
  CHECK(list[2].value.as_bool());
  CHECK(parse_metadata_overrides("").empty());
}

TEST_CASE("override-kv replaces and adds GGUF metadata before the config is read", "[model][override-kv][gguf]") {
  TANDEM_REQUIRE_FIXTURES(fx);
  const std::string q2 = fx + "/tiny/qwen2moe/qwen2moe-f32.gguf";
  const ModelFiles plain = open_model_files(q2);
  CHECK(plain.config.rope_theta == 10000.0);
  bool warned = false;
  for (const auto& w : plain.warnings)
    if (w.find("--override-kv qwen2moe.rope.freq_base=float:1000000") != std::string::npos) warned = true;
  CHECK(warned);

  // Adds a key the file lacks; the warning goes.
  const ModelFiles fixed = open_model_files(q2, with({"qwen2moe.rope.freq_base=float:1000000"}));
  CHECK(fixed.config.rope_theta == 1e6);
  for (const auto& w : fixed.warnings) CHECK(w.find("rope.freq_base") == std::string::npos);

  // Replaces a key the file has; the last of two overrides of one key wins.
  const ModelFiles eps = open_model_files(
      q2, with({"qwen2moe.attention.layer_norm_rms_epsilon=float:0.5", "qwen2moe.attention.layer_norm_rms_epsilon=float:0.25"}));
  CHECK(eps.config.rms_norm_eps == 0.25);

  // The wrong type for what the loader reads.
  const std::string wrong = load_error(q2, with({"qwen2moe.rope.freq_base=int:1000000"}));
  CHECK(wrong.find("reads qwen2moe.rope.freq_base as float") != std::string::npos);
  CHECK(load_error(q2, with({"qwen2moe.block_count=float:2"})).find("as int") != std::string::npos);

  // A key neither in the file nor read by the loader.
  const std::string unknown = load_error(q2, with({"qwen2moe.rope.freq_bsae=float:1000000"}));
  CHECK(unknown.find("unknown override key qwen2moe.rope.freq_bsae") != std::string::npos);

  // A key in the file that the config does not read: accepted, with a warning that it does nothing.
  const ModelFiles unread = open_model_files(q2, with({"general.name=str:renamed"}));
  bool noted = false;
  for (const auto& w : unread.warnings)
    if (w.find("general.name") != std::string::npos && w.find("no effect") != std::string::npos) noted = true;
  CHECK(noted);

  // A value the config then rejects is still an error.
  CHECK_THROWS_AS(open_model_files(q2, with({"qwen2moe.block_count=int:0"})), Error);

  // HF folders: override-kv is about GGUF metadata.
  const std::string hf = load_error(fx + "/tiny/qwen2moe", with({"qwen2moe.rope.freq_base=float:1000000"}));
  CHECK(hf.find("applies to GGUF metadata") != std::string::npos);
}
