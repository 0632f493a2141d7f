#include <algorithm>
#include <string>

#include "tandem/model/config_readers.hpp"

namespace tandem {

void drop_special_ids_outside_vocab(ModelConfig& config, const std::string& source,
                                    std::vector<std::string>& warnings) {
  const auto outside = [&](int64_t id) { return id < 0 || id >= config.vocab_size; };
  const auto warn = [&](const char* what, int64_t id) {
    warnings.push_back(source + ": " + what + " token id " + std::to_string(id) +
                       " is outside the vocabulary of " + std::to_string(config.vocab_size) +
                       " tokens; ignoring it");
  };
  // -1 is how the readers say "none".
  if (config.bos_token_id != -1 && outside(config.bos_token_id)) {
    warn("BOS", config.bos_token_id);
    config.bos_token_id = -1;
  }
  std::erase_if(config.eos_token_ids, [&](int64_t id) {
    if (!outside(id)) return false;
    warn("EOS", id);
    return true;
  });
}

}  // namespace tandem
