// `tandem tokenize -m PATH (--text T | --file F) [--no-special]`: prints the token ids as one JSON
// array (nlohmann dump, no spaces: `[1,2,3]`) and a newline. External checks parse this: keep it.
#include <fstream>
#include <sstream>
#include <string>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "cli/command.hpp"
#include "tandem/formats/read_file.hpp"
#include "tandem/error.hpp"
#include "tandem/text/tokenizer.hpp"

namespace tandem::cli {
namespace {

struct TokenizeFlags {
  std::string model_path;
  std::string text;
  std::string file;
  bool no_special = false;
};

CommandRun setup(CLI::App& sub) {
  auto flags = std::make_shared<TokenizeFlags>();
  sub.add_option("-m,--model", flags->model_path,
                 "HF model or tokenizer folder, a tokenizer.json, or a GGUF file")
      ->required();
  auto* text = sub.add_option("--text", flags->text, "text to tokenize");
  auto* file = sub.add_option("--file", flags->file, "file whose contents to tokenize");
  text->excludes(file);
  file->excludes(text);
  sub.add_flag("--no-special", flags->no_special,
               "do not add special tokens such as BOS (HF add_special_tokens=False)");
  return [flags, text, file]() {
    if (text->count() == 0 && file->count() == 0)
      throw Error(ErrorKind::invalid_argument, "tokenize: give --text or --file");
    const std::string input = file->count() ? read_file_bytes(flags->file) : flags->text;
    const auto tokenizer = Tokenizer::load(flags->model_path);
    const auto ids = tokenizer->encode(input, !flags->no_special);
    fmt::print("{}\n", nlohmann::json(ids).dump());
    return 0;
  };
}

const RegisterCommand registered{{"tokenize", "print the token ids of a text as a JSON array", setup}};

}  // namespace
}  // namespace tandem::cli
