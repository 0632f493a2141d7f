// Placement rules: parsing, resolution per role, bytes per (group, device), the runnable check.
#include "tandem/engine/placement.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <sstream>
#include <set>
#include <type_traits>
#include <utility>

#include "tandem/backend/cuda_backend.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/read_file.hpp"
#include "tandem/model/weights.hpp"

namespace tandem {

const char* weight_group_name(WeightGroup g) {
  switch (g) {
    case WeightGroup::embedding: return "embedding";
    case WeightGroup::output: return "output";
    case WeightGroup::norms: return "norms";
    case WeightGroup::attention: return "attention";
    case WeightGroup::router: return "router";
    case WeightGroup::experts: return "experts";
    case WeightGroup::shared_experts: return "shared_experts";
    case WeightGroup::dense_ffn: return "dense_ffn";
  }
  return "?";
}

const char* weight_group_display_name(WeightGroup g) {
  switch (g) {
    case WeightGroup::embedding: return "token embedding";
    case WeightGroup::output: return "output";
    case WeightGroup::norms: return "norms";
    case WeightGroup::attention: return "attention";
    case WeightGroup::router: return "router";
    case WeightGroup::experts: return "routed experts";
    case WeightGroup::shared_experts: return "shared experts";
    case WeightGroup::dense_ffn: return "dense FFN";
  }
  return "?";
}

bool PlacementRule::matches(WeightGroup g, int64_t layer) const {
  if (!any_group && g != group) return false;
  if (!has_layer_range()) return true;
  return layer != kNoLayer && layer >= first_layer && layer <= last_layer;
}

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

std::string group_list() {
  std::string out;
  for (WeightGroup g : kAllWeightGroups) out += std::string(weight_group_name(g)) + ", ";
  return out + "*";
}

bool parse_int(std::string_view s, int64_t& value) {
  s = trim(s);
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  return !s.empty() && ec == std::errc() && end == s.data() + s.size() && value >= 0;
}

// `where`: " (line 3 of rules.txt)" or "".
[[noreturn]] void rule_error(std::string_view rule, const std::string& where, const std::string& what) {
  throw Error(ErrorKind::invalid_argument, fmt::format("placement rule '{}'{}: {}", rule, where, what));
}

PlacementRule parse_rule(std::string_view text, const std::string& where) {
  PlacementRule r;
  r.text = std::string(text);
  const size_t eq = text.find('=');
  if (eq == std::string_view::npos)
    rule_error(text, where, "expected GROUP=DEVICE or GROUP[FIRST-LAST]=DEVICE (e.g. experts=cpu)");
  if (text.find('=', eq + 1) != std::string_view::npos) rule_error(text, where, "more than one '='");
  std::string_view lhs = trim(text.substr(0, eq));
  const std::string_view rhs = trim(text.substr(eq + 1));

  const size_t bracket = lhs.find('[');
  std::string_view name = trim(lhs.substr(0, bracket));
  if (bracket != std::string_view::npos) {
    if (lhs.back() != ']') rule_error(text, where, "a layer range must end with ']' (e.g. attention[0-9])");
    const std::string_view range = lhs.substr(bracket + 1, lhs.size() - bracket - 2);
    const size_t dash = range.find('-');
    int64_t first = 0, last = 0;
    const bool ok = dash == std::string_view::npos
                        ? (parse_int(range, first) && (last = first, true))
                        : parse_int(range.substr(0, dash), first) && parse_int(range.substr(dash + 1), last);
    if (!ok)
      rule_error(text, where,
                 fmt::format("layer range '[{}]' is not N or FIRST-LAST with non-negative integers", range));
    if (first > last) rule_error(text, where, fmt::format("layer range [{}-{}] is empty (first > last)", first, last));
    r.first_layer = first;
    r.last_layer = last;
  }
  if (name.empty()) rule_error(text, where, fmt::format("no role group before '='; groups: {}", group_list()));
  if (name == "*") {
    r.any_group = true;
  } else {
    bool found = false;
    for (WeightGroup g : kAllWeightGroups)
      if (name == weight_group_name(g)) r.group = g, found = true;
    if (!found) rule_error(text, where, fmt::format("unknown role group '{}'; groups: {}", name, group_list()));
    if (r.has_layer_range() && (r.group == WeightGroup::embedding || r.group == WeightGroup::output))
      rule_error(text, where, fmt::format("'{}' is not per layer, so a layer range does not apply", name));
  }
  if (rhs.empty()) rule_error(text, where, "no device after '=' (cpu, cuda or cuda:N)");
  try {
    r.device = parse_device(rhs);
  } catch (const Error& e) {
    rule_error(text, where, e.what());
  }
  return r;
}

std::vector<PlacementRule> default_rules(bool gpu_available) {
  std::vector<PlacementRule> rules;
  auto add = [&](bool any, WeightGroup g, Device d) {
    PlacementRule r;
    r.any_group = any;
    r.group = g;
    r.device = d;
    r.text = fmt::format("{}={}", any ? "*" : weight_group_name(g), d.to_string());
    r.from_defaults = true;
    rules.push_back(std::move(r));
  };
  if (gpu_available) {
    add(false, WeightGroup::experts, Device::cpu());
    add(true, WeightGroup::embedding, Device::cuda(0));
  } else {
    add(true, WeightGroup::embedding, Device::cpu());
  }
  return rules;
}

std::string layers_text(const std::set<int64_t>& layers) {
  if (layers.empty() || *layers.begin() == kNoLayer) return "";
  return layers.size() == 1 ? fmt::format(" (layer {})", *layers.begin())
                            : fmt::format(" (layers {}-{})", *layers.begin(), *layers.rbegin());
}

}  // namespace

