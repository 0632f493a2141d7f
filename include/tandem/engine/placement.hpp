#pragma once
// Placement: which device each weight role lives on, from ordered rules ("experts=cpu,*=cuda:0",
// first match wins) or the defaults (routed experts on the CPU, the rest on cuda:0 when the forward
// pass can run there, else everything on the CPU). Rule syntax: docs/PLACEMENT.md.
//
// A Placement is model-independent (a rule list); `device_for(group, layer)` resolves a role and
// `place_weights` counts a model's bytes per (group, device). Whether the engine can run what a
// placement asks for is the engine's check (`check_placement_runnable`), not the parser's.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/model/weight_roles.hpp"
#include "tandem/tensor/device.hpp"

namespace tandem {

// Role groups (WeightGroup, kAllWeightGroups, kNoLayer) are in tandem/model/weight_roles.hpp.
const char* weight_group_name(WeightGroup g);          // the rule name: "experts", "dense_ffn", ...
const char* weight_group_display_name(WeightGroup g);  // for reports: "routed experts", "dense FFN", ...


struct PlacementRule {
  bool any_group = false;          // `*`
  WeightGroup group = WeightGroup::embedding;
  int64_t first_layer = -1;        // -1: no range (matches every role of the group)
  int64_t last_layer = -1;         // inclusive
  Device device;
  std::string text;                // as written, for messages: "attention[0-9]=cuda:0"
  bool from_defaults = false;      // appended by the defaults, not written by the user

  bool has_layer_range() const { return first_layer >= 0; }
  // Layer ranges match only per-layer roles (kNoLayer never falls in a range).
  bool matches(WeightGroup g, int64_t layer) const;
};

class Placement {
 public:
  // All on the CPU (`*=cpu`).
  Placement();

  // `rules`: "" (defaults), "g=dev,g[a-b]=dev,..." or "@FILE" (one rule per line, `#` comments;
  // blank lines skipped; commas also split). The user's rules come first; the default rules for
  // `gpu_available` follow, so roles no rule names keep their default place.
  // Throws Error(invalid_argument) naming the rule and what is wrong; Error(io) when FILE cannot
  // be read.
  static Placement parse(std::string_view rules, bool gpu_available);
  // The rules of `parse` without the defaults (for composing with other rule sources).
  static std::vector<PlacementRule> parse_rule_list(std::string_view rules);
  // `rules` in order, then the defaults for `gpu_available`.
  static Placement from_rules(std::vector<PlacementRule> rules, bool gpu_available);
  // The defaults alone: experts=cpu,*=cuda:0 with a GPU, *=cpu without.
  static Placement defaults(bool gpu_available);

  Device device_for(WeightGroup g, int64_t layer = kNoLayer) const;
  // The rule that places (g, layer); never null (the defaults end with `*`).
  const PlacementRule& rule_for(WeightGroup g, int64_t layer = kNoLayer) const;
  const std::vector<PlacementRule>& rules() const { return rules_; }
  // The effective rules, comma-separated: "experts=cpu,*=cpu".
  std::string to_string() const;
  // Checks every user rule against a model of `num_layers` layers: a range past the last layer is
  // an Error(invalid_argument) (it would place nothing).
  void check_layers(int64_t num_layers) const;

 private:
  std::vector<PlacementRule> rules_;
};

// Parses one device: "cpu", "cuda" (= cuda:0), "cuda:N". Throws Error(invalid_argument).
Device parse_device(std::string_view text);
// Parses one rule "GROUP[FIRST-LAST]=DEVICE". Throws Error(invalid_argument) naming the rule.
PlacementRule parse_placement_rule(std::string_view text);

// Bytes of bound weights per (group, device), each tensor counted once (tied embeddings count with
// `embedding`; the same dedup as summarize_weights, so the total equals its total_bytes()).
struct PlacedBytes {
  WeightGroup group;
  Device device;
  uint64_t bytes = 0;
};
std::vector<PlacedBytes> place_weights(const Weights& weights, const Placement& placement);

// Sets each bound tensor's `device` to where the placement puts its role.
void apply_placement(Weights& weights, const Placement& placement);

// Whether this build's forward pass can run roles on a CUDA device: the CUDA backend is built in
// and at least one GPU is visible.
bool cuda_forward_available();

// Throws Error(unsupported) when `placement` puts any role of `weights` on a device the forward
// pass cannot run (anything on cuda without the CUDA backend or a GPU), naming the rule and role
// and suggesting `*=cpu`; Error(invalid_argument) for a rule naming a GPU this machine lacks.
void check_placement_runnable(const Weights& weights, const Placement& placement);

}  // namespace tandem
