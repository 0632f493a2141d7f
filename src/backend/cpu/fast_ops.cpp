#include "backend/cpu/fast_ops.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <chrono>

#include "tandem/backend/cpu/reference/linear.hpp"
#include "tandem/backend/thread_pool.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"

namespace tandem {
namespace {

using kernels::ActFormat;
using kernels::ActRows;
using kernels::WeightKind;

constexpr int64_t kRowTile = 16;     // output rows per work item
// Tokens per MoE work item: keeps items of similar cost, and a strip's weights read once for up to
// this many of its expert's tokens (64 read each strip of a 4096-token pass's Qwen3-30B-A3B layer ~4
// times: bench experts --batch 4096, 2 threads, 0.32-0.34 -> 0.41-0.45 TFLOP/s with 256).
constexpr int64_t kTokenBlock = 256;
constexpr int64_t kParallelQuantizeValues = 1 << 15;
// Gathers of routed activation rows at least this large are split over the pool (a 4096-token
// Qwen3-30B-A3B pass gathers 32,768 rows, 75 MB: ~7 ms on one thread of a ~50 ms layer at 16 cores).
constexpr int64_t kParallelGatherBytes = 256 << 10;
// Output rows per down item of the single-dispatch MoE: 4 row tiles, so a thread claims an item,
// and counts the tile's experts done, once per ~27 KB of Qwen3-30B-A3B's Q4_K down weights rather
// than per 7 KB (per-item atomics cost ~3 % of a 16-token step at 16-row items).
constexpr int64_t kDownRows = 4 * kRowTile;

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
    : FastCpuOps(pool, level, kernels::make_kernel_table(level)) {}

FastCpuOps::FastCpuOps(ThreadPool& pool, kernels::IsaLevel level, const kernels::KernelTable& table)
    : pool_(pool), level_(level), table_(table), gate_up_queue_(pool.size()), down_queue_(pool.size()) {}

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

bool FastCpuOps::prepare(const LinearWeight& w, bool int8) { return supports(w) && repacked_.add(table_, w, pool_, int8); }

FastCpuOps::Group FastCpuOps::group_of(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down,
                                       int64_t row0, int64_t rows) const {
  const auto [gate_strips, gate_int8] = repacked_.find_both(gate);
  const auto [up_strips, up_int8] = repacked_.find_both(up);
  const auto [down_strips, down_int8] = repacked_.find_both(down);
  return Group{&gate, &up, &down, row0, rows, gate_strips, up_strips, down_strips, gate_int8, up_int8, down_int8};
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
      kernels::quantize_rows(table_, format, x, in, in, begin, end, dst);
    });
  } else {
    kernels::quantize_rows(table_, format, x, in, in, 0, rows, dst);
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
  // Plain variables, not a structured binding: clang 14 cannot capture one in the lambda below.
  const RepackedWeights::Found copies = repacked_.find_both(w);
  const uint8_t* strips = copies.strips;
  const uint8_t* int8 = copies.int8;
  const int64_t tiles = (out + kRowTile - 1) / kRowTile;
  pool_.parallel_for(tiles, [&](int64_t begin, int64_t end, int worker) {
    void* workspace = rows >= kernels::kTileMinTokens ? tile_workspace(worker, w) : nullptr;
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t o0 = tile * kRowTile, o1 = std::min(out, o0 + kRowTile);
      kernels::matmul_tile(table_, w, kind, xa, rows, o0, o1, bias, y + o0, out, workspace, strips, int8);
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

// One gate/up item: both tiles into g and u ([rows][width] each), then SiLU(g)·u into `hidden`.
void FastCpuOps::gate_up_item(const Item& it, ActRows x, float* hidden, int64_t inter, float* g, float* u,
                              int worker) {
  const Group& group = groups_[static_cast<size_t>(it.group)];
  const ActRows rows{x.data + it.row0 * x.stride, x.stride};
  const int64_t width = it.o1 - it.o0;
  void* workspace = it.rows >= kernels::kTileMinTokens ? tile_workspace(worker, *group.gate) : nullptr;
  kernels::matmul_tile(table_, *group.gate, kind_of(*group.gate), rows, it.rows, it.o0, it.o1, nullptr, g, width,
                       workspace, group.gate_strips, group.gate_int8);
  workspace = it.rows >= kernels::kTileMinTokens ? tile_workspace(worker, *group.up) : nullptr;
  kernels::matmul_tile(table_, *group.up, kind_of(*group.up), rows, it.rows, it.o0, it.o1, nullptr, u, width,
                       workspace, group.up_strips, group.up_int8);
  for (int64_t t = 0; t < it.rows; ++t)
    table_.silu_mul(g + t * width, u + t * width, width, hidden + (it.row0 + t) * inter + it.o0);
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
    for (int64_t i = begin; i < end; ++i) gate_up_item(items_[static_cast<size_t>(i)], x, hidden, inter, g, u, worker);
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
                           it.rows, it.o0, it.o1, nullptr, down_out + it.row0 * out + it.o0, out, workspace,
                           group.down_strips, group.down_int8);
    }
  });
}

