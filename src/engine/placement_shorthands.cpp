// llama.cpp's placement spellings (-ngl, --cpu-moe, --n-cpu-moe, -ot) as Tandem placement rules.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <map>
#include <memory>
#include <set>
#include <utility>

#include "tandem/engine/placement_plan.hpp"
#include "tandem/error.hpp"
#include "tandem/model/model_files.hpp"
#include "tandem/model/weight_roles.hpp"

namespace tandem {
namespace {

[[noreturn]] void fail(const std::string& message) { throw Error(ErrorKind::invalid_argument, message); }

bool parse_int64(std::string_view s, int64_t& v) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return !s.empty() && ec == std::errc() && end == s.data() + s.size();
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// llama.cpp's device names (CPU, CUDA0, CUDA1) and Tandem's (cpu, cuda, cuda:N), any case.
Device parse_override_device(std::string_view text, std::string_view flag) {
  const std::string d = lower(text);
  int64_t index = 0;
  if (d.size() > 4 && d.starts_with("cuda") && d[4] != ':' && parse_int64(std::string_view(d).substr(4), index) &&
      index >= 0 && index <= 255)
    return Device::cuda(static_cast<int>(index));
  try {
    return parse_device(d);
  } catch (const Error&) {
    fail(fmt::format("{}: unknown device '{}' (expected CPU, CUDA0, CUDA1, ... or cpu, cuda, cuda:N)", flag, text));
  }
}

class Pcre2Pattern {
 public:
  Pcre2Pattern(const std::string& pattern, std::string_view flag) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), 0, &error, &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      fail(fmt::format("{}: bad regular expression '{}' at offset {}: {}", flag, pattern, offset,
                       reinterpret_cast<const char*>(message)));
    }
    data_ = pcre2_match_data_create_from_pattern(code_, nullptr);
  }
  ~Pcre2Pattern() {
    pcre2_match_data_free(data_);
    pcre2_code_free(code_);
  }
  Pcre2Pattern(const Pcre2Pattern&) = delete;
  Pcre2Pattern& operator=(const Pcre2Pattern&) = delete;

  // Matches anywhere in `subject` (llama.cpp uses std::regex_search).
  bool search(const std::string& subject) const {
    return pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), 0, 0, data_, nullptr) >= 0;
  }

 private:
  pcre2_code* code_ = nullptr;
  pcre2_match_data* data_ = nullptr;
};

// Each bound tensor's file name with its (group, layer); a slice of a merged expert tensor is
// named by the tensor that holds it.
struct NamedRole {
  std::string name;
  WeightGroup group;
  int64_t layer;
};

std::vector<NamedRole> named_roles(const ModelFiles& files, const Weights& weights) {
  struct Span {
    const uint8_t* begin;
    const uint8_t* end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (const TensorEntry& e : files.tensors().entries())
    if (!e.view.empty()) {
      const auto* b = static_cast<const uint8_t*>(e.view.data);
      spans.push_back({b, b + e.view.nbytes, &e.name});
    }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  std::vector<NamedRole> out;
  std::set<std::tuple<std::string, WeightGroup, int64_t>> seen;
  for_each_weight_tensor(weights, [&](WeightGroup g, int64_t layer, const TensorView& v, TensorRole) {
    if (v.empty()) return;
    const auto* p = static_cast<const uint8_t*>(v.data);
    auto it = std::upper_bound(spans.begin(), spans.end(), p, [](const uint8_t* q, const Span& s) { return q < s.begin; });
    if (it == spans.begin()) return;  // not in the file (converted at bind): no name to match
    --it;
    if (p >= it->end) return;
    if (seen.insert({*it->name, g, layer}).second) out.push_back({*it->name, g, layer});
  });
  return out;
}

PlacementRule make_rule(WeightGroup g, int64_t first, int64_t last, Device d) {
  const std::string range = first == kNoLayer ? "" : first == last ? fmt::format("[{}]", first)
                                                                   : fmt::format("[{}-{}]", first, last);
  return parse_placement_rule(fmt::format("{}{}={}", weight_group_name(g), range, d.to_string()));
}

// One rule per run of consecutive layers of a group.
void add_layer_rules(std::vector<PlacementRule>& rules, const std::map<WeightGroup, std::set<int64_t>>& hits, Device d) {
  for (const auto& [g, layers] : hits) {
    auto it = layers.begin();
    while (it != layers.end()) {
      const int64_t first = *it;
      int64_t last = first;
      ++it;
      if (first != kNoLayer)
        while (it != layers.end() && *it == last + 1) last = *it++;
      rules.push_back(make_rule(g, first, last, d));
    }
  }
}

}  // namespace

bool PlacementFlags::any() const {
  return !n_gpu_layers.empty() || cpu_moe || n_cpu_moe >= 0 || !override_tensor.empty() || !vram_budget.empty() ||
         explicit_expert_cache();
}

bool PlacementFlags::explicit_expert_cache() const { return !expert_cache.empty() && expert_cache != "off"; }

bool PlacementFlags::wants_gpu_defaults() const {
  return !vram_budget.empty() || cpu_moe || n_cpu_moe >= 0 || explicit_expert_cache();
}

