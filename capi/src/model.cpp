// Loading a model and describing it: tandem_model_* calls.
#include <algorithm>
#include <atomic>
#include <nlohmann/json.hpp>

#include "c_api_support.hpp"
#include "tandem/engine/generate.hpp"
#include "tandem/kv/kv_disk_tier.hpp"
#include "tandem/kv/kv_type.hpp"
#include "tandem/model/model_files.hpp"
#include "tandem/text/chat_template.hpp"
#include "tandem/text/tokenizer.hpp"

using namespace tandem;
using namespace tandem::capi;

namespace {

const size_t kLoadParamsV1 = TANDEM_V1_SIZE(tandem_load_params, cancel_flag);
const size_t kModelInfoV1 = TANDEM_V1_SIZE(tandem_model_info, total_bytes);
const size_t kKvParamsV1 = TANDEM_V1_SIZE(tandem_kv_params, kv_disk_bytes);  // ABI 4

tandem_kv_params default_kv_params() {
  const LoadOptions defaults;
  tandem_kv_params kv{};
  kv.struct_size = sizeof(kv);
  kv.kv_type = nullptr;
  kv.prefix_cache = defaults.kv_prefix_cache ? 1 : 0;
  kv.kv_disk_dir = nullptr;
  kv.kv_disk_bytes = 0;
  return kv;
}

// The KV settings into `options`, checked as the CLI checks --kv-type and --kv-disk.
void apply_kv_params(const tandem_kv_params& kv, LoadOptions& options) {
  if (kv.kv_type != nullptr && kv.kv_type[0] != '\0') options.kv_type = parse_kv_type(kv.kv_type);
  options.kv_prefix_cache = kv.prefix_cache != 0;
  const bool disk = kv.kv_disk_dir != nullptr && kv.kv_disk_dir[0] != '\0';
  if (!disk) {
    if (kv.kv_disk_bytes != 0)
      throw Error(ErrorKind::invalid_argument, "tandem_kv_params.kv_disk_bytes is set without a kv_disk_dir");
    return;
  }
  KvDiskTier::check_directory(kv.kv_disk_dir);
  const uint64_t total = KvDiskTier::file_system_bytes(kv.kv_disk_dir);
  uint64_t bytes = kv.kv_disk_bytes;
  if (bytes == 0) bytes = total > 0 ? std::min(uint64_t{64} << 30, total / 2) : uint64_t{64} << 30;
  if (total > 0 && bytes > total)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("tandem_kv_params.kv_disk_bytes {} is larger than the file system holding '{}' ({} bytes)",
                            bytes, kv.kv_disk_dir, total));
  options.kv_disk_dir = kv.kv_disk_dir;
  options.kv_disk_bytes = bytes;
}

bool cancel_flag_set(const int32_t* flag) {
  // The caller's flag is a plain int32_t another thread writes; read it atomically.
  return flag != nullptr && __atomic_load_n(flag, __ATOMIC_ACQUIRE) != 0;
}

LoadOptions to_load_options(const tandem_load_params& params, std::atomic<bool>& cancel) {
  if (params.threads < 0) {
    throw Error(ErrorKind::invalid_argument,
                fmt::format("tandem_load_params.threads is {}, must be >= 0", params.threads));
  }
  for (auto [value, name] : {std::pair{params.max_context_tokens, "max_context_tokens"},
                             std::pair{params.max_sessions, "max_sessions"}}) {
    if (value <= 0) {
      throw Error(ErrorKind::invalid_argument,
                  fmt::format("tandem_load_params.{} is {}, must be > 0", name, value));
    }
  }
  if (params.max_batch_tokens < 0)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("tandem_load_params.max_batch_tokens is {}, must be >= 0 (0 = automatic)",
                            params.max_batch_tokens));
  LoadOptions options;
  options.threads = params.threads;
  options.max_context_tokens = params.max_context_tokens;
  options.max_sessions = params.max_sessions;
  options.max_batch_tokens = params.max_batch_tokens;
  options.placement = params.placement != nullptr ? params.placement : "";
  options.load_tokenizer = params.load_tokenizer != 0;
  options.cancel = &cancel;
  // The engine polls its own atomic; the C caller's flag is mirrored into it at every progress
  // report, which is where the engine looks.
  options.progress = [&params, &cancel](float fraction, std::string_view stage) {
    if (cancel_flag_set(params.cancel_flag)) cancel.store(true);
    if (params.progress != nullptr) {
      const std::string stage_text(stage);
      params.progress(fraction, stage_text.c_str(), params.progress_user_data);
    }
  };
  return options;
}

}  // namespace