namespace {

// A group's readiness flag: 0 while its gate/up items run, 1 ready, 2 abandoned (a thread threw).
constexpr int32_t kGroupRunning = 0, kGroupReady = 1, kGroupAbandoned = 2;

// Waits until `flag` leaves kGroupRunning and says whether it became ready. Polls for ~30 µs (the
// awaited item normally runs on another core and ends within microseconds), then blocks in the
// kernel (atomic wait): on an oversubscribed machine a spinning or yielding waiter keeps the core
// from the very thread it waits for.
bool wait_for_group(int32_t& flag) {
  const std::atomic_ref<int32_t> state(flag);
  if (const int32_t v = state.load(std::memory_order_acquire); v != kGroupRunning) return v == kGroupReady;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(30);
  for (int i = 0;; ++i) {
    const int32_t v = state.load(std::memory_order_acquire);
    if (v != kGroupRunning) return v == kGroupReady;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if ((i & 63) == 63 && std::chrono::steady_clock::now() >= deadline) state.wait(kGroupRunning, std::memory_order_acquire);
  }
}

void set_group(int32_t& flag, int32_t value) {
  const std::atomic_ref<int32_t> state(flag);
  int32_t running = kGroupRunning;
  if (state.compare_exchange_strong(running, value, std::memory_order_release, std::memory_order_relaxed))
    state.notify_all();  // no system call unless a thread sleeps on it
}

}  // namespace

