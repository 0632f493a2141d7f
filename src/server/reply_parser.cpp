#include "tandem/server/reply_parser.hpp"

#include <nlohmann/json.hpp>

#include "tandem/text/tokenizer.hpp"

namespace tandem::server {

namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kQwenOpen = "<tool_call>";
constexpr std::string_view kQwenClose = "</tool_call>";
constexpr std::string_view kDsCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr std::string_view kDsCallsEnd = "<｜tool▁calls▁end｜>";
constexpr std::string_view kDsCallBegin = "<｜tool▁call▁begin｜>";
constexpr std::string_view kDsCallEnd = "<｜tool▁call▁end｜>";
constexpr std::string_view kDsSep = "<｜tool▁sep｜>";

// Length of the longest suffix of `text` that is a proper prefix of `marker`.
size_t partial_suffix(std::string_view text, std::string_view marker) {
  for (size_t k = std::min(text.size(), marker.size() - 1); k > 0; --k)
    if (text.substr(text.size() - k) == marker.substr(0, k)) return k;
  return 0;
}

std::string_view trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

}  // namespace

ToolCallSyntax detect_tool_call_syntax(const Tokenizer& tokenizer) {
  if (tokenizer.token_id(kDsCallsBegin) >= 0 && tokenizer.token_id(kDsSep) >= 0)
    return ToolCallSyntax::deepseek_v3;
  if (tokenizer.token_id(kQwenOpen) >= 0 && tokenizer.token_id(kQwenClose) >= 0) return ToolCallSyntax::qwen3;
  return ToolCallSyntax::none;
}

ReplyParser::ReplyParser(ToolCallSyntax syntax, bool parse_tools, bool split_reasoning,
                         bool starts_in_reasoning)
    : syntax_(syntax),
      parse_tools_(parse_tools && syntax != ToolCallSyntax::none),
      split_reasoning_(split_reasoning) {
  if (split_reasoning_ && starts_in_reasoning) mode_ = Mode::reasoning;
}

ReplyDelta ReplyParser::push(std::string_view text) {
  buffer_ += text;
  ReplyDelta out;
  run(out, false);
  return out;
}

ReplyDelta ReplyParser::finish() {
  ReplyDelta out;
  run(out, true);
  if (!buffer_.empty()) {
    if (mode_ == Mode::reasoning)
      out.reasoning += reasoning_started_ ? std::string_view(buffer_) : trim(buffer_);
    else
      emit(out, buffer_);  // an unfinished tool call stays visible as text
    buffer_.clear();
  }
  return out;
}

void ReplyParser::emit(ReplyDelta& out, std::string_view text) {
  if (!content_started_) {
    const auto first = text.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos) return;
    text.remove_prefix(first);
    content_started_ = true;
  }
  out.content += text;
}

