// `tandem inspect PATH [--json]`: what a model is and where its bytes go — routed experts to host
// DRAM, everything else to the GPU — plus the KV cache per token. Keys of --json: docs/CLI.md.
#include <memory>
#include <string>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "cli/command.hpp"
#include "cli/generation_flags.hpp"
#include "tandem/engine/placement.hpp"
#include "tandem/model/model_files.hpp"
#include "tandem/model/weight_summary.hpp"

namespace tandem::cli {
namespace {

struct InspectFlags {
  std::string path;
  bool json = false;
  std::vector<std::string> override_kv;
};

const char* router_name(RouterKind r) {
  switch (r) {
    case RouterKind::softmax_topk: return "softmax_topk";
    case RouterKind::softmax_group_topk: return "softmax_group_topk";
    case RouterKind::sigmoid_noaux_tc: return "sigmoid_noaux_tc";
  }
  return "?";
}

const char* rope_scaling_name(RopeScalingType t) {
  switch (t) {
    case RopeScalingType::none: return "none";
    case RopeScalingType::linear: return "linear";
    case RopeScalingType::yarn: return "yarn";
  }
  return "?";
}

// Where the default rules put each group's bytes on a machine with a GPU (routed experts → host
// DRAM, the rest → cuda:0): what `run` does there unless an option needs the CPU (docs/PLACEMENT.md).
nlohmann::json describe_placement(const Weights& weights) {
  const Placement placement = Placement::defaults(/*gpu_available=*/true);
  nlohmann::json by_device = nlohmann::json::object();
  nlohmann::json groups = nlohmann::json::array();
  for (const PlacedBytes& p : place_weights(weights, placement)) {
    const std::string device = p.device.to_string();
    by_device[device] = by_device.value(device, uint64_t{0}) + p.bytes;
    groups.push_back({{"group", weight_group_name(p.group)}, {"device", device}, {"bytes", p.bytes}});
  }
  return {{"rules", placement.to_string()}, {"bytes_by_device", by_device}, {"groups", groups}};
}

nlohmann::json describe(const ModelFiles& files, const WeightSummary& s) {
  const ModelConfig& c = files.config;
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) moe_layers += c.is_moe_layer(l) ? 1 : 0;
  const int64_t kv_values = c.num_layers * c.kv_values_per_token_per_layer();
  nlohmann::json attention = {
      {"kind", c.attention == AttentionKind::mla ? "mla" : "gqa"},
      {"heads", c.num_heads},
      {"kv_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"rope_theta", c.rope_theta},
      {"rope_layout", c.rope_layout == RopeLayout::neox ? "neox" : "interleaved"},
      {"rope_scaling", rope_scaling_name(c.rope_scaling.type)},
  };
  if (c.attention == AttentionKind::mla) {
    attention["q_lora_rank"] = c.q_lora_rank;
    attention["kv_lora_rank"] = c.kv_lora_rank;
    attention["qk_nope_head_dim"] = c.qk_nope_head_dim;
    attention["qk_rope_head_dim"] = c.qk_rope_head_dim;
    attention["v_head_dim"] = c.v_head_dim;
  }
  nlohmann::json bytes_by_type = nlohmann::json::object();
  for (const auto& [type, bytes] : s.bytes_by_type) bytes_by_type[type] = bytes;
  return {
      {"path", files.path},
      {"format", files.format == ModelFiles::Format::gguf ? "gguf" : "safetensors"},
      {"architecture", c.architecture_name},
      {"layers", {{"total", c.num_layers}, {"dense", c.num_layers - moe_layers}, {"moe", moe_layers}}},
      {"experts",
       {{"routed", c.num_experts},
        {"used", c.num_experts_per_tok},
        {"shared", c.num_shared_experts > 0 ? c.num_shared_experts : (c.shared_expert_intermediate_size > 0 ? 1 : 0)},
        {"router", router_name(c.router)},
        {"groups", c.n_group},
        {"groups_used", c.topk_group}}},
      {"hidden_size", c.hidden_size},
      {"moe_intermediate_size", c.moe_intermediate_size},
      {"intermediate_size", c.intermediate_size},
      {"vocab_size", c.vocab_size},
      {"context_length", c.max_position_embeddings},
      {"attention", attention},
      {"parameters", s.parameters},
      {"routed_expert_parameters", s.routed_expert_parameters},
      {"bytes_by_type", bytes_by_type},
      {"routed_expert_bytes", s.routed_expert_bytes},
      {"other_bytes", s.other_bytes},
      {"total_bytes", s.total_bytes()},
      {"kv_cache_bytes_per_token", {{"f16", 2 * kv_values}, {"f32", 4 * kv_values}}},
      {"warnings", files.warnings},
  };
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {} ({} B)", v, units[u], bytes);
}

void print_table(const nlohmann::json& j) {
  auto row = [](const std::string& key, const std::string& value) { fmt::print("{:<28}{}\n", key, value); };
  const auto& a = j["attention"];
  const auto& e = j["experts"];
  row("path", j["path"].get<std::string>());
  row("format", j["format"].get<std::string>());
  row("architecture", j["architecture"].get<std::string>());
  row("layers", fmt::format("{} ({} dense, {} MoE)", j["layers"]["total"].get<int64_t>(),
                            j["layers"]["dense"].get<int64_t>(), j["layers"]["moe"].get<int64_t>()));
  row("experts", fmt::format("{} routed, {} used per token, {} shared; router {}", e["routed"].get<int64_t>(),
                             e["used"].get<int64_t>(), e["shared"].get<int64_t>(), e["router"].get<std::string>()));
  row("hidden size", std::to_string(j["hidden_size"].get<int64_t>()));
  row("expert width", std::to_string(j["moe_intermediate_size"].get<int64_t>()));
  row("vocab", std::to_string(j["vocab_size"].get<int64_t>()));
  std::string attn = fmt::format("{}, {} heads, {} kv heads, head dim {}", a["kind"].get<std::string>(),
                                 a["heads"].get<int64_t>(), a["kv_heads"].get<int64_t>(), a["head_dim"].get<int64_t>());
  if (a.contains("kv_lora_rank"))
    attn += fmt::format(", q_lora {}, kv_lora {}, rope dim {}", a["q_lora_rank"].get<int64_t>(),
                        a["kv_lora_rank"].get<int64_t>(), a["qk_rope_head_dim"].get<int64_t>());
  row("attention", attn);
  row("rope", fmt::format("theta {}, {}, scaling {}", a["rope_theta"].get<double>(), a["rope_layout"].get<std::string>(),
                          a["rope_scaling"].get<std::string>()));
  row("context", std::to_string(j["context_length"].get<int64_t>()));
  row("parameters", fmt::format("{} ({} in routed experts)", j["parameters"].get<int64_t>(),
                                j["routed_expert_parameters"].get<int64_t>()));
  for (const auto& [type, bytes] : j["bytes_by_type"].items()) row("bytes " + type, human_bytes(bytes.get<uint64_t>()));
  row("routed experts (host DRAM)", human_bytes(j["routed_expert_bytes"].get<uint64_t>()));
  row("everything else (GPU)", human_bytes(j["other_bytes"].get<uint64_t>()));
  row("total", human_bytes(j["total_bytes"].get<uint64_t>()));
  row("KV cache per token", fmt::format("{} (f16), {} (f32)", human_bytes(j["kv_cache_bytes_per_token"]["f16"].get<uint64_t>()),
                                        human_bytes(j["kv_cache_bytes_per_token"]["f32"].get<uint64_t>())));
  const auto& p = j["placement"];
  row("placement (default rules)", p["rules"].get<std::string>() + " (with a GPU)");
  for (const auto& [device, bytes] : p["bytes_by_device"].items())
    row("  " + device + (device == "cpu" ? " (host DRAM)" : " (GPU)"), human_bytes(bytes.get<uint64_t>()));
  // Per group: "  attention (cuda:0)".
  for (const auto& g : p["groups"])
    row("  " + g["group"].get<std::string>() + " (" + g["device"].get<std::string>() + ")",
        human_bytes(g["bytes"].get<uint64_t>()));
  for (const auto& w : j["warnings"]) row("warning", w.get<std::string>());
}

int inspect_command(const InspectFlags& flags) {
  const ModelFiles files = open_model_files(flags.path, model_overrides_from(flags.override_kv));
  const Weights weights = bind_weights(files);
  const WeightSummary summary = summarize_weights(weights);
  nlohmann::json j = describe(files, summary);
  j["placement"] = describe_placement(weights);
  if (flags.json) {
    fmt::print("{}\n", j.dump());
  } else {
    print_table(j);
  }
  return 0;
}

const RegisterCommand registered{{"inspect", "show a model's architecture, sizes and memory split",
                                  [](CLI::App& sub) -> CommandRun {
                                    auto flags = std::make_shared<InspectFlags>();
                                    sub.add_option("path", flags->path, "GGUF file (or split part) or HF model folder")
                                        ->required();
                                    sub.add_flag("--json", flags->json, "print one JSON object (keys: docs/CLI.md)");
                                    add_override_kv_flag(sub, flags->override_kv);
                                    return [flags] { return inspect_command(*flags); };
                                  }}};

}  // namespace
}  // namespace tandem::cli
