#include "text/tokenizer/post_processor.hpp"

#include <nlohmann/json.hpp>

#include "tandem/error.hpp"

namespace tandem::text {
namespace {

// A single-sequence template flattened to: ids before the text, ids after it.
class WrapProcessor final : public PostProcessor {
 public:
  WrapProcessor(std::vector<int32_t> before, std::vector<int32_t> after)
      : before_(std::move(before)), after_(std::move(after)) {}
  void process(std::vector<int32_t>& ids) const override {
    ids.insert(ids.begin(), before_.begin(), before_.end());
    ids.insert(ids.end(), after_.begin(), after_.end());
  }
  int32_t leading_special_id() const override { return before_.empty() ? -1 : before_.front(); }

 private:
  std::vector<int32_t> before_, after_;
};

class SequenceProcessor final : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> steps)
      : steps_(std::move(steps)) {}
  void process(std::vector<int32_t>& ids) const override {
    for (const auto& step : steps_) step->process(ids);
  }
  int32_t leading_special_id() const override {
    for (const auto& step : steps_)
      if (step->leading_special_id() >= 0) return step->leading_special_id();
    return -1;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

std::unique_ptr<PostProcessor> make_template(const nlohmann::json& spec) {
  std::vector<int32_t> before, after;
  bool seen_sequence = false;
  const auto& special_tokens = spec.value("special_tokens", nlohmann::json::object());
  for (const auto& item : spec.at("single")) {
    if (item.contains("Sequence")) {
      if (seen_sequence)
        throw Error(ErrorKind::unsupported,
                    "tokenizer.json: TemplateProcessing with two sequences in 'single'");
      seen_sequence = true;
      continue;
    }
    if (!item.contains("SpecialToken"))
      throw Error(ErrorKind::corrupt_file, "tokenizer.json: TemplateProcessing item " +
                                               item.dump() + " is neither Sequence nor SpecialToken");
    const std::string name = item.at("SpecialToken").at("id").get<std::string>();
    if (!special_tokens.contains(name))
      throw Error(ErrorKind::corrupt_file, "tokenizer.json: TemplateProcessing uses special token '" +
                                               name + "' missing from special_tokens");
    auto& target = seen_sequence ? after : before;
    for (const auto& id : special_tokens.at(name).at("ids")) target.push_back(id.get<int32_t>());
  }
  return std::make_unique<WrapProcessor>(std::move(before), std::move(after));
}

int32_t named_id(const nlohmann::json& pair, const std::function<int32_t(const std::string&)>& token_id) {
  // "cls": ["<s>", 0]
  return pair.at(1).get<int32_t>() >= 0 ? pair.at(1).get<int32_t>()
                                        : token_id(pair.at(0).get<std::string>());
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(
    const nlohmann::json& spec, const std::function<int32_t(const std::string&)>& token_id) {
  if (spec.is_null()) return nullptr;
  const std::string type = spec.value("type", "");
  if (type == "TemplateProcessing") return make_template(spec);
  if (type == "ByteLevel") return nullptr;  // only adjusts offsets
  if (type == "RobertaProcessing" || type == "BertProcessing")
    return std::make_unique<WrapProcessor>(std::vector<int32_t>{named_id(spec.at("cls"), token_id)},
                                           std::vector<int32_t>{named_id(spec.at("sep"), token_id)});
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (const auto& step : spec.at("processors"))
      if (auto p = make_post_processor(step, token_id)) steps.push_back(std::move(p));
    return std::make_unique<SequenceProcessor>(std::move(steps));
  }
  throw Error(ErrorKind::unsupported, "tokenizer.json: post_processor type '" + type +
                                          "' is not supported (supported: TemplateProcessing, "
                                          "ByteLevel, RobertaProcessing, BertProcessing, Sequence)");
}

std::unique_ptr<PostProcessor> make_bos_eos_processor(int32_t bos_id, int32_t eos_id) {
  std::vector<int32_t> before, after;
  if (bos_id >= 0) before.push_back(bos_id);
  if (eos_id >= 0) after.push_back(eos_id);
  return std::make_unique<WrapProcessor>(std::move(before), std::move(after));
}

}  // namespace tandem::text
