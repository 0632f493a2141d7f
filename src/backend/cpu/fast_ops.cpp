#include "backend/cpu/fast_ops.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "tandem/backend/thread_pool.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/ops/linear.hpp"

namespace tandem {
namespace {

using kernels::ActFormat;
using kernels::ActRows;
using kernels::WeightKind;

constexpr int64_t kRowTile = 16;     // output rows per work item
constexpr int64_t kTokenBlock = 64;  // tokens per MoE work item (keeps items of similar cost)
constexpr int64_t kParallelQuantizeValues = 1 << 15;

template <class T>
T* grown(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

WeightKind kind_of(const LinearWeight& w) { return *kernels::weight_kind_for(w.weight.dtype); }

// Scratch slot 1 of each worker holds the tile kernels' workspace (slot 0: the MLP's gate/up tiles).
constexpr int kTileWorkspaceSlot = 1;

}  // namespace

void* FastCpuOps::tile_workspace(int worker, const LinearWeight& w) {
  const int64_t bytes = kernels::matmul_tile_workspace_bytes(table_, kind_of(w), w.in_features());
  if (bytes == 0) return nullptr;
  return pool_.scratch(worker, kTileWorkspaceSlot, static_cast<size_t>((bytes + 3) / 4));
}

namespace {

}  // namespace

FastCpuOps::FastCpuOps(ThreadPool& pool, kernels::IsaLevel level)
    : pool_(pool), level_(level), table_(kernels::make_kernel_table(level)) {}

bool FastCpuOps::supports(const LinearWeight& w) const {
  if (w.empty() || w.weight.device.kind != DeviceKind::cpu || w.weight.shape.rank != 2) return false;
  const auto kind = kernels::weight_kind_for(w.weight.dtype);
  if (!kind) return false;
  const int64_t in = w.in_features(), out = w.out_features();
  if (in % kernels::act_block_values(kernels::act_format(*kind)) != 0) return false;
  if (*kind == WeightKind::f8_e4m3) {
    const TensorView& s = w.scale_inv;
    if (s.empty() || s.dtype != DType::f32 || s.shape.rank != 2 || s.shape[0] * 128 < out ||
        s.shape.back() * 128 < in || s.shape.back() > kernels::kMaxFp8ScaleColumns)
      return false;
  } else if (!w.scale_inv.empty()) {
    return false;
  }
  return true;
}

bool FastCpuOps::supports_ffn(const LinearWeight& gate, const LinearWeight& up,
                              const LinearWeight& down) const {
  return supports(gate) && supports(up) && supports(down) && gate.bias.empty() && up.bias.empty() &&
         down.bias.empty() && kernels::act_format(kind_of(gate)) == kernels::act_format(kind_of(up)) &&
         gate.out_features() == up.out_features() && gate.in_features() == up.in_features() &&
         down.in_features() == gate.out_features();
}

ActRows FastCpuOps::quantize(ActFormat format, const float* x, int64_t rows, int64_t in,
                             std::vector<uint8_t>& storage) {
  if (format == ActFormat::f32) return {reinterpret_cast<const uint8_t*>(x), in * 4};
  const int64_t bytes = kernels::act_row_bytes(format, in);
  uint8_t* dst = grown(storage, rows * bytes);
  if (rows * in >= kParallelQuantizeValues && rows > 1) {
    pool_.parallel_for(rows, [&](int64_t begin, int64_t end, int) {
      kernels::quantize_rows(format, x, in, in, begin, end, dst);
    });
  } else {
    kernels::quantize_rows(format, x, in, in, 0, rows, dst);
  }
  return {dst, bytes};
}

const float* FastCpuOps::bias_of(const LinearWeight& w, std::vector<float>& storage) {
  if (w.bias.empty()) return nullptr;
  const int64_t out = w.out_features();
  float* dst = grown(storage, out);
  if (dtype_traits(w.bias.dtype).block_elems == 1) {
    dequantize_row(w.bias.dtype, w.bias.data, dst, out);
  } else {
    const std::vector<float> all = dequantize_to_vector(w.bias);
    std::copy(all.begin(), all.begin() + out, dst);
  }
  return dst;
}

void FastCpuOps::linear(const LinearWeight& w, const float* x, int64_t rows, float* y) {
  std::lock_guard lock(mutex_);
  const WeightKind kind = kind_of(w);
  const int64_t in = w.in_features(), out = w.out_features();
  const ActRows xa = quantize(kernels::act_format(kind), x, rows, in, act_);
  const float* bias = bias_of(w, bias_);
  const int64_t tiles = (out + kRowTile - 1) / kRowTile;
  pool_.parallel_for(tiles, [&](int64_t begin, int64_t end, int worker) {
    void* workspace = rows >= kernels::kTileMinTokens ? tile_workspace(worker, w) : nullptr;
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t o0 = tile * kRowTile, o1 = std::min(out, o0 + kRowTile);
      kernels::matmul_tile(table_, w, kind, xa, rows, o0, o1, bias, y + o0, out, workspace);
    }
  });
}

void FastCpuOps::build_items(bool down_phase) {
  items_.clear();
  for (size_t g = 0; g < groups_.size(); ++g) {
    const Group& group = groups_[g];
    const int64_t out = down_phase ? group.down->out_features() : group.gate->out_features();
    for (int64_t r = 0; r < group.rows; r += kTokenBlock)
      for (int64_t o = 0; o < out; o += kRowTile)
        items_.push_back({static_cast<int32_t>(g), group.row0 + r, std::min(kTokenBlock, group.rows - r), o,
                          std::min(out, o + kRowTile)});
  }
}

void FastCpuOps::run_groups(ActRows x, int64_t total_rows, float* down_out) {
  const Group& first = groups_.front();
  const int64_t inter = first.gate->out_features(), out = first.down->out_features();
  float* hidden = grown(hidden_, total_rows * inter);

  // Phase 1: gate and up tiles of every group, fused with SiLU into `hidden`.
  build_items(false);
  pool_.parallel_for(static_cast<int64_t>(items_.size()), [&](int64_t begin, int64_t end, int worker) {
    float* g = pool_.scratch(worker, 0, static_cast<size_t>(2 * kTokenBlock * kRowTile));
    float* u = g + kTokenBlock * kRowTile;
    for (int64_t i = begin; i < end; ++i) {
      const Item& it = items_[static_cast<size_t>(i)];
      const Group& group = groups_[static_cast<size_t>(it.group)];
      const ActRows rows{x.data + it.row0 * x.stride, x.stride};
      const int64_t width = it.o1 - it.o0;
      void* workspace = it.rows >= kernels::kTileMinTokens ? tile_workspace(worker, *group.gate) : nullptr;
      kernels::matmul_tile(table_, *group.gate, kind_of(*group.gate), rows, it.rows, it.o0, it.o1, nullptr, g,
                           width, workspace);
      workspace = it.rows >= kernels::kTileMinTokens ? tile_workspace(worker, *group.up) : nullptr;
      kernels::matmul_tile(table_, *group.up, kind_of(*group.up), rows, it.rows, it.o0, it.o1, nullptr, u,
                           width, workspace);
      for (int64_t t = 0; t < it.rows; ++t) {
        float* h = hidden + (it.row0 + t) * inter + it.o0;
        for (int64_t o = 0; o < width; ++o) {
          const float gv = g[t * width + o];
          h[o] = gv / (1.0f + std::exp(-gv)) * u[t * width + o];
        }
      }
    }
  });

  // Phase 2: the down projection of every group's rows.
  const ActRows h = quantize(kernels::act_format(kind_of(*first.down)), hidden, total_rows, inter, act_down_);
  build_items(true);
  pool_.parallel_for(static_cast<int64_t>(items_.size()), [&](int64_t begin, int64_t end, int worker) {
    for (int64_t i = begin; i < end; ++i) {
      const Item& it = items_[static_cast<size_t>(i)];
      const Group& group = groups_[static_cast<size_t>(it.group)];
      void* workspace = it.rows >= kernels::kTileMinTokens ? tile_workspace(worker, *group.down) : nullptr;
      kernels::matmul_tile(table_, *group.down, kind_of(*group.down), {h.data + it.row0 * h.stride, h.stride},
                           it.rows, it.o0, it.o1, nullptr, down_out + it.row0 * out + it.o0, out, workspace);
    }
  });
}

bool FastCpuOps::silu_glu_mlp(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down,
                              const float* x, int64_t tokens, float* out) {
  if (!supports_ffn(gate, up, down)) return false;
  std::lock_guard lock(mutex_);
  groups_.assign(1, Group{&gate, &up, &down, 0, tokens});
  const ActRows xa = quantize(kernels::act_format(kind_of(gate)), x, tokens, gate.in_features(), act_);
  run_groups(xa, tokens, out);
  return true;
}

bool FastCpuOps::moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens,
                                    int64_t hidden, const int32_t* expert_ids, const float* weights,
                                    int64_t top_k, float* out) {
  const auto count = static_cast<int64_t>(experts.count());
  const int64_t routed = tokens * top_k;
  for (int64_t r = 0; r < routed; ++r)
    if (expert_ids[r] < 0 || expert_ids[r] >= count)
      throw Error(ErrorKind::internal, "expert id out of range");
  std::lock_guard lock(mutex_);
  // Counting sort of (token, slot) rows by expert; position_ maps a row back to its sorted place.
  int64_t* begin = grown(expert_begin_, count + 1);
  std::fill(begin, begin + count + 1, 0);
  for (int64_t r = 0; r < routed; ++r) ++begin[expert_ids[r] + 1];
  for (int64_t e = 0; e < count; ++e) begin[e + 1] += begin[e];
  int32_t* order = grown(order_, routed);
  int32_t* position = grown(position_, routed);
  groups_.clear();
  for (int64_t e = 0; e < count; ++e) {
    const int64_t n = begin[e + 1] - begin[e];
    if (n == 0) continue;
    const auto i = static_cast<size_t>(e);
    if (!supports_ffn(experts.gate[i], experts.up[i], experts.down[i]) ||
        experts.down[i].out_features() != hidden)
      return false;
    groups_.push_back({&experts.gate[i], &experts.up[i], &experts.down[i], begin[e], n});
    // One activation format and intermediate width for all: the phases quantise once.
    const Group& first = groups_.front();
    if (experts.gate[i].out_features() != first.gate->out_features() ||
        kernels::act_format(kind_of(experts.gate[i])) != kernels::act_format(kind_of(*first.gate)) ||
        kernels::act_format(kind_of(experts.down[i])) != kernels::act_format(kind_of(*first.down)))
      return false;
  }
  if (groups_.empty()) return false;
  {
    // Place rows: walk in order, filling each expert's range (begin[] is restored afterwards).
    for (int64_t r = 0; r < routed; ++r) {
      const int64_t slot = begin[expert_ids[r]]++;
      order[slot] = static_cast<int32_t>(r);
      position[r] = static_cast<int32_t>(slot);
    }
  }
  // Quantise each token once, then gather its row for each of its experts.
  const LinearWeight& gate0 = *groups_.front().gate;
  const ActFormat format = kernels::act_format(kind_of(gate0));
  const ActRows tok = quantize(format, x, tokens, hidden, act_tokens_);
  uint8_t* gathered = grown(act_, routed * tok.stride);
  for (int64_t i = 0; i < routed; ++i)
    std::memcpy(gathered + i * tok.stride, tok.data + (order[i] / top_k) * tok.stride,
                static_cast<size_t>(tok.stride));

  float* down_out = grown(down_out_, routed * hidden);
  run_groups({gathered, tok.stride}, routed, down_out);

  pool_.parallel_for(tokens, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      float* o = out + t * hidden;
      std::fill(o, o + hidden, 0.0f);
      for (int64_t s = 0; s < top_k; ++s) {
        const float w = weights[t * top_k + s];
        const float* y = down_out + static_cast<int64_t>(position[t * top_k + s]) * hidden;
        for (int64_t i = 0; i < hidden; ++i) o[i] += w * y[i];
      }
    }
  });
  return true;
}

}  // namespace tandem