Device parse_device(std::string_view text) {
  text = trim(text);
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") return Device::cuda(0);
  if (text.substr(0, 5) == "cuda:") {
    int64_t index = 0;
    if (!parse_int(text.substr(5), index) || index > 255)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("device '{}': the GPU index after 'cuda:' must be an integer 0-255", text));
    return Device::cuda(static_cast<int>(index));
  }
  throw Error(ErrorKind::invalid_argument, fmt::format("unknown device '{}' (expected cpu, cuda or cuda:N)", text));
}

Placement::Placement() : rules_(default_rules(false)) {}

Placement Placement::defaults(bool gpu_available) {
  Placement p;
  p.rules_ = default_rules(gpu_available);
  return p;
}

PlacementRule parse_placement_rule(std::string_view text) { return parse_rule(trim(text), ""); }

Placement Placement::from_rules(std::vector<PlacementRule> rules, bool gpu_available) {
  Placement p;
  p.rules_ = std::move(rules);
  for (PlacementRule& r : default_rules(gpu_available)) p.rules_.push_back(std::move(r));
  return p;
}

Placement Placement::parse(std::string_view rules, bool gpu_available) {
  return from_rules(parse_rule_list(rules), gpu_available);
}

std::vector<PlacementRule> Placement::parse_rule_list(std::string_view rules) {
  Placement p;
  p.rules_.clear();
  rules = trim(rules);
  if (!rules.empty() && rules.front() == '@') {
    const std::string path(trim(rules.substr(1)));
    if (path.empty()) throw Error(ErrorKind::invalid_argument, "placement: '@' must be followed by a rules file path");
    // A rules file is a few lines: 1 MB is generous, and a device or FIFO is refused, not read forever.
    std::string text;
    try {
      text = read_file_bytes(path, uint64_t{1} << 20);
    } catch (const Error& e) {
      throw Error(e.kind(), fmt::format("placement: rules file: {}", e.what()));
    }
    std::istringstream in(text);
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
      std::string_view body = line;
      if (const size_t hash = body.find('#'); hash != std::string_view::npos) body = body.substr(0, hash);
      // A line may also hold several comma-separated rules.
      size_t pos = 0;
      while (pos <= body.size()) {
        size_t comma = body.find(',', pos);
        if (comma == std::string_view::npos) comma = body.size();
        const std::string_view piece = trim(body.substr(pos, comma - pos));
        if (!piece.empty()) p.rules_.push_back(parse_rule(piece, fmt::format(" (line {} of {})", number, path)));
        pos = comma + 1;
      }
    }
  } else if (!rules.empty()) {
    size_t pos = 0;
    int number = 1;
    while (pos <= rules.size()) {
      size_t comma = rules.find(',', pos);
      if (comma == std::string_view::npos) comma = rules.size();
      const std::string_view piece = trim(rules.substr(pos, comma - pos));
      if (piece.empty())
        throw Error(ErrorKind::invalid_argument,
                    fmt::format("placement rules '{}': rule {} is empty (stray comma?)", rules, number));
      p.rules_.push_back(parse_rule(piece, ""));
      pos = comma + 1;
      ++number;
    }
  }
  return std::move(p.rules_);
}