bool ReplyParser::parse_tool_block(std::string_view block, ReplyDelta& out) {
  try {
    if (syntax_ == ToolCallSyntax::qwen3) {
      const auto j = nlohmann::ordered_json::parse(trim(block));
      if (!j.is_object() || !j.contains("name") || !j["name"].is_string()) return false;
      ToolCall call{j["name"].get<std::string>(), "{}"};
      if (const auto it = j.find("arguments"); it != j.end())
        call.arguments = it->is_string() ? it->get<std::string>() : it->dump();
      out.tool_calls.push_back(std::move(call));
      return true;
    }
    // DeepSeek-V3: TYPE<｜tool▁sep｜>NAME\n```json\nARGS\n```
    const auto sep = block.find(kDsSep);
    if (sep == std::string_view::npos) return false;
    std::string_view rest = block.substr(sep + kDsSep.size());
    const auto nl = rest.find('\n');
    if (nl == std::string_view::npos) return false;
    ToolCall call{std::string(trim(rest.substr(0, nl))), "{}"};
    std::string_view args = trim(rest.substr(nl + 1));
    if (args.starts_with("```json"))
      args.remove_prefix(7);
    else if (args.starts_with("```"))
      args.remove_prefix(3);
    if (args.ends_with("```")) args.remove_suffix(3);
    args = trim(args);
    if (call.name.empty()) return false;
    if (!args.empty()) call.arguments = nlohmann::ordered_json::parse(args).dump();
    out.tool_calls.push_back(std::move(call));
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

void ReplyParser::run(ReplyDelta& out, bool at_end) {
  for (;;) {
    const std::string_view buf = buffer_;
    if (mode_ == Mode::reasoning) {
      const auto add = [&](std::string_view text) {
        if (!reasoning_started_) {
          const auto first = text.find_first_not_of(" \t\r\n");
          if (first == std::string_view::npos) return;
          text.remove_prefix(first);
          reasoning_started_ = true;
        }
        out.reasoning += text;
      };
      const auto close = buf.find(kThinkClose);
      if (close == std::string_view::npos) {
        size_t keep = at_end ? 0 : partial_suffix(buf, kThinkClose);
        // Whitespace right before </think> is trimmed, so it waits until more text follows it.
        while (!at_end && keep < buf.size() &&
               (buf[buf.size() - keep - 1] == '\n' || buf[buf.size() - keep - 1] == ' '))
          ++keep;
        add(buf.substr(0, buf.size() - keep));
        buffer_.erase(0, buf.size() - keep);
        return;
      }
      std::string_view last = buf.substr(0, close);
      while (!last.empty() && (last.back() == '\n' || last.back() == ' ')) last.remove_suffix(1);
      add(last);
      buffer_.erase(0, close + kThinkClose.size());
      mode_ = Mode::content;
      content_started_ = false;
      continue;
    }
    if (mode_ == Mode::tool) {
      if (syntax_ == ToolCallSyntax::qwen3) {
        const auto close = buf.find(kQwenClose);
        if (close == std::string_view::npos) return;  // wait for the whole call
        const std::string_view body = buf.substr(kQwenOpen.size(), close - kQwenOpen.size());
        if (parse_tool_block(body, out))
          ++tool_calls_;
        else
          emit(out, buf.substr(0, close + kQwenClose.size()));
        buffer_.erase(0, close + kQwenClose.size());
        mode_ = Mode::content;
        content_started_ = false;
        continue;
      }
      // DeepSeek-V3: the buffer starts after <｜tool▁calls▁begin｜>; calls until <｜tool▁calls▁end｜>.
      const std::string_view rest =
          trim(buf).empty() ? std::string_view() : buf.substr(buf.find_first_not_of(" \t\r\n"));
      if (rest.starts_with(kDsCallsEnd)) {
        buffer_.erase(0, buf.size() - rest.size() + kDsCallsEnd.size());
        mode_ = Mode::content;
        content_started_ = false;
        continue;
      }
      if (rest.starts_with(kDsCallBegin)) {
        const auto end = rest.find(kDsCallEnd);
        if (end == std::string_view::npos) return;
        const std::string_view call = rest.substr(kDsCallBegin.size(), end - kDsCallBegin.size());
        if (parse_tool_block(call, out))
          ++tool_calls_;
        else
          emit(out, rest.substr(0, end + kDsCallEnd.size()));
        buffer_.erase(0, buf.size() - rest.size() + end + kDsCallEnd.size());
        continue;
      }
      if (rest.size() < kDsCallBegin.size() &&
          (kDsCallBegin.starts_with(rest) || kDsCallsEnd.starts_with(rest)) && !at_end)
        return;  // a marker still arriving
      // Something else inside the block: leave tool mode and show it.
      mode_ = Mode::content;
      continue;
    }
    // Content: the earliest marker that switches mode.
    size_t at = std::string_view::npos;
    std::string_view marker;
    const auto consider = [&](std::string_view m) {
      const auto p = buf.find(m);
      if (p < at) {
        at = p;
        marker = m;
      }
    };
    if (split_reasoning_) consider(kThinkOpen);
    if (parse_tools_) {
      if (syntax_ == ToolCallSyntax::qwen3) consider(kQwenOpen);
      if (syntax_ == ToolCallSyntax::deepseek_v3) {
        consider(kDsCallsBegin);
        consider(kDsCallBegin);
      }
    }
    if (at == std::string_view::npos) {
      size_t keep = 0;
      if (!at_end) {
        if (split_reasoning_) keep = std::max(keep, partial_suffix(buf, kThinkOpen));
        if (parse_tools_ && syntax_ == ToolCallSyntax::qwen3)
          keep = std::max(keep, partial_suffix(buf, kQwenOpen));
        if (parse_tools_ && syntax_ == ToolCallSyntax::deepseek_v3)
          keep = std::max({keep, partial_suffix(buf, kDsCallsBegin), partial_suffix(buf, kDsCallBegin)});
      }
      emit(out, buf.substr(0, buf.size() - keep));
      buffer_.erase(0, buf.size() - keep);
      return;
    }
    emit(out, buf.substr(0, at));
    if (marker == kThinkOpen) {
      buffer_.erase(0, at + marker.size());
      mode_ = Mode::reasoning;
    } else if (marker == kQwenOpen) {
      buffer_.erase(0, at);  // the block keeps its opening tag until it is complete
      mode_ = Mode::tool;
    } else if (marker == kDsCallsBegin) {
      buffer_.erase(0, at + marker.size());
      mode_ = Mode::tool;
    } else {  // a lone <｜tool▁call▁begin｜>
      buffer_.erase(0, at);
      mode_ = Mode::tool;
    }
  }
}

}  // namespace tandem::server
