// KV blocks of a pool whose layers live on a device, moved to host memory and back: a fake device
// (a test object holding some layers' bytes, registered as the pool's block transfer, as the CUDA
// backend is) stands in for a GPU. Export and import are bit-exact; the host tier keeps blocks
// least recently used first out; the prefix cache frees idle blocks into it and adopts them back
// bit-exactly; a tier of 0 blocks is no tier; the disk tier reads and writes device layers through
// the transfer, and its records are the ones a pool without device layers writes.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "tandem/backend/backend.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_disk_tier.hpp"
#include "tandem/kv/kv_host_tier.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/kv/prefix_cache.hpp"

using namespace tandem;
namespace fs = std::filesystem;

namespace {

// Layers 1 and 3 of 4 on the "device".
KvPoolSpec device_spec(int64_t blocks = 6) {
  KvPoolSpec spec;
  spec.layers = 4;
  spec.values_per_token = 16;
  spec.block_tokens = 4;
  spec.blocks = blocks;
  spec.dtype = KvType::f16;
  spec.device_layers = {false, true, false, true};
  return spec;
}

// A device backend's memory for some layers of a pool: [blocks][block_layer_bytes] per layer.
class FakeDeviceLayers final : public KvPool::BlockTransfer {
 public:
  explicit FakeDeviceLayers(const KvPool& pool) : layer_bytes_(pool.block_layer_bytes()) {
    for (int64_t layer = 0; layer < pool.spec().layers; ++layer)
      if (!pool.on_host(layer))
        layers_[layer].assign(layer_bytes_ * static_cast<size_t>(pool.spec().blocks), std::byte{0});
  }
  std::byte* data(int32_t block, int64_t layer) {
    return layers_.at(layer).data() + static_cast<size_t>(block) * layer_bytes_;
  }

  bool holds_layer(int64_t layer) const override { return layers_.count(layer) != 0; }
  void to_host(int32_t block, std::byte* host) override {
    for (auto& [layer, bytes] : layers_)
      std::memcpy(host + static_cast<size_t>(layer) * layer_bytes_, data(block, layer), layer_bytes_);
  }
  void from_host(int32_t block, const std::byte* host) override {
    for (auto& [layer, bytes] : layers_)
      std::memcpy(data(block, layer), host + static_cast<size_t>(layer) * layer_bytes_, layer_bytes_);
  }