const PlacementRule& Placement::rule_for(WeightGroup g, int64_t layer) const {
  for (const PlacementRule& r : rules_)
    if (r.matches(g, layer)) return r;
  throw Error(ErrorKind::internal, "placement: no rule matches (the defaults must end with '*')");
}

Device Placement::device_for(WeightGroup g, int64_t layer) const { return rule_for(g, layer).device; }

std::string Placement::to_string() const {
  std::string out;
  for (const PlacementRule& r : rules_) out += (out.empty() ? "" : ",") + r.text;
  return out;
}

void Placement::check_layers(int64_t num_layers) const {
  for (const PlacementRule& r : rules_)
    if (!r.from_defaults && r.has_layer_range() && r.first_layer >= num_layers)
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("placement rule '{}': layer range starts past the model's last layer ({} layers, "
                              "0-{})",
                              r.text, num_layers, num_layers - 1));
}

std::vector<PlacedBytes> place_weights(const Weights& weights, const Placement& placement) {
  std::set<std::pair<const void*, uint64_t>> seen;
  std::vector<PlacedBytes> out;
  for_each_weight_tensor(weights, [&](WeightGroup g, int64_t layer, const TensorView& v, TensorRole) {
    if (v.empty() || !seen.insert({v.data, v.nbytes}).second) return;
    const Device d = placement.device_for(g, layer);
    for (PlacedBytes& p : out)
      if (p.group == g && p.device == d) {
        p.bytes += v.nbytes;
        return;
      }
    out.push_back({g, d, v.nbytes});
  });
  std::stable_sort(out.begin(), out.end(), [](const PlacedBytes& a, const PlacedBytes& b) { return a.group < b.group; });
  return out;
}

void apply_placement(Weights& weights, const Placement& placement) {
  for_each_weight_tensor(weights, [&](WeightGroup g, int64_t layer, TensorView& v, TensorRole) {
    if (!v.empty()) v.device = placement.device_for(g, layer);
  });
}

bool cuda_forward_available() { return cuda_backend_built() && cuda_device_count() > 0; }

void check_placement_runnable(const Weights& weights, const Placement& placement) {
  // Without a cuda rule there is nothing to check (and no reason to wake the CUDA driver).
  if (std::none_of(placement.rules().begin(), placement.rules().end(),
                   [](const PlacementRule& r) { return r.device.kind == DeviceKind::cuda; }))
    return;
  if (cuda_forward_available()) {
    // Every cuda rule the user wrote must name a GPU that is there, whether or not it matches a role.
    const int gpus = cuda_device_count();
    for (const PlacementRule& r : placement.rules())
      if (r.device.kind == DeviceKind::cuda && r.device.index >= gpus)
        throw Error(ErrorKind::invalid_argument,
                    fmt::format("placement rule '{}' asks for {}, but this machine has {} CUDA device{} (cuda:0-{})",
                                r.text, r.device.to_string(), gpus, gpus == 1 ? "" : "s", gpus - 1));
    return;
  }
  // The first role (in model order) a cuda rule claims, and the layers that rule claims for it.
  const PlacementRule* rule = nullptr;
  WeightGroup group = WeightGroup::embedding;
  std::set<int64_t> layers;
  for_each_weight_tensor(weights, [&](WeightGroup g, int64_t layer, const TensorView& v, TensorRole) {
    if (v.empty()) return;
    const PlacementRule& r = placement.rule_for(g, layer);
    if (r.device.kind != DeviceKind::cuda) return;
    if (rule == nullptr) rule = &r, group = g;
    if (&r == rule && g == group) layers.insert(layer);
  });
  const std::string advice =
      cuda_backend_built()
          ? "no CUDA device is visible to this process (no GPU, or no driver); use --placement '*=cpu' (or "
            "leave cuda out of the rules)"
          : "this build has no CUDA backend (configure with -DTANDEM_CUDA=ON where nvcc is installed); use "
            "--placement '*=cpu' (or leave cuda out of the rules)";
  if (rule != nullptr)
    throw Error(ErrorKind::unsupported,
                fmt::format("placement rule '{}' puts {}{} on {}, but the CUDA backend cannot run that role yet: {}",
                            rule->text, weight_group_name(group), layers_text(layers), rule->device.to_string(),
                            advice));
  for (const PlacementRule& r : placement.rules())
    if (r.device.kind == DeviceKind::cuda)
      throw Error(ErrorKind::unsupported,
                  fmt::format("placement rule '{}' asks for {}, but the CUDA backend cannot run any role yet: {}",
                              r.text, r.device.to_string(), advice));
}

}  // namespace tandem
