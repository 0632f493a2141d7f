#include "tandem/kv/kv_pool.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>

#include "tandem/error.hpp"
#include "tandem/kv/kv_quant.hpp"

namespace tandem {

KvPool::KvPool(const KvPoolSpec& spec) : spec_(spec) {
  if (spec.layers <= 0 || spec.values_per_token <= 0 || spec.block_tokens <= 0 || spec.blocks <= 0)
    throw Error(
        ErrorKind::invalid_argument,
        fmt::format(
            "KV pool: sizes must be positive (layers {}, values per token {}, block tokens {}, blocks {})",
            spec.layers, spec.values_per_token, spec.block_tokens, spec.blocks));
  if (spec.layout == KvLayout::gqa && spec.values_per_token % 2 != 0)
    throw Error(ErrorKind::invalid_argument,
                fmt::format("KV pool: a GQA token holds K and V of equal width, got {} values per token",
                            spec.values_per_token));
  if (spec.device.kind != DeviceKind::cpu)
    throw Error(ErrorKind::unsupported,
                "KV pool: only cpu pools exist in this build, asked for " + spec.device.to_string());
  if (spec.blocks > std::numeric_limits<int32_t>::max())
    throw Error(ErrorKind::out_of_range,
                fmt::format("KV pool: {} blocks is more than block ids can address", spec.blocks));
  if (spec.block_tokens > (int64_t{1} << 16) || spec.values_per_token > (int64_t{1} << 24))
    throw Error(ErrorKind::out_of_range,
                fmt::format("KV pool: {} tokens per block or {} values per token is beyond what a pool holds",
                            spec.block_tokens, spec.values_per_token));
  planes_ = spec.layout == KvLayout::gqa ? 2 : 1;
  row_width_ = spec.values_per_token / planes_;
  channel_keys_ = spec.layout == KvLayout::gqa && kv_type_is_int4(spec.dtype);
  if (spec.rope_values < 0 || spec.rope_values >= row_width_ || (spec.rope_values > 0 && spec.layout != KvLayout::mla_latent))
    throw Error(ErrorKind::invalid_argument,
                fmt::format("KV pool: {} rope values do not fit an MLA row of {}", spec.rope_values, row_width_));
  quantised_width_ = kv_type_is_quantised(spec.dtype) ? row_width_ - spec.rope_values : row_width_;
  row_bytes_ = kv_row_bytes(spec.dtype, quantised_width_) + 2 * static_cast<size_t>(row_width_ - quantised_width_);
  for (int64_t p = 0; p < planes_; ++p) {
    plane_bytes_[p] = per_channel_plane(p) ? kv_channel_block_bytes(row_width_, spec.block_tokens)
                                           : static_cast<size_t>(spec.block_tokens) * row_bytes_;
    block_layer_bytes_ += plane_bytes_[p];
  }
  if (!spec.device_layers.empty() && static_cast<int64_t>(spec.device_layers.size()) != spec.layers)
    throw Error(ErrorKind::invalid_argument, fmt::format("KV pool: device_layers names {} layers of {}",
                                                         spec.device_layers.size(), spec.layers));
  for (int64_t layer = 0; layer < spec.layers; ++layer) {
    const bool device = !spec.device_layers.empty() && spec.device_layers[static_cast<size_t>(layer)];
    host_index_.push_back(device ? -1 : host_layers_++);
  }
  const double total = static_cast<double>(host_layers_) * static_cast<double>(spec.blocks) *
                       static_cast<double>(block_layer_bytes_);
  if (total > static_cast<double>(std::numeric_limits<int64_t>::max() / 2))
    throw Error(ErrorKind::out_of_memory, "KV pool: requested size overflows");
  bytes_ = static_cast<uint64_t>(total);
  try {
    // Value-initialised: a fresh pool reads as zeros, as the float32 pool did.
    storage_ = std::make_unique<std::byte[]>(static_cast<size_t>(bytes_));
  } catch (const std::bad_alloc&) {
    throw Error(ErrorKind::out_of_memory, fmt::format("KV pool: cannot allocate {} bytes", bytes_));
  }
  if (channel_keys_) {
    open_capacity_ = static_cast<size_t>(std::min<int64_t>(spec.blocks + kSpareOpenSlots, std::numeric_limits<int32_t>::max()));
    open_slots_ = std::make_unique<std::unique_ptr<OpenRows>[]>(open_capacity_);
  }
  refs_.assign(static_cast<size_t>(spec.blocks), 0);
  free_ids_.reserve(static_cast<size_t>(spec.blocks));
  for (int64_t b = spec.blocks - 1; b >= 0; --b) free_ids_.push_back(static_cast<int32_t>(b));
}

void KvPool::no_host_planes(int64_t layer) {
  throw Error(
      ErrorKind::internal,
      fmt::format("KV pool: layer {} lives on a device backend; the pool holds no host rows for it", layer));
}

int64_t KvPool::free_blocks() const {
  std::lock_guard lock(mutex_);
  return static_cast<int64_t>(free_ids_.size());
}

void KvPool::check_in_use(int32_t id, const char* what) const {
  if (id < 0 || id >= spec_.blocks || refs_[static_cast<size_t>(id)] <= 0)
    throw Error(ErrorKind::internal, fmt::format("KV pool: block {} {} but not in use", id, what));
}

int32_t KvPool::allocate_block() {
  std::lock_guard lock(mutex_);
  if (free_ids_.empty())
    throw Error(ErrorKind::out_of_memory,
                fmt::format("KV pool exhausted: all {} blocks of {} tokens are in use", spec_.blocks,
                            spec_.block_tokens));
  const int32_t id = free_ids_.back();
  free_ids_.pop_back();
  refs_[static_cast<size_t>(id)] = 1;
  return id;
}

void KvPool::retain_block(int32_t id) {
  std::lock_guard lock(mutex_);
  check_in_use(id, "retained");
  ++refs_[static_cast<size_t>(id)];
}

void KvPool::release_block(int32_t id) {
  std::lock_guard lock(mutex_);
  check_in_use(id, "released");
  if (--refs_[static_cast<size_t>(id)] == 0) free_ids_.push_back(id);
}

int32_t KvPool::ref_count(int32_t id) const {
  std::lock_guard lock(mutex_);
  if (id < 0 || id >= spec_.blocks) return 0;
  return refs_[static_cast<size_t>(id)];
}

int32_t KvPool::copy_block(int32_t id) {
  {
    std::lock_guard lock(mutex_);
    check_in_use(id, "copied");
  }
  const int32_t fresh = allocate_block();
  // One layer's planes of one block are contiguous. Device layers: the listeners copy them.
  for (int64_t layer = 0; layer < spec_.layers; ++layer)
    if (on_host(layer))
      std::memcpy(plane_data(fresh, layer, 0), plane_data(id, layer, 0), block_layer_bytes_);
  std::vector<std::shared_ptr<BlockCopyListener>> listeners;
  {
    std::lock_guard lock(mutex_);
    for (const auto& weak : copy_listeners_)
      if (auto listener = weak.lock()) listeners.push_back(std::move(listener));
  }
  try {
    for (const auto& listener : listeners) (*listener)(id, fresh);
  } catch (...) {
    release_block(fresh);
    throw;
  }
  return fresh;
}

void KvPool::add_block_copy_listener(std::weak_ptr<BlockCopyListener> listener) {
  std::lock_guard lock(mutex_);
  std::erase_if(copy_listeners_, [](const auto& weak) { return weak.expired(); });
  copy_listeners_.push_back(std::move(listener));
}

void KvPool::add_block_transfer(std::weak_ptr<BlockTransfer> transfer) {
  std::lock_guard lock(mutex_);
  std::erase_if(transfers_, [](const auto& weak) { return weak.expired(); });
  transfers_.push_back(std::move(transfer));
}

std::vector<std::shared_ptr<KvPool::BlockTransfer>> KvPool::live_transfers() const {
  std::vector<std::shared_ptr<BlockTransfer>> live;
  {
    std::lock_guard lock(mutex_);
    for (const auto& weak : transfers_)
      if (auto transfer = weak.lock()) live.push_back(std::move(transfer));
  }
  for (int64_t layer = 0; layer < spec_.layers; ++layer)
    if (!on_host(layer) &&
        std::none_of(live.begin(), live.end(), [&](const auto& t) { return t->holds_layer(layer); }))
      throw Error(
          ErrorKind::internal,
          fmt::format("KV pool: no backend holds device layer {}, so its blocks cannot move to host memory",
                      layer));
  return live;
}

void KvPool::check_block(int32_t block, const char* what) const {
  std::lock_guard lock(mutex_);
  check_in_use(block, what);
}

void KvPool::export_block(int32_t block, std::byte* host) const {
  check_block(block, "exported");
  const auto transfers =
      has_device_layers() ? live_transfers() : std::vector<std::shared_ptr<BlockTransfer>>{};
  for (int64_t layer = 0; layer < spec_.layers; ++layer)
    if (on_host(layer))
      std::memcpy(host + static_cast<size_t>(layer) * block_layer_bytes_, plane_data(block, layer, 0),
                  block_layer_bytes_);
  for (const auto& transfer : transfers) transfer->to_host(block, host);
}

void KvPool::import_block(int32_t block, const std::byte* host) {
  import_blocks(std::span<const int32_t>(&block, 1), std::span<const std::byte* const>(&host, 1));
}

void KvPool::import_blocks(std::span<const int32_t> blocks, std::span<const std::byte* const> hosts,
                           HostCopies copies) {
  if (blocks.size() != hosts.size())
    throw Error(ErrorKind::internal, fmt::format("KV pool: {} blocks to import from {} host copies", blocks.size(),
                                                 hosts.size()));
  for (const int32_t block : blocks) check_block(block, "imported");
  for (size_t i = 0; i < blocks.size(); ++i)
    for (int64_t layer = 0; layer < spec_.layers; ++layer)
      if (on_host(layer))
        std::memcpy(plane_data(blocks[i], layer, 0), hosts[i] + static_cast<size_t>(layer) * block_layer_bytes_,
                    block_layer_bytes_);
  if (!has_device_layers() || blocks.empty()) return;
  for (const auto& transfer : live_transfers()) transfer->from_host_many(blocks, hosts, copies);
}

void KvPool::settle_imports() {
  if (!has_device_layers()) return;
  for (const auto& transfer : live_transfers()) transfer->settle();
}

void KvPool::seal_block(int32_t block, int64_t layer, int64_t plane, const float* rows, int64_t tokens) {
  kv_channel_encode_block(rows, tokens, row_width_, spec_.block_tokens, plane_data(block, layer, plane));
}

const float* KvPool::values(int32_t block, int64_t layer, int64_t plane, int64_t slot, int64_t first, int64_t n,
                            float* scratch) const {
  if (per_channel_plane(plane)) {
    kv_channel_decode_values(plane_data(block, layer, plane), row_width_, spec_.block_tokens, slot, first, n,
                             scratch);
    return scratch;
  }
  const std::byte* r = row(block, layer, plane, slot);
  if (spec_.dtype == KvType::f32) return reinterpret_cast<const float*>(r) + first;
  const int64_t q = quantised_width_;
  if (first < q) kv_decode_values(spec_.dtype, r, q, first, std::min(n, q - first), scratch);
  if (first + n > q) {
    const int64_t tail = std::max(first, q);
    kv_decode_row(KvType::f16, r + kv_row_bytes(spec_.dtype, q) + 2 * static_cast<size_t>(tail - q),
                  scratch + (tail - first), first + n - tail);
  }
  return scratch;
}

void KvPool::write_row(int32_t block, int64_t layer, int64_t plane, int64_t slot, const float* values) {
  std::byte* r = row(block, layer, plane, slot);
  kv_encode_row(spec_.dtype, values, r, quantised_width_);
  if (quantised_width_ < row_width_)
    kv_encode_row(KvType::f16, values + quantised_width_, r + kv_row_bytes(spec_.dtype, quantised_width_),
                  row_width_ - quantised_width_);
}

size_t KvPool::checked_open(int32_t open) const {
  const auto i = static_cast<size_t>(open);
  if (open < 0 || i >= open_capacity_ || !open_slots_[i] || !open_slots_[i]->in_use.load(std::memory_order_relaxed))
    throw Error(ErrorKind::internal, fmt::format("KV pool: open-rows slot {} is not in use", open));
  return i;
}

int32_t KvPool::acquire_open_rows() {
  if (!channel_keys_)
    throw Error(ErrorKind::internal, "KV pool: open-rows slots are for per-channel (int4 GQA) key planes");
  std::lock_guard lock(mutex_);
  int32_t id;
  if (!free_open_slots_.empty()) {
    id = free_open_slots_.back();
    free_open_slots_.pop_back();
  } else {
    if (open_made_ >= open_capacity_)
      throw Error(ErrorKind::out_of_memory,
                  fmt::format("KV pool: all {} open-rows slots of this int4 cache are held (one per sequence)",
                              open_capacity_));
    auto slot = std::make_unique<OpenRows>();
    try {
      slot->open_block.assign(static_cast<size_t>(spec_.layers), 0);
      slot->rows.assign(static_cast<size_t>(spec_.layers * spec_.block_tokens * row_width_), 0.0f);
    } catch (const std::bad_alloc&) {
      throw Error(ErrorKind::out_of_memory, "KV pool: cannot allocate a sequence's open key rows");
    }
    id = static_cast<int32_t>(open_made_);
    open_slots_[open_made_++] = std::move(slot);
  }
  OpenRows& slot = *open_slots_[static_cast<size_t>(id)];
  std::fill(slot.open_block.begin(), slot.open_block.end(), 0);
  std::fill(slot.rows.begin(), slot.rows.end(), 0.0f);
  slot.in_use.store(true, std::memory_order_relaxed);
  return id;
}

void KvPool::release_open_rows(int32_t open) {
  checked_open(open);
  std::lock_guard lock(mutex_);
  open_slots_[static_cast<size_t>(open)]->in_use.store(false, std::memory_order_relaxed);
  free_open_slots_.push_back(open);
}

int32_t KvPool::copy_open_rows(int32_t open) {
  const OpenRows& from = open_rows_at(open);
  const int32_t id = acquire_open_rows();
  OpenRows& to = open_rows_at(id);
  to.open_block = from.open_block;
  to.rows = from.rows;
  return id;
}

void KvPool::unseal(const int32_t* blocks, int32_t open, int64_t layer, int64_t index) {
  float* rows = open_rows(open, layer);
  for (int64_t s = 0; s < spec_.block_tokens; ++s) read_row(blocks[index], layer, 0, s, rows + s * row_width_);
  open_block(open, layer) = index;
}

void KvPool::write_position(const int32_t* blocks, int32_t open, int64_t layer, int64_t plane, int64_t position,
                            const float* values) {
  const int64_t bt = spec_.block_tokens;
  const int64_t index = position / bt, slot = position % bt;
  if (!per_channel_plane(plane)) {
    write_row(blocks[index], layer, plane, slot, values);
    return;
  }
  if (index < open_block(open, layer)) unseal(blocks, open, layer, index);  // rewriting a sealed block
  open_block(open, layer) = index;
  float* rows = open_rows(open, layer);
  std::copy_n(values, row_width_, rows + slot * row_width_);
  if (slot == bt - 1) {
    seal_block(blocks[index], layer, plane, rows, bt);
    open_block(open, layer) = index + 1;
  }
}

const float* KvPool::values_at(const int32_t* blocks, int32_t open, int64_t layer, int64_t plane, int64_t position,
                               int64_t first, int64_t n, float* scratch) const {
  const int64_t bt = spec_.block_tokens;
  const int64_t index = position / bt;
  if (per_channel_plane(plane) && index >= open_block(open, layer))
    return open_rows(open, layer) + (position % bt) * row_width_ + first;
  return values(blocks[index], layer, plane, position % bt, first, n, scratch);
}

void BlockTable::reserve(KvPool& pool, int64_t tokens) {
  const int64_t bt = pool.spec().block_tokens;
  ensure_open_rows(pool);
  const size_t needed = static_cast<size_t>((tokens + bt - 1) / bt);
  const size_t had = blocks_.size();
  try {
    while (blocks_.size() < needed) blocks_.push_back(pool.allocate_block());
  } catch (...) {
    while (blocks_.size() > had) {
      pool.release_block(blocks_.back());
      blocks_.pop_back();
    }
    throw;
  }
}

void BlockTable::release(KvPool& pool) {
  truncate(pool, 0);
  if (open_ != KvPool::kNoOpenRows) pool.release_open_rows(std::exchange(open_, KvPool::kNoOpenRows));
}

void BlockTable::adopt(KvPool& pool, int32_t block) {
  ensure_open_rows(pool);
  blocks_.push_back(block);
  if (open_ != KvPool::kNoOpenRows)
    for (int64_t layer = 0; layer < pool.spec().layers; ++layer)
      pool.open_block(open_, layer) = static_cast<int64_t>(blocks_.size());
}

void BlockTable::truncate(KvPool& pool, int64_t tokens) {
  const int64_t bt = pool.spec().block_tokens;
  const size_t keep = static_cast<size_t>((std::max<int64_t>(tokens, 0) + bt - 1) / bt);
  while (blocks_.size() > keep) {
    pool.release_block(blocks_.back());
    blocks_.pop_back();
  }
  reopen(pool, std::max<int64_t>(tokens, 0));
}

void BlockTable::reopen(KvPool& pool, int64_t tokens) {
  if (open_ == KvPool::kNoOpenRows) return;
  const int64_t bt = pool.spec().block_tokens;
  for (int64_t layer = 0; layer < pool.spec().layers; ++layer) {
    if (!pool.on_host(layer)) continue;
    int64_t& open = pool.open_block(open_, layer);
    if (tokens % bt == 0)
      open = std::min(open, tokens / bt);
    else if (open > tokens / bt)
      pool.unseal(blocks_.data(), open_, layer, tokens / bt);
  }
}

void BlockTable::compact(KvPool& pool, std::span<const int64_t> kept) {
  const auto n = static_cast<int64_t>(kept.size());
  int64_t first_moved = n;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t from = kept[static_cast<size_t>(i)];
    if (from < i || (i > 0 && from <= kept[static_cast<size_t>(i - 1)]) || from >= capacity_tokens(pool))
      throw Error(ErrorKind::internal, fmt::format("KV compact: slot {} cannot move to {}", from, i));
    if (from != i && first_moved == n) first_moved = i;
  }
  if (first_moved < n) {
    make_writable(pool, first_moved, n);
    const int64_t bt = pool.spec().block_tokens, width = pool.row_width();
    std::vector<float> moved;
    for (int64_t layer = 0; layer < pool.spec().layers; ++layer)
      for (int64_t plane = 0; plane < pool.planes() && pool.on_host(layer); ++plane) {
        if (!pool.per_channel_plane(plane)) {
          for (int64_t i = first_moved; i < n; ++i) {
            const int64_t from = kept[static_cast<size_t>(i)];
            if (from == i) continue;
            std::memcpy(pool.row(block_of(pool, i), layer, plane, i % bt),
                        pool.row(block_of(pool, from), layer, plane, from % bt), pool.row_bytes());
          }
          continue;
        }
        // Per-channel keys: every row from the first changed block on is read before any is
        // written, then written again in order (the blocks are sealed anew as they fill).
        const int64_t start = first_moved / bt * bt;
        moved.resize(static_cast<size_t>((n - start) * width));
        for (int64_t i = start; i < n; ++i)
          read_row(pool, layer, plane, kept[static_cast<size_t>(i)], moved.data() + (i - start) * width);
        pool.open_block(open_, layer) = start / bt;
        for (int64_t i = start; i < n; ++i) write_row(pool, layer, plane, i, moved.data() + (i - start) * width);
      }
  }
  truncate(pool, n);
}