// One dispatch for the whole operator, in two kinds of items, each taken from a PartitionedItems
// (one contiguous part per thread, then stealing from the others' back ends): the gate/up items of
// build_items (group by group), then the down items (output row tile by tile, each tile's groups in
// order). The thread counting off a group's last gate/up items quantises that group's SiLU rows and
// marks the group ready; a down item of a group not ready yet waits for it (every gate/up item is
// claimed before any down item is, and a thread counts its items off as soon as its run of a group
// ends, so that is at most one item's time). The thread counting off an output tile's last groups
// sums that tile of each token's routed rows in slot order: the arithmetic of run_groups and the
// separate weighted sum, so both give the same bits at any thread count.
void FastCpuOps::run_groups_fused(ActRows x, int64_t total_rows, const Combine& combine, float* out) {
  const Group& first = groups_.front();
  const int64_t inter = first.gate->out_features(), out_features = first.down->out_features();
  float* hidden = grown(hidden_, total_rows * inter);
  const ActFormat down_format = kernels::act_format(kind_of(*first.down));
  const int64_t down_stride = kernels::act_row_bytes(down_format, inter);
  uint8_t* hidden_q = down_format == ActFormat::f32 ? nullptr : grown(act_down_, total_rows * down_stride);
  const ActRows h = hidden_q ? ActRows{hidden_q, down_stride}
                             : ActRows{reinterpret_cast<const uint8_t*>(hidden), inter * 4};
  const int64_t down_tiles = (out_features + kDownRows - 1) / kDownRows;
  // Down rows for the weighted sum go to [output tile][sorted row][kDownRows], so the rows one tile's
  // sum reads are contiguous; the MLP's go straight to `out`.
  float* down_tile_rows = combine.weights ? grown(down_out_, down_tiles * total_rows * kDownRows) : nullptr;

  build_items(false);
  const auto gate_up_items = static_cast<int64_t>(items_.size());
  const auto groups = static_cast<int64_t>(groups_.size());
  int32_t* items_left = grown(items_left_, groups);
  int32_t* ready = grown(group_ready_, groups);
  int32_t* groups_left = grown(tile_groups_left_, down_tiles);
  std::fill(items_left, items_left + groups, 0);
  std::fill(ready, ready + groups, kGroupRunning);
  std::fill(groups_left, groups_left + down_tiles, static_cast<int32_t>(groups));
  for (const Item& it : items_) ++items_left[it.group];
  gate_up_queue_.reset(gate_up_items);
  down_queue_.reset(groups * down_tiles);

  constexpr size_t scratch_floats = 2 * kTokenBlock * kRowTile;
  pool_.parallel_for(pool_.size(), [&](int64_t, int64_t, int worker) {
    try {
      float* g = pool_.scratch(worker, 0, scratch_floats);
      float* u = g + scratch_floats / 2;
      const int own = worker % gate_up_queue_.parts();
      int victim = own;
      // A thread's finished items of one group are counted off together when it moves on to another
      // group (or to the down items): one atomic per run of items instead of one per item, which on
      // a decode step (1 token, ~400 small items) cost more than 5 % of the layer in cache-line moves.
      int64_t run_group = -1;
      int32_t run_items = 0;
      const auto count_off_items = [&] {
        if (run_items == 0) return;
        if (std::atomic_ref(items_left[run_group]).fetch_sub(run_items, std::memory_order_acq_rel) == run_items) {
          const Group& group = groups_[static_cast<size_t>(run_group)];
          if (hidden_q)
            kernels::quantize_rows(table_, down_format, hidden, inter, inter, group.row0, group.row0 + group.rows, hidden_q);
          set_group(ready[run_group], kGroupReady);
        }
        run_items = 0;
      };
      for (int64_t i = gate_up_queue_.take(own, victim); i >= 0; i = gate_up_queue_.take(own, victim)) {
        const Item& it = items_[static_cast<size_t>(i)];
        if (it.group != run_group) {
          count_off_items();
          run_group = it.group;
        }
        gate_up_item(it, x, hidden, inter, g, u, worker);
        ++run_items;
      }
      count_off_items();
      // Down items go output tile by output tile (item j: tile j / groups, group j % groups), so a
      // thread's consecutive items share a tile and count themselves off it together, as above.
      int64_t run_tile = -1;
      int32_t run_groups_done = 0;
      const auto count_off_tile = [&] {
        const int64_t tile = run_tile;
        const int32_t done = run_groups_done;
        run_groups_done = 0;
        if (!combine.weights || done == 0 ||
            std::atomic_ref(groups_left[tile]).fetch_sub(done, std::memory_order_acq_rel) != done)
          return;
        const int64_t o0 = tile * kDownRows, o1 = std::min(out_features, o0 + kDownRows);
        for (int64_t t = 0; t < combine.tokens; ++t) {
          float* o = out + t * out_features;
          std::fill(o + o0, o + o1, 0.0f);
          for (int64_t s = 0; s < combine.top_k; ++s) {
            if (combine.position[t * combine.top_k + s] < 0) continue;  // a pair computed elsewhere
            const float w = combine.weights[t * combine.top_k + s];
            const float* y = down_tile_rows +
                             (tile * total_rows + static_cast<int64_t>(combine.position[t * combine.top_k + s])) * kDownRows - o0;
            for (int64_t k = o0; k < o1; ++k) o[k] += w * y[k];
          }
        }
      };
      victim = own;
      for (int64_t j = down_queue_.take(own, victim); j >= 0; j = down_queue_.take(own, victim)) {
        const int64_t tile = j / groups, gi = j % groups;
        if (tile != run_tile) {
          count_off_tile();
          run_tile = tile;
        }
        if (!wait_for_group(ready[gi])) return;
        const Group& group = groups_[static_cast<size_t>(gi)];
        const int64_t o0 = tile * kDownRows, o1 = std::min(out_features, o0 + kDownRows);
        for (int64_t r = group.row0; r < group.row0 + group.rows; r += kTokenBlock) {  // the blocks of run_groups
          const int64_t rows = std::min(kTokenBlock, group.row0 + group.rows - r);
          void* workspace = rows >= kernels::kTileMinTokens ? tile_workspace(worker, *group.down) : nullptr;
          float* y = down_tile_rows ? down_tile_rows + (tile * total_rows + r) * kDownRows : out + r * out_features + o0;
          kernels::matmul_tile(table_, *group.down, kind_of(*group.down), {h.data + r * h.stride, h.stride}, rows, o0,
                               o1, nullptr, y, down_tile_rows ? kDownRows : out_features, workspace, group.down_strips, group.down_int8);
        }
        ++run_groups_done;
      }
      count_off_tile();
    } catch (...) {
      for (int64_t gi = 0; gi < groups; ++gi) set_group(ready[gi], kGroupAbandoned);  // release every waiter
      throw;
    }
  });
}