 private:
  size_t layer_bytes_;
  std::map<int64_t, std::vector<std::byte>> layers_;
};

// Where layer `layer` of `block` lives: the pool's host planes or the fake device.
std::byte* layer_data(KvPool& pool, FakeDeviceLayers* device, int32_t block, int64_t layer) {
  return pool.on_host(layer) ? pool.plane_data(block, layer, 0) : device->data(block, layer);
}

void fill(KvPool& pool, FakeDeviceLayers* device, int32_t block, uint32_t seed) {
  std::mt19937 rng(seed);
  for (int64_t layer = 0; layer < pool.spec().layers; ++layer) {
    std::byte* p = layer_data(pool, device, block, layer);
    for (size_t i = 0; i < pool.block_layer_bytes(); ++i) p[i] = static_cast<std::byte>(rng());
  }
}

// The block's bytes read where they live (not through export_block), layer after layer.
std::vector<std::byte> bytes_of(KvPool& pool, FakeDeviceLayers* device, int32_t block) {
  std::vector<std::byte> out;
  for (int64_t layer = 0; layer < pool.spec().layers; ++layer) {
    const std::byte* p = layer_data(pool, device, block, layer);
    out.insert(out.end(), p, p + pool.block_layer_bytes());
  }
  return out;
}

// A pool with its device layers on a registered fake device.
struct DevicePool {
  KvPool pool;
  std::shared_ptr<FakeDeviceLayers> device;
  explicit DevicePool(const KvPoolSpec& spec) : pool(spec), device(std::make_shared<FakeDeviceLayers>(pool)) {
    pool.add_block_transfer(device);
  }
  void fill(int32_t block, uint32_t seed) { ::fill(pool, device.get(), block, seed); }
  std::vector<std::byte> bytes(int32_t block) { return bytes_of(pool, device.get(), block); }
  // Takes free blocks for `tokens`, overwrites them (device layers included) and gives them back:
  // whatever a later adoption reads must come from a tier, not from bytes left in the pool.
  void scribble(int64_t tokens, uint32_t seed) {
    BlockTable t;
    t.reserve(pool, tokens);
    for (const int32_t b : t.blocks()) fill(b, seed);
    t.release(pool);
  }
};

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / ("tandem-kvhost-" + name + "-" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("KV pool: a block with device layers exports and imports bit-exactly", "[kv][host]") {
  DevicePool d(device_spec());
  KvPool& pool = d.pool;
  CHECK(pool.has_device_layers());
  CHECK(pool.block_bytes() == 4 * pool.block_layer_bytes());
  CHECK(pool.bytes() == 2 * 6 * pool.block_layer_bytes());  // host planes for layers 0 and 2 only
  const int32_t a = pool.allocate_block(), b = pool.allocate_block(), c = pool.allocate_block();
  d.fill(a, 1);
  d.fill(c, 3);
  const auto want_c = d.bytes(c);
  std::vector<std::byte> host(pool.block_bytes());
  pool.export_block(a, host.data());
  CHECK(host == d.bytes(a));
  pool.import_block(b, host.data());
  CHECK(d.bytes(b) == d.bytes(a));
  CHECK(d.bytes(c) == want_c);  // other blocks untouched
  // Layer by layer in the serialised bytes: layer 1 (device) sits at one block_layer_bytes.
  CHECK(std::memcmp(host.data() + pool.block_layer_bytes(), d.device->data(a, 1), pool.block_layer_bytes()) ==
        0);
  CHECK_THROWS_AS(pool.export_block(5, host.data()), Error);  // a free block

  // Without a live transfer for its device layers, the pool refuses instead of inventing bytes.
  d.device.reset();
  try {
    pool.export_block(a, host.data());
    FAIL("exported a block whose device layers no backend holds");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::internal);
    CHECK_THAT(e.what(), Catch::Contains("no backend holds device layer 1"));
  }
}

TEST_CASE("KV pool: import_blocks equals import_block of each, device layers included", "[kv][host]") {
  DevicePool d(device_spec());
  KvPool& pool = d.pool;
  const int32_t a = pool.allocate_block(), b = pool.allocate_block(), c = pool.allocate_block(),
                e = pool.allocate_block(), f = pool.allocate_block();
  d.fill(a, 4);
  d.fill(b, 7);
  d.fill(f, 2);
  const auto want_f = d.bytes(f);
  std::vector<std::byte> host_a(pool.block_bytes()), host_b(pool.block_bytes());
  pool.export_block(a, host_a.data());
  pool.export_block(b, host_b.data());
  const std::vector<int32_t> targets{c, e};
  const std::vector<const std::byte*> sources{host_b.data(), host_a.data()};
  pool.import_blocks(targets, sources);
  CHECK(d.bytes(c) == d.bytes(b));
  CHECK(d.bytes(e) == d.bytes(a));
  CHECK(d.bytes(f) == want_f);
  pool.import_blocks({}, {});  // nothing to do
  CHECK_THROWS_AS(pool.import_blocks(targets, std::vector<const std::byte*>{host_a.data()}), Error);
  const std::vector<int32_t> freed{c, 9};
  CHECK_THROWS_AS(pool.import_blocks(freed, sources), Error);  // block 9 is not in use
}

TEST_CASE("KV pool: without device layers, export is the host planes as they are", "[kv][host]") {
  KvPoolSpec spec = device_spec();
  spec.device_layers.clear();
  KvPool pool(spec);
  CHECK_FALSE(pool.has_device_layers());
  const int32_t a = pool.allocate_block(), b = pool.allocate_block();
  fill(pool, nullptr, a, 9);
  std::vector<std::byte> host(pool.block_bytes());
  pool.export_block(a, host.data());
  CHECK(host == bytes_of(pool, nullptr, a));
  pool.import_block(b, host.data());
  CHECK(bytes_of(pool, nullptr, b) == host);
}

TEST_CASE("KV host tier: blocks round-trip, least recently used dropped first", "[kv][host]") {
  DevicePool d(device_spec());
  KvPool& pool = d.pool;
  const auto cpu = make_cpu_backend(1);
  KvHostTier tier(pool, 2, *cpu);
  const int32_t a = pool.allocate_block(), b = pool.allocate_block(), c = pool.allocate_block();
  d.fill(a, 1);
  d.fill(b, 2);
  d.fill(c, 3);
  const auto want_a = d.bytes(a), want_b = d.bytes(b);
  tier.store(11, a);
  tier.store(12, b);
  tier.store(11, a);  // here already: only marked recent, so 12 is now the least recent
  CHECK(tier.stats().stored == 2);
  const int32_t target = pool.allocate_block();
  tier.store(13, c);  // full: drops 12
  CHECK(tier.contains(11));
  CHECK_FALSE(tier.contains(12));
  CHECK(tier.contains(13));
  CHECK_FALSE(tier.load(12, target));
  REQUIRE(tier.load(11, target));  // 11 is now the most recent
  CHECK(d.bytes(target) == want_a);
  tier.store(14, b);  // drops 13
  CHECK_FALSE(tier.contains(13));
  REQUIRE(tier.load(14, target));
  CHECK(d.bytes(target) == want_b);
  const KvHostStats s = tier.stats();
  CHECK(s.capacity_blocks == 2);
  CHECK(s.capacity_bytes == 2 * pool.block_bytes());
  CHECK(s.blocks == 2);
  CHECK(s.stored == 4);
  CHECK(s.loaded == 2);
  CHECK(s.evicted == 2);
  // `keep` spares blocks however old: 11 is the least recent, 14 goes instead; keeping both, 16
  // is not stored.
  tier.store(15, c, std::vector<uint64_t>{11});
  CHECK(tier.contains(11));
  CHECK_FALSE(tier.contains(14));
  CHECK(tier.contains(15));
  tier.store(16, c, std::vector<uint64_t>{11, 15});
  CHECK_FALSE(tier.contains(16));
  CHECK(tier.stats().stored == 5);
  // A run loads its leading keys that are here and stops at the first that is not.
  const int32_t second = pool.allocate_block();
  d.fill(target, 9);
  d.fill(second, 9);
  const auto untouched = d.bytes(second);
  CHECK(tier.load_run(std::vector<uint64_t>{11, 16, 15}, std::vector<int32_t>{target, second, a}) == 1);
  CHECK(d.bytes(target) == want_a);
  CHECK(d.bytes(second) == untouched);
  CHECK(tier.stats().loaded == 3);
  CHECK(tier.load_run(std::vector<uint64_t>{15, 11}, std::vector<int32_t>{second, target}) == 2);
  CHECK(d.bytes(second) == d.bytes(c));
  CHECK(d.bytes(target) == want_a);
  tier.clear();
  CHECK(tier.stats().blocks == 0);
  CHECK_FALSE(tier.contains(11));
}

TEST_CASE("Prefix cache: a device pool's idle blocks go to the host tier and are adopted back bit-exactly",
          "[kv][host][prefix]") {
  DevicePool d(device_spec(4));
  KvPool& pool = d.pool;
  const auto cpu = make_cpu_backend(1);
  PrefixCache cache(pool, nullptr, std::make_unique<KvHostTier>(pool, 8, *cpu));
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  const auto keys = cache.block_keys(prompt);
  REQUIRE(keys.size() == 3);
  std::vector<std::vector<std::byte>> want;
  {
    BlockTable t;
    t.reserve(pool, 12);
    for (size_t i = 0; i < 3; ++i) {
      d.fill(t.blocks()[i], static_cast<uint32_t>(100 + i));
      want.push_back(d.bytes(t.blocks()[i]));
    }
    cache.insert(keys, t.blocks());
    t.release(pool);
  }
  // The pool needs all its blocks: the cached ones go to the host tier, then are overwritten.
  cache.make_room(4);
  CHECK(cache.cached_blocks() == 0);
  CHECK(cache.host()->stats().blocks == 3);
  d.scribble(16, 7);
  const std::vector<int32_t> adopted = cache.adopt(keys);
  REQUIRE(adopted.size() == 3);
  for (size_t i = 0; i < 3; ++i) CHECK(d.bytes(adopted[i]) == want[i]);
  CHECK(cache.cached_blocks() == 3);
  CHECK(cache.host()->stats().loaded == 3);

  // A run that starts in the pool continues from the host tier: the deepest block alone is freed.
  for (const int32_t b : adopted) pool.release_block(b);
  cache.make_room(2);  // one block: the chain's deepest (least recent) goes
  CHECK(cache.cached_blocks() == 2);
  const std::vector<int32_t> again = cache.adopt(keys);
  REQUIRE(again.size() == 3);
  CHECK(again[0] == adopted[0]);
  CHECK(again[1] == adopted[1]);
  CHECK(d.bytes(again[2]) == want[2]);
  CHECK(cache.host()->stats().loaded == 4);
  for (const int32_t b : again) pool.release_block(b);

  // drop_unreferenced moves every idle block to the host tier; a key never cached adopts nothing.
  cache.drop_unreferenced();
  CHECK(cache.cached_blocks() == 0);
  CHECK(pool.free_blocks() == 4);
  const std::vector<uint64_t> other = cache.block_keys(std::vector<int32_t>{9, 9, 9, 9});
  CHECK(cache.adopt(other).empty());
}

TEST_CASE("Prefix cache: making room for a run from a full host tier does not push that run out",
          "[kv][host][prefix]") {
  DevicePool d(device_spec(4));
  KvPool& pool = d.pool;
  const auto cpu = make_cpu_backend(1);
  PrefixCache cache(pool, nullptr, std::make_unique<KvHostTier>(pool, 4, *cpu));
  const std::vector<int32_t> one = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  const std::vector<int32_t> two = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6};
  const auto keys_one = cache.block_keys(one), keys_two = cache.block_keys(two);
  const auto cache_filled = [&](const std::vector<uint64_t>& keys, uint32_t seed) {
    std::vector<std::vector<std::byte>> bytes;
    BlockTable t;
    t.reserve(pool, static_cast<int64_t>(4 * keys.size()));
    for (size_t i = 0; i < keys.size(); ++i) {
      d.fill(t.blocks()[i], seed + static_cast<uint32_t>(i));
      bytes.push_back(d.bytes(t.blocks()[i]));
    }
    cache.insert(keys, t.blocks());
    t.release(pool);
    return bytes;
  };
  const auto want = cache_filled(keys_one, 200);
  cache.make_room(4);                 // one's 3 blocks to the host tier
  (void)cache_filled(keys_two, 300);  // two takes the whole pool
  // Adopting one frees three of two's blocks into the host tier, which has one free slot: the
  // other two must drop two's blocks, not one's.
  const std::vector<int32_t> adopted = cache.adopt(keys_one);
  REQUIRE(adopted.size() == 3);
  for (size_t i = 0; i < 3; ++i) CHECK(d.bytes(adopted[i]) == want[i]);
  CHECK(cache.host()->stats().evicted == 2);
  for (const int32_t b : adopted) pool.release_block(b);
}

