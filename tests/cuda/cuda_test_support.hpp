#pragma once
// Shared by the CUDA tests: GPU detection (tests skip, saying so, without one), random inputs and
// random weights in every stored type the CUDA kernels read.
#include <cstdint>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "tandem/backend/backend.hpp"
#include "tandem/cuda/cuda_device.hpp"
#include "tandem/cuda/kernels.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/model/weights.hpp"
#include "tandem/tensor/dtype.hpp"

namespace tandem::test {

// A paged KV layer on the GPU for the attention kernels' tests: its planes, the tokens' positions
// (each token a sequence at position context − 1) and block tables, and the PagedKv / DeviceBatch
// pointing at them. The caller sets kv's row layout (type, block_tokens, row and block strides) first.
struct DevicePagedCache {
  cuda::DeviceBuffer planes, positions, tables;
  cuda::PagedKv kv;
  cuda::DeviceBatch batch;
  void upload(const void* bytes, size_t size, const std::vector<int64_t>& contexts, const std::vector<int32_t>& ids,
              int64_t table_stride) {
    planes = cuda::DeviceBuffer(0, size);
    planes.upload(bytes, size);
    std::vector<int64_t> pos;
    for (int64_t n : contexts) pos.push_back(n - 1);
    positions = cuda::DeviceBuffer(0, pos.size() * 8);
    positions.upload(pos.data(), pos.size() * 8);
    tables = cuda::DeviceBuffer(0, ids.size() * 4);
    tables.upload(ids.data(), ids.size() * 4);
    kv.layer_base = planes.data();
    batch.tokens = static_cast<int64_t>(contexts.size());
    batch.positions = static_cast<const int64_t*>(positions.data());
    batch.block_tables = static_cast<const int32_t*>(tables.data());
    batch.table_stride = table_stride;
    batch.max_context = table_stride * kv.block_tokens;
  }
};

inline bool have_gpu() {
  if (cuda::device_count() > 0) return true;
  WARN("skipped: no CUDA device on this machine");
  return false;
}

// Environment variable `name` set to `value` while in scope (read at each call by what it switches:
// TANDEM_CUDA_MLA_TC=0 keeps MLA decode on the float32 kernel); its previous value, or none, after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_) setenv(name_.c_str(), old_->c_str(), 1);
    else unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

inline std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// A linear weight that owns its bytes (and FP8 block scales, and an optional f32 bias).
struct OwnedWeight {
  std::vector<uint8_t> bytes;
  std::vector<float> scales, bias;
  LinearWeight w;
};

// Offsets of the f16 scale fields in one block of each quantised type; random bytes elsewhere
// make valid blocks once these hold sane scales.
inline std::vector<int> f16_fields(DType t) {
  switch (t) {
    case DType::q4_0:
    case DType::q5_0:
    case DType::q8_0:
    case DType::iq4_nl:
    case DType::iq4_xs: return {0};
    case DType::q4_1:
    case DType::q5_1:
    case DType::q4_k:
    case DType::q5_k: return {0, 2};
    case DType::q6_k: return {208};
    default: return {};
  }
}

inline OwnedWeight random_weight(DType t, int64_t out, int64_t in, uint32_t seed, bool with_bias = false) {
  OwnedWeight o;
  std::mt19937 rng(seed);
  const auto row = *row_bytes(t, in);
  o.bytes.resize(static_cast<size_t>(row) * static_cast<size_t>(out));
  const auto values = random_floats(static_cast<size_t>(out * in), seed + 1, 0.5f);
  if (t == DType::f32) {
    std::memcpy(o.bytes.data(), values.data(), o.bytes.size());
  } else if (t == DType::f16 || t == DType::bf16) {
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t b = t == DType::f16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i]);
      std::memcpy(o.bytes.data() + 2 * i, &b, 2);
    }
  } else {
    for (auto& b : o.bytes) b = static_cast<uint8_t>(rng());
    if (t == DType::f8_e4m3) {
      for (auto& b : o.bytes)
        if ((b & 0x7f) == 0x7f) b ^= 1;  // no NaN patterns
    } else {
      const auto& tr = dtype_traits(t);
      std::uniform_real_distribution<float> scale(0.002f, 0.02f);
      for (size_t blk = 0; blk < o.bytes.size() / static_cast<size_t>(tr.block_bytes); ++blk)
        for (int off : f16_fields(t)) {
          const uint16_t h = f32_to_f16(scale(rng));
          std::memcpy(o.bytes.data() + blk * static_cast<size_t>(tr.block_bytes) + static_cast<size_t>(off), &h, 2);
        }
    }
  }
  o.w.weight.dtype = t;
  o.w.weight.shape = Shape{out, in};
  o.w.weight.data = o.bytes.data();
  o.w.weight.nbytes = o.bytes.size();
  if (t == DType::f8_e4m3) {
    const int64_t so = (out + 127) / 128, si = (in + 127) / 128;
    std::uniform_real_distribution<float> scale(0.001f, 0.01f);
    o.scales.resize(static_cast<size_t>(so * si));
    for (auto& s : o.scales) s = scale(rng);
    o.w.scale_inv.dtype = DType::f32;
    o.w.scale_inv.shape = Shape{so, si};
    o.w.scale_inv.data = o.scales.data();
    o.w.scale_inv.nbytes = o.scales.size() * 4;
  }
  if (with_bias) {
    o.bias = random_floats(static_cast<size_t>(out), seed + 2);
    o.w.bias.dtype = DType::f32;
    o.w.bias.shape = Shape{out};
    o.w.bias.data = o.bias.data();
    o.w.bias.nbytes = o.bias.size() * 4;
  }
  return o;
}

// max |a - b| / max |b| (infinite when sizes differ or a is not finite).
inline double relative_error(std::span<const float> a, std::span<const float> b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0, scale = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    diff = std::max(diff, std::fabs(double(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(double(b[i])));
  }
  return diff / scale;
}

// Host vector → a buffer of backend `b` (its memory: VRAM for the GPU), and back.
template <typename T>
DeviceBuffer put(Backend& b, const std::vector<T>& v) {
  DeviceBuffer d = b.allocate(v.size() * sizeof(T));
  b.copy_to_device(d.data(), v.data(), v.size() * sizeof(T));
  return d;
}
template <typename T = float>
std::vector<T> get(Backend& b, const DeviceBuffer& d, size_t n) {
  std::vector<T> v(n);
  b.copy_to_host(v.data(), d.data(), n * sizeof(T));
  b.synchronize();
  return v;
}

inline const DType kCudaWeightTypes[] = {DType::f32,  DType::f16,  DType::bf16, DType::f8_e4m3, DType::q4_0,
                                         DType::q4_1, DType::q5_0, DType::q5_1, DType::q8_0,    DType::q4_k,
                                         DType::q5_k, DType::q6_k, DType::iq4_nl, DType::iq4_xs};

}  // namespace tandem::test
