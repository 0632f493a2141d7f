#pragma once
// HF post-processors for a single sequence: TemplateProcessing, ByteLevel (ids unchanged),
// RobertaProcessing / BertProcessing, Sequence. Applied only with add_special_tokens.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace tandem::text {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int32_t>& ids) const = 0;
  // The first id this processor puts before the text, or -1 (used as the tokenizer's BOS).
  virtual int32_t leading_special_id() const { return -1; }
};

// nullptr for JSON null. `token_id` resolves a token's text to its id (-1 when absent).
std::unique_ptr<PostProcessor> make_post_processor(
    const nlohmann::json& spec, const std::function<int32_t(const std::string&)>& token_id);

// Prepends `bos_id` (GGUF add_bos_token) and appends `eos_id` (add_eos_token) when >= 0.
std::unique_ptr<PostProcessor> make_bos_eos_processor(int32_t bos_id, int32_t eos_id);

}  // namespace tandem::text