extern "C" {

tandem_load_params tandem_load_default_params(void) {
  const LoadOptions defaults;
  tandem_load_params params{};
  params.struct_size = sizeof(tandem_load_params);
  params.placement = nullptr;
  params.threads = defaults.threads;
  params.max_context_tokens = defaults.max_context_tokens;
  params.max_sessions = defaults.max_sessions;
  params.max_batch_tokens = defaults.max_batch_tokens;
  params.load_tokenizer = defaults.load_tokenizer ? 1 : 0;
  params.progress = nullptr;
  params.progress_user_data = nullptr;
  params.cancel_flag = nullptr;
  return params;
}

tandem_status tandem_kv_default_params(tandem_kv_params* params) {
  return guarded([&] { write_out_struct(params, default_kv_params(), kKvParamsV1, "tandem_kv_params"); });
}

tandem_status tandem_model_load_with_kv(const char* path, const tandem_load_params* params,
                                        const char* override_kv, const tandem_kv_params* kv,
                                        tandem_model** out_model) {
  if (out_model != nullptr) *out_model = nullptr;
  return guarded([&] {
    require(out_model, "out_model");
    if (require(path, "path") == '\0') throw Error(ErrorKind::invalid_argument, "path must not be empty");
    const tandem_load_params merged =
        read_params(params, tandem_load_default_params(), kLoadParamsV1, "tandem_load_params");
    const tandem_kv_params kv_merged = read_params(kv, default_kv_params(), kKvParamsV1, "tandem_kv_params");
    std::atomic<bool> cancel{cancel_flag_set(merged.cancel_flag)};
    if (cancel.load()) throw Error(ErrorKind::cancelled, fmt::format("loading {} cancelled", path));
    LoadOptions options = to_load_options(merged, cancel);
    if (override_kv != nullptr) options.overrides.metadata = parse_metadata_overrides(override_kv);
    apply_kv_params(kv_merged, options);
    log(TANDEM_LOG_INFO, fmt::format("loading {}", path));
    auto model = std::make_unique<tandem_model>();
    model->engine = Engine::load(path, options);
    model->eos_ids = eos_ids_for(model->engine->config(), model->engine->tokenizer());
    log(TANDEM_LOG_INFO, fmt::format("loaded {} ({})", path, model->engine->config().architecture_name));
    *out_model = model.release();
  });
}

tandem_status tandem_model_load_with_overrides(const char* path, const tandem_load_params* params,
                                               const char* override_kv, tandem_model** out_model) {
  return tandem_model_load_with_kv(path, params, override_kv, nullptr, out_model);
}

tandem_status tandem_model_load(const char* path, const tandem_load_params* params,
                                tandem_model** out_model) {
  return tandem_model_load_with_overrides(path, params, nullptr, out_model);
}

void tandem_model_free(tandem_model* model) { delete model; }

tandem_status tandem_model_get_info(const tandem_model* model, tandem_model_info* out_info) {
  return guarded([&] {
    const Engine& engine = *require(model, "model").engine;
    const ModelConfig& config = engine.config();
    const Tokenizer* tokenizer = engine.tokenizer();
    tandem_model_info info{};
    info.struct_size = sizeof(info);
    info.architecture = config.architecture_name.c_str();
    info.vocab_size = config.vocab_size;
    info.hidden_size = config.hidden_size;
    info.num_layers = config.num_layers;
    info.num_experts = config.num_experts;
    info.num_experts_per_tok = config.num_experts_per_tok;
    info.num_shared_experts = config.num_shared_experts;
    info.max_position_embeddings = config.max_position_embeddings;
    info.max_context_tokens = engine.options().max_context_tokens;
    info.bos_id = tokenizer != nullptr ? tokenizer->bos_id() : static_cast<int32_t>(config.bos_token_id);
    info.eos_id = tokenizer != nullptr && tokenizer->eos_id() >= 0 ? tokenizer->eos_id()
                  : config.eos_token_ids.empty()                  ? -1
                                                                  : static_cast<int32_t>(config.eos_token_ids[0]);
    info.has_tokenizer = tokenizer != nullptr;
    info.has_chat_template = engine.chat_template() != nullptr;
    info.total_bytes = engine.memory_report().total_bytes();
    write_out_struct(out_info, info, kModelInfoV1, "tandem_model_info");
  });
}

tandem_status tandem_model_memory_report_json(const tandem_model* model, char** out_json) {
  if (out_json != nullptr) *out_json = nullptr;
  return guarded([&] {
    require(out_json, "out_json");
    const MemoryReport report = require(model, "model").engine->memory_report();
    auto lines = nlohmann::json::array();
    for (const auto& line : report.lines) {
      lines.push_back({{"what", line.what}, {"device", line.device}, {"bytes", line.bytes},
                       {"mapped", line.mapped}});
    }
    *out_json = copy_out_string(lines.dump());
  });
}

}  // extern "C"