std::vector<PlacementRule> placement_shorthand_rules(const PlacementFlags& flags, const ModelFiles& files,
                                                     const Weights& weights, bool gpu_available) {
  std::vector<PlacementRule> rules;
  const int64_t layers = files.config.num_layers;
  if (!flags.override_tensor.empty()) {
    const std::vector<NamedRole> roles = named_roles(files, weights);
    for (const std::string& flag_value : flags.override_tensor) {
      size_t pos = 0;
      while (pos <= flag_value.size()) {
        size_t comma = flag_value.find(',', pos);
        if (comma == std::string::npos) comma = flag_value.size();
        const std::string item = flag_value.substr(pos, comma - pos);
        pos = comma + 1;
        const std::string flag = fmt::format("-ot/--override-tensor '{}'", item);
        const size_t eq = item.rfind('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == item.size())
          fail(fmt::format("{}: expected REGEX=DEVICE (e.g. 'exps=CPU' or 'blk\\.[0-3]\\.=CUDA0')", flag));
        const Device device = parse_override_device(item.substr(eq + 1), flag);
        const Pcre2Pattern pattern(item.substr(0, eq), flag);
        std::map<WeightGroup, std::set<int64_t>> hits;
        for (const NamedRole& r : roles)
          if (pattern.search(r.name)) hits[r.group].insert(r.layer);
        if (hits.empty())
          fail(fmt::format("{}: the regular expression matches none of this model's {} tensor names (e.g. '{}')",
                           flag, files.tensors().size(), roles.empty() ? std::string("-") : roles.back().name));
        add_layer_rules(rules, hits, device);
      }
    }
  }
  if (flags.cpu_moe) rules.push_back(parse_placement_rule("experts=cpu"));
  if (flags.n_cpu_moe > 0)
    rules.push_back(make_rule(WeightGroup::experts, 0, std::min(flags.n_cpu_moe, layers) - 1, Device::cpu()));
  if (flags.n_cpu_moe < -1) fail(fmt::format("--n-cpu-moe must be 0 or more, not {}", flags.n_cpu_moe));
  if (!flags.n_gpu_layers.empty()) {
    const std::string v = lower(flags.n_gpu_layers);
    int64_t n = 0;
    if (v == "all" || v == "auto" || v == "-1") {
      n = layers + 1;
    } else if (!parse_int64(v, n) || n < 0) {
      fail(fmt::format("-ngl/--n-gpu-layers '{}': expected a number of layers (0 or more), -1 or 'all'",
                       flags.n_gpu_layers));
    }
    // llama.cpp offloads the last N repeating layers; past the layer count, the output too. Here
    // N > layers puts everything (the embedding included) on the GPU.
    if (!gpu_available) {
      // Nothing to offload to.
    } else if (n > layers) {
      rules.push_back(parse_placement_rule("*=cuda:0"));
    } else {
      if (n > 0) rules.push_back(parse_placement_rule(fmt::format("*[{}-{}]=cuda:0", layers - n, layers - 1)));
      rules.push_back(parse_placement_rule("*=cpu"));
    }
  }
  return rules;
}

uint64_t parse_vram_budget(std::string_view text, uint64_t card_total_bytes, std::string_view flag) {
  const std::string t = lower(text);
  const auto bad = [&] {
    fail(fmt::format("{} '{}': expected bytes with an optional K/M/G/T suffix (binary: 24G, 500M, "
                     "1.5GiB) or a percentage of {} (80%)",
                     flag, text, flag == "--vram-budget" ? "the card" : "the budget"));
  };
  if (t.empty()) bad();
  size_t end = 0;
  while (end < t.size() && (std::isdigit(static_cast<unsigned char>(t[end])) || t[end] == '.')) ++end;
  if (end == 0) bad();
  double value = 0;
  try {
    value = std::stod(t.substr(0, end));
  } catch (const std::exception&) {
    bad();
  }
  const std::string unit = t.substr(end);
  double bytes = 0;
  if (unit == "%") {
    if (value <= 0 || value > 100) fail(fmt::format("{} '{}': a percentage must be within (0, 100]", flag, text));
    if (card_total_bytes == 0)
      fail(fmt::format("{} '{}': a percentage needs the card's memory, but no GPU is visible (give "
                       "bytes, or --vram-total)",
                       flag, text));
    bytes = value / 100.0 * static_cast<double>(card_total_bytes);
  } else {
    static const std::map<std::string, int> shifts = {{"", 0},    {"b", 0},    {"k", 10},   {"kb", 10},
                                                      {"kib", 10}, {"m", 20},  {"mb", 20},  {"mib", 20},
                                                      {"g", 30},   {"gb", 30}, {"gib", 30}, {"t", 40},
                                                      {"tb", 40},  {"tib", 40}};
    const auto it = shifts.find(unit);
    if (it == shifts.end()) bad();
    bytes = value * static_cast<double>(uint64_t{1} << it->second);
  }
  if (!(bytes >= 1) || bytes > 1e18) bad();
  const auto result = static_cast<uint64_t>(bytes);
  if (card_total_bytes > 0 && result > card_total_bytes)
    fail(fmt::format("{} '{}' ({:.2f} GiB) is larger than {} ({:.2f} GiB); give at most 100%", flag, text,
                     bytes / (1 << 30), flag == "--vram-budget" ? "the card" : "the budget",
                     static_cast<double>(card_total_bytes) / (1 << 30)));
  return result;
}

}  // namespace tandem