TEST_CASE("Prefix cache: a host tier of 0 blocks is no tier", "[kv][host][prefix]") {
  DevicePool d(device_spec(4));
  KvPool& pool = d.pool;
  const auto cpu = make_cpu_backend(1);
  PrefixCache cache(pool, nullptr, std::make_unique<KvHostTier>(pool, 0, *cpu));
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 6, 7, 8};
  const auto keys = cache.block_keys(prompt);
  {
    BlockTable t;
    t.reserve(pool, 8);
    cache.insert(keys, t.blocks());
    t.release(pool);
  }
  cache.make_room(4);
  CHECK(cache.cached_blocks() == 0);
  const KvHostStats s = cache.host()->stats();
  CHECK(s.capacity_blocks == 0);
  CHECK(s.blocks == 0);
  CHECK(s.stored == 0);
  CHECK(cache.adopt(keys).empty());
  CHECK(pool.free_blocks() == 4);
}

TEST_CASE(
    "KV disk tier: device layers are written and read through the block transfer, same records as a "
    "host pool's",
    "[kv][host][disk]") {
  TempDir dir("disk");
  KvDiskTierOptions o;
  o.dir = dir.path.string();
  o.max_bytes = uint64_t{1} << 30;
  constexpr uint64_t kModel = 0x77;
  KvPoolSpec host_spec = device_spec();
  host_spec.device_layers.clear();
  std::vector<std::byte> want_device, want_host;
  {
    // Written from a device pool and from a host pool of the same shape, into one directory.
    DevicePool d(device_spec());
    KvPool host(host_spec);
    const int32_t a = d.pool.allocate_block(), h = host.allocate_block();
    d.fill(a, 21);
    fill(host, nullptr, h, 22);
    want_device = d.bytes(a);
    want_host = bytes_of(host, nullptr, h);
    KvDiskTier device_tier(o, kModel, d.pool);
    device_tier.store(1, a);
    device_tier.flush();
    KvDiskTier host_tier(o, kModel, host);
    CHECK(host_tier.stats().found_at_start == 1);  // the same tier: the device pool's record counts
    host_tier.store(2, h);
    host_tier.flush();
    CHECK(device_tier.stats().written == 1);
    CHECK(host_tier.stats().written == 1);
  }
  {
    // Each read back into the other kind of pool.
    DevicePool d(device_spec());
    KvPool host(host_spec);
    KvDiskTier device_tier(o, kModel, d.pool);
    CHECK(device_tier.stats().found_at_start == 2);
    const int32_t x = d.pool.allocate_block(), y = d.pool.allocate_block();
    REQUIRE(device_tier.load(std::vector<uint64_t>{1, 2}, std::vector<int32_t>{x, y}) == 2);
    CHECK(d.bytes(x) == want_device);
    CHECK(d.bytes(y) == want_host);
    KvDiskTier host_tier(o, kModel, host);
    const int32_t z = host.allocate_block();
    REQUIRE(host_tier.load(std::vector<uint64_t>{1}, std::vector<int32_t>{z}) == 1);
    CHECK(bytes_of(host, nullptr, z) == want_device);
    CHECK(device_tier.stats().rejected_corrupt == 0);
  }
  {
    // A flipped payload byte (in device layer 1) of a record is caught before the block is used.
    DevicePool d(device_spec());
    KvDiskTier tier(o, kModel, d.pool);
    {
      const long at = static_cast<long>(128 + d.pool.block_layer_bytes() + 5);
      std::FILE* f = std::fopen(tier.path_of(1).c_str(), "r+b");
      REQUIRE(f != nullptr);
      std::fseek(f, at, SEEK_SET);
      const int byte = std::fgetc(f);
      std::fseek(f, at, SEEK_SET);
      std::fputc(byte ^ 0x40, f);
      std::fclose(f);
    }
    const int32_t x = d.pool.allocate_block();
    d.fill(x, 5);
    const auto before = d.bytes(x);
    CHECK(tier.load(std::vector<uint64_t>{1}, std::vector<int32_t>{x}) == 0);
    CHECK(tier.stats().rejected_corrupt == 1);
    CHECK(d.bytes(x) == before);  // nothing imported
  }
}