bool FastCpuOps::silu_glu_mlp(const LinearWeight& gate, const LinearWeight& up, const LinearWeight& down,
                              const float* x, int64_t tokens, float* out) {
  if (!supports_ffn(gate, up, down)) return false;
  std::lock_guard lock(mutex_);
  groups_.assign(1, group_of(gate, up, down, 0, tokens));
  const ActRows xa = quantize(kernels::act_format(kind_of(gate)), x, tokens, gate.in_features(), act_);
  if (tokens <= single_dispatch_rows_ && pool_.size() > 1)
    run_groups_fused(xa, tokens, Combine{tokens, 1, nullptr, nullptr}, out);
  else
    run_groups(xa, tokens, out);
  return true;
}

bool FastCpuOps::moe_routed_experts(const ExpertWeights& experts, const float* x, int64_t tokens,
                                    int64_t hidden, const int32_t* expert_ids, const float* weights,
                                    int64_t top_k, float* out) {
  const auto count = static_cast<int64_t>(experts.count());
  const int64_t pairs = tokens * top_k;
  int64_t routed = 0;  // pairs with an expert (a negative id adds nothing: the expert cache's split)
  for (int64_t r = 0; r < pairs; ++r) {
    if (expert_ids[r] >= count) throw Error(ErrorKind::internal, "expert id out of range");
    routed += expert_ids[r] >= 0;
  }
  std::lock_guard lock(mutex_);
  // Counting sort of (token, slot) rows by expert; position_ maps a row back to its sorted place.
  int64_t* begin = grown(expert_begin_, count + 1);
  std::fill(begin, begin + count + 1, 0);
  for (int64_t r = 0; r < pairs; ++r)
    if (expert_ids[r] >= 0) ++begin[expert_ids[r] + 1];
  for (int64_t e = 0; e < count; ++e) begin[e + 1] += begin[e];
  int32_t* order = grown(order_, std::max<int64_t>(routed, 1));
  int32_t* position = grown(position_, pairs);
  groups_.clear();
  for (int64_t e = 0; e < count; ++e) {
    const int64_t n = begin[e + 1] - begin[e];
    if (n == 0) continue;
    const auto i = static_cast<size_t>(e);
    if (!supports_ffn(experts.gate[i], experts.up[i], experts.down[i]) ||
        experts.down[i].out_features() != hidden)
      return false;
    groups_.push_back(group_of(experts.gate[i], experts.up[i], experts.down[i], begin[e], n));
    // One activation format and intermediate width for all: the phases quantise once.
    const Group& first = groups_.front();
    if (experts.gate[i].out_features() != first.gate->out_features() ||
        kernels::act_format(kind_of(experts.gate[i])) != kernels::act_format(kind_of(*first.gate)) ||
        kernels::act_format(kind_of(experts.down[i])) != kernels::act_format(kind_of(*first.down)))
      return false;
  }
  if (groups_.empty()) {
    if (routed > 0) return false;
    std::fill(out, out + tokens * hidden, 0.0f);  // every pair went elsewhere
    return true;
  }
  {
    // Place rows: walk in order, filling each expert's range (begin[] is restored afterwards).
    for (int64_t r = 0; r < pairs; ++r) {
      if (expert_ids[r] < 0) {
        position[r] = -1;
        continue;
      }
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
  const auto gather = [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i)
      std::memcpy(gathered + i * tok.stride, tok.data + (order[i] / top_k) * tok.stride,
                  static_cast<size_t>(tok.stride));
  };
  if (routed * tok.stride >= kParallelGatherBytes && pool_.size() > 1)
    pool_.parallel_for(routed, gather);
  else
    gather(0, routed, 0);

  if (routed <= single_dispatch_rows_ && pool_.size() > 1) {
    run_groups_fused({gathered, tok.stride}, routed, Combine{tokens, top_k, weights, position}, out);
    return true;
  }
  float* down_out = grown(down_out_, routed * hidden);
  run_groups({gathered, tok.stride}, routed, down_out);

  pool_.parallel_for(tokens, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      float* o = out + t * hidden;
      std::fill(o, o + hidden, 0.0f);
      for (int64_t s = 0; s < top_k; ++s) {
        if (position[t * top_k + s] < 0) continue;
        const float w = weights[t * top_k + s];
        const float* y = down_out + static_cast<int64_t>(position[t * top_k + s]) * hidden;
        for (int64_t i = 0; i < hidden; ++i) o[i] += w * y[i];
      }
    }
  });
  return true;
}

}  // namespace tandem
