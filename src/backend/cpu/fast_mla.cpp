// FastCpuOps' MLA products with kv_b (declared in fast_ops.hpp): the query absorption through an f16
// copy of each head's key rows transposed, the value expansion on kv_b's stored rows.
#include <algorithm>
#include <cstring>

#include "backend/cpu/fast_ops.hpp"
#include "tandem/backend/cpu/reference/linear.hpp"
#include "tandem/backend/thread_pool.hpp"
#include "tandem/formats/dequantize.hpp"

namespace tandem {
namespace {

constexpr int64_t kRowTile = 16;  // output rows per work item
constexpr int kDequantizeSlot = 0;

bool on_cpu(const LinearWeight& w) {
  return !w.empty() && w.weight.device.kind == DeviceKind::cpu && w.weight.shape.rank == 2 && w.bias.empty();
}

bool shape_fits(const LinearWeight& kv_b, const MlaShape& s) {
  return s.heads > 0 && s.nope > 0 && s.v > 0 && s.kv_lora > 0 && kv_b.in_features() == s.kv_lora &&
         kv_b.out_features() == s.heads * (s.nope + s.v);
}


}  // namespace

const LinearWeight& FastCpuOps::absorbed_keys(const LinearWeight& kv_b, const MlaShape& s) {
  std::lock_guard lock(absorbed_mutex_);
  const TensorView& view = kv_b.weight;
  const WeightFingerprint source = fingerprint_of(view);
  auto [it, made] = absorbed_.try_emplace(kv_b.weight.data);
  AbsorbedKeys& keys = it->second;
  if (!made && keys.source == source) return keys.weight;
  keys.source = source;
  try {
    keys.f16.resize(static_cast<size_t>(s.heads * s.kv_lora * s.nope));
    pool_.parallel_for(s.heads, [&](int64_t begin, int64_t end, int worker) {
      float* rows = pool_.scratch(worker, kDequantizeSlot, static_cast<size_t>(s.nope * s.kv_lora));
      for (int64_t h = begin; h < end; ++h) {
        const int64_t first = h * (s.nope + s.v);
        dequantize_weight_rows(kv_b, first, first + s.nope, rows);  // [nope][kv_lora]
        uint16_t* t = keys.f16.data() + h * s.kv_lora * s.nope;     // [kv_lora][nope]
        for (int64_t r = 0; r < s.nope; ++r)
          for (int64_t c = 0; c < s.kv_lora; ++c) t[c * s.nope + r] = f32_to_f16(rows[r * s.kv_lora + c]);
      }
    });
  } catch (...) {
    absorbed_.erase(it);
    throw;
  }
  TensorView& w = keys.weight.weight;
  w.dtype = DType::f16;
  w.shape = Shape{s.heads * s.kv_lora, s.nope};
  w.device = Device::cpu();
  w.data = keys.f16.data();
  return keys.weight;
}

bool FastCpuOps::mla_absorb_query(const LinearWeight& kv_b, const MlaShape& s, const float* q, int64_t tokens,
                                  float* q_latent) {
  if (!on_cpu(kv_b) || !shape_fits(kv_b, s)) return false;
  const LinearWeight& keys = absorbed_keys(kv_b, s);
  const int64_t q_head = s.nope + s.rope, tiles = (s.kv_lora + kRowTile - 1) / kRowTile;
  // Head h's query rows (its first nope values) are float32 activations for the f16 kernels.
  pool_.parallel_for(s.heads * tiles, [&](int64_t begin, int64_t end, int) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / tiles, c0 = item % tiles * kRowTile, c1 = std::min(s.kv_lora, c0 + kRowTile);
      const kernels::ActRows x{reinterpret_cast<const uint8_t*>(q + h * q_head),
                               s.heads * q_head * static_cast<int64_t>(sizeof(float))};
      kernels::matmul_tile(table_, keys, kernels::WeightKind::f16, x, tokens, h * s.kv_lora + c0, h * s.kv_lora + c1,
                           nullptr, q_latent + h * s.kv_lora + c0, s.heads * s.kv_lora, nullptr);
    }
  });
  return true;
}

bool FastCpuOps::mla_expand_values(const LinearWeight& kv_b, const MlaShape& s, const float* attended,
                                   int64_t tokens, float* out) {
  if (!supports(kv_b) || !shape_fits(kv_b, s)) return false;
  std::lock_guard lock(mutex_);
  const kernels::WeightKind kind = *kernels::weight_kind_for(kv_b.weight.dtype);
  // Rows (token, head) of `attended`, each kv_lora wide, quantised once.
  const kernels::ActRows xa = quantize(kernels::act_format(kind), attended, tokens * s.heads, s.kv_lora, act_);
  const int64_t tiles = (s.v + kRowTile - 1) / kRowTile;
  const uint8_t* strips = repacked_.find(kv_b);  // read where a head's value rows start on a strip
  pool_.parallel_for(s.heads * tiles, [&](int64_t begin, int64_t end, int worker) {
    void* workspace = tokens >= kernels::kTileMinTokens ? tile_workspace(worker, kv_b) : nullptr;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / tiles, v0 = item % tiles * kRowTile, v1 = std::min(s.v, v0 + kRowTile);
      const int64_t first = h * (s.nope + s.v) + s.nope;
      const kernels::ActRows x{xa.data + h * xa.stride, xa.stride * s.heads};
      kernels::matmul_tile(table_, kv_b, kind, x, tokens, first + v0, first + v1, nullptr, out + h * s.v + v0,
                           s.heads * s.v, workspace, strips);
    }
  });
  return true;
}

}  // namespace tandem
