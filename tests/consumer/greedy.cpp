// Loads a model through the C++ API (Tandem::tandem) and prints the greedy continuation ids.
// Usage: greedy_cpp MODEL_PATH PROMPT_TEXT MAX_NEW_TOKENS
#include <cstdio>
#include <string>

#include "tandem/engine/engine.hpp"
#include "tandem/engine/generate.hpp"
#include "tandem/error.hpp"
#include "tandem/text/tokenizer.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s MODEL_PATH PROMPT_TEXT MAX_NEW_TOKENS\n", argv[0]);
    return 2;
  }
  try {
    tandem::LoadOptions options;
    options.threads = 1;
    auto engine = tandem::Engine::load(argv[1], options);
    auto session = engine->new_session();
    const auto prompt = engine->tokenizer()->encode(argv[2]);
    tandem::GenerateOptions generate;
    generate.max_new_tokens = std::stoll(argv[3]);
    const auto result = tandem::generate(*session, engine->tokenizer(), prompt, generate);
    for (size_t i = 0; i < result.ids.size(); ++i) std::printf(i == 0 ? "%d" : " %d", result.ids[i]);
    std::printf("\n");
    return 0;
  } catch (const tandem::Error& e) {
    std::fprintf(stderr, "error (%s): %s\n", tandem::error_kind_name(e.kind()), e.what());
    return 1;
  }
}