TEST_CASE("Prefix cache: a device pool without a host tier adopts its freed blocks from disk",
          "[kv][host][disk][prefix]") {
  TempDir dir("prefix");
  KvDiskTierOptions o;
  o.dir = dir.path.string();
  o.max_bytes = uint64_t{1} << 30;
  DevicePool d(device_spec(4));
  KvPool& pool = d.pool;
  PrefixCache cache(pool, std::make_unique<KvDiskTier>(o, 0x99, pool));
  const std::vector<int32_t> prompt = {5, 6, 7, 8, 9, 10, 11, 12};
  const auto keys = cache.block_keys(prompt);
  std::vector<std::vector<std::byte>> want;
  {
    BlockTable t;
    t.reserve(pool, 8);
    for (size_t i = 0; i < 2; ++i) {
      d.fill(t.blocks()[i], static_cast<uint32_t>(40 + i));
      want.push_back(d.bytes(t.blocks()[i]));
    }
    cache.insert(keys, t.blocks());  // written through, from a copy of the device layers
    t.release(pool);
  }
  cache.drop_unreferenced();
  d.scribble(16, 8);
  const std::vector<int32_t> adopted = cache.adopt(keys);
  REQUIRE(adopted.size() == 2);
  for (size_t i = 0; i < 2; ++i) CHECK(d.bytes(adopted[i]) == want[i]);
  CHECK(cache.disk()->stats().loaded == 2);
  for (const int32_t b : adopted) pool.release_block(b);
}
