// The machine-rates cache of `tandem plan`: a small JSON file keyed by machine.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "tandem/backend/gpu_bandwidth.hpp"
#include "tandem/engine/placement.hpp"
#include "tandem/engine/plan.hpp"

namespace tandem {
namespace {

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  return "unknown cpu";
}

nlohmann::json read_cache() {
  std::ifstream in(machine_rates_cache_path());
  if (!in) return nlohmann::json::object();
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  return j.is_object() ? j : nlohmann::json::object();
}

}  // namespace

std::string machine_rates_key(int threads) {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  return std::string(host) + " | " + cpu_model_name() + " | " + std::to_string(threads) + " threads";
}

std::string gpu_rates_key(int device) {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  return std::string(host) + " | " + cpu_model_name() + " | cuda:" + std::to_string(device);
}

std::string machine_rates_cache_path() {
  std::filesystem::path base;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
    base = xdg;
  } else if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    base = std::filesystem::path(home) / ".cache";
  } else {
    base = std::filesystem::temp_directory_path();
  }
  return (base / "tandem" / "machine-rates.json").string();
}

std::optional<double> cached_machine_rate(const std::string& key, const std::string& field) {
  const nlohmann::json j = read_cache();
  const auto it = j.find(key);
  if (it == j.end() || !it->is_object()) return std::nullopt;
  const auto v = it->find(field);
  if (v == it->end() || !v->is_number() || !(v->get<double>() > 0)) return std::nullopt;
  return v->get<double>();
}

void store_machine_rate(const std::string& key, const std::string& field, double value) {
  nlohmann::json j = read_cache();
  j[key][field] = value;
  const std::filesystem::path path = machine_rates_cache_path();
  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp);
    if (!out) return;
    out << j.dump(2) << "\n";
    if (!out) return;
  }
  std::filesystem::rename(tmp, path, ec);
}

std::string load_gpu_rates(MachineRates& rates, bool remeasure, double& pcie_h2d_gbps, double& pcie_d2h_gbps) {
  pcie_h2d_gbps = pcie_d2h_gbps = 0;
  rates.gpu_present = cuda_forward_available();
  if (!rates.gpu_present) return "no GPU visible";
  std::string source = "assumed (not measured)";
  const std::string key = gpu_rates_key(0);
  const auto cached = [&](const char* field) { return remeasure ? std::nullopt : cached_machine_rate(key, field); };
  const auto vram = cached("vram_read_gbps"), h2d = cached("pcie_h2d_gbps"), d2h = cached("pcie_d2h_gbps");
  if (vram && h2d && d2h) {
    rates.vram_read_gbps = *vram;
    pcie_h2d_gbps = *h2d;
    pcie_d2h_gbps = *d2h;
    source = "cached (" + machine_rates_cache_path() + ")";
  } else if (const auto measured = measure_gpu_bandwidth(0)) {
    rates.vram_read_gbps = measured->vram_read_gbps;
    pcie_h2d_gbps = measured->host_to_device_gbps;
    pcie_d2h_gbps = measured->device_to_host_gbps;
    store_machine_rate(key, "vram_read_gbps", rates.vram_read_gbps);
    store_machine_rate(key, "pcie_h2d_gbps", pcie_h2d_gbps);
    store_machine_rate(key, "pcie_d2h_gbps", pcie_d2h_gbps);
    source = "measured on cuda:0";
  }
  if (pcie_h2d_gbps > 0 && pcie_d2h_gbps > 0) {
    rates.pcie_gbps = std::min(pcie_h2d_gbps, pcie_d2h_gbps);
    rates.gpu_measured = true;
    return source;
  }
  return "assumed (not measured)";
}

}  // namespace tandem