BlockTable BlockTable::share_prefix(KvPool& pool, int64_t tokens) const {
  if (tokens < 0 || tokens > capacity_tokens(pool))
    throw Error(ErrorKind::out_of_range, fmt::format("KV: cannot share {} positions of a table holding {}",
                                                     tokens, capacity_tokens(pool)));
  const int64_t bt = pool.spec().block_tokens;
  BlockTable shared;
  const size_t n = static_cast<size_t>((tokens + bt - 1) / bt);
  shared.blocks_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    pool.retain_block(blocks_[i]);
    shared.blocks_.push_back(blocks_[i]);
  }
  if (open_ != KvPool::kNoOpenRows) shared.open_ = pool.copy_open_rows(open_);
  shared.reopen(pool, tokens);
  return shared;
}

void BlockTable::make_writable(KvPool& pool, int64_t begin, int64_t end) {
  if (end <= begin) return;
  const int64_t bt = pool.spec().block_tokens;
  const size_t first = static_cast<size_t>(begin / bt);
  const size_t last = std::min(blocks_.size(), static_cast<size_t>((end + bt - 1) / bt));
  for (size_t i = first; i < last; ++i) {
    const int32_t id = blocks_[i];
    if (pool.ref_count(id) <= 1) continue;
    const int32_t copy = pool.copy_block(id);  // throws before anything changes
    pool.release_block(id);
    blocks_[i] = copy;
  }
}

}  // namespace tandem
