// The KV disk tier: blocks round-trip through files bit-exactly (io_uring and the preadv/pwritev
// fallback alike); a second tier on the same directory — a later process — finds them; a flipped
// byte, a truncated file, another model identity or another KV type is detected, counted and not
// used; the size limit evicts the least recently used records; bad directories and sizes are
// refused with a clear error; a write the file system refuses (a full disk) leaves the block in
// host memory only, counted, and the tier keeps working.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "support/file_size_limit.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_disk_tier.hpp"
#include "tandem/kv/kv_pool.hpp"

using namespace tandem;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / ("tandem-kvdisk-" + name + "-" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str() const { return path.string(); }
};

KvPoolSpec small_spec(KvType type = KvType::f16) {
  KvPoolSpec spec;
  spec.layers = 3;
  spec.values_per_token = 16;
  spec.block_tokens = 4;
  spec.blocks = 8;
  spec.dtype = type;
  return spec;
}

// Fills every layer's bytes of `block` with a pattern of `seed`.
void fill(KvPool& pool, int32_t block, uint32_t seed) {
  std::mt19937 rng(seed);
  for (int64_t layer = 0; layer < pool.spec().layers; ++layer) {
    std::byte* p = pool.plane_data(block, layer, 0);
    for (size_t i = 0; i < pool.block_layer_bytes(); ++i) p[i] = static_cast<std::byte>(rng());
  }
}

// A new block of `pool` holding the pattern of `seed`.
int32_t filled_block(KvPool& pool, uint32_t seed) {
  const int32_t block = pool.allocate_block();
  fill(pool, block, seed);
  return block;
}

std::vector<std::byte> bytes_of(const KvPool& pool, int32_t block) {
  std::vector<std::byte> out;
  for (int64_t layer = 0; layer < pool.spec().layers; ++layer) {
    const std::byte* p = pool.plane_data(block, layer, 0);
    out.insert(out.end(), p, p + pool.block_layer_bytes());
  }
  return out;
}

KvDiskTierOptions options(const TempDir& dir, uint64_t max_bytes = uint64_t{1} << 30, bool uring = true) {
  KvDiskTierOptions o;
  o.dir = dir.str();
  o.max_bytes = max_bytes;
  o.try_io_uring = uring;
  return o;
}

constexpr uint64_t kModel = 0x1234, kOtherModel = 0x5678;

}  // namespace

TEST_CASE("KV disk tier: blocks round-trip bit-exactly, and a later tier finds them", "[kv][disk]") {
  for (const bool uring : {true, false}) {
    INFO("io_uring asked for: " << uring);
    TempDir dir("roundtrip");
    KvPool pool(small_spec());
    const int32_t a = filled_block(pool, 1), b = filled_block(pool, 2);
    const auto want_a = bytes_of(pool, a), want_b = bytes_of(pool, b);
    {
      KvDiskTier tier(options(dir, uint64_t{1} << 30, uring), kModel, pool);
      const std::string io = tier.stats().io;
      CHECK((io == "io_uring" || io.rfind("preadv/pwritev (io_uring unavailable: ", 0) == 0) == uring);
      if (!uring) CHECK(io == "preadv/pwritev (io_uring not asked for)");
      tier.store(101, a);
      tier.store(102, b);
      tier.store(101, a);  // on disk already: skipped
      tier.flush();
      KvDiskStats s = tier.stats();
      CHECK(s.written == 2);
      CHECK(s.records == 2);
      CHECK(s.bytes == 2 * tier.record_bytes());
      CHECK(tier.record_bytes() == 128 + 3 * pool.block_layer_bytes());
      CHECK(fs::file_size(tier.path_of(101)) == tier.record_bytes());
      const int32_t x = pool.allocate_block(), y = pool.allocate_block();
      const std::vector<uint64_t> keys = {101, 102, 103};
      CHECK(tier.load(keys, std::vector<int32_t>{x, y, pool.allocate_block()}) == 2);  // 103 was never stored
      CHECK(bytes_of(pool, x) == want_a);
      CHECK(bytes_of(pool, y) == want_b);
      CHECK(tier.stats().loaded == 2);
    }
    // A new tier on the same directory (as a new process would make) indexes them at start.
    KvPool pool2(small_spec());
    KvDiskTier again(options(dir, uint64_t{1} << 30, uring), kModel, pool2);
    CHECK(again.stats().found_at_start == 2);
    CHECK(again.contains(101));
    const int32_t z = pool2.allocate_block();
    const std::vector<uint64_t> second = {102};
    REQUIRE(again.load(second, std::vector<int32_t>{z}) == 1);
    CHECK(bytes_of(pool2, z) == want_b);
  }
}

TEST_CASE("KV disk tier: staged reads (a GPU pool's path) run chunk after chunk, check every record, "
          "stop the run at the first bad one", "[kv][disk]") {
  for (const bool uring : {true, false}) {
    INFO("io_uring asked for: " << uring);
    TempDir dir("staged");
    KvPoolSpec spec = small_spec();
    spec.blocks = 16;
    KvPool pool(spec);
    constexpr int kBlocks = 5;
    std::vector<int32_t> stored;
    std::vector<std::vector<std::byte>> want;
    for (int i = 0; i < kBlocks; ++i) {
      stored.push_back(filled_block(pool, 40 + static_cast<uint32_t>(i)));
      want.push_back(bytes_of(pool, stored.back()));
    }
    KvDiskTierOptions o = options(dir, uint64_t{1} << 30, uring);
    o.staged_reads = true;
    o.staging_chunk_bytes = 2 * 4096;  // two records a chunk (each fits a 4 KiB slot): three chunks for five
    KvDiskTier tier(o, kModel, pool);
    REQUIRE(tier.record_bytes() <= 4096);
    std::vector<uint64_t> keys;
    for (int i = 0; i < kBlocks; ++i) {
      keys.push_back(700 + static_cast<uint64_t>(i));
      tier.store(keys.back(), stored[static_cast<size_t>(i)]);
    }
    tier.flush();
    const auto fresh_blocks = [&](size_t n) {
      std::vector<int32_t> out;
      for (size_t i = 0; i < n; ++i) out.push_back(filled_block(pool, 99));  // not the records' bytes
      return out;
    };
    const auto release = [&](const std::vector<int32_t>& blocks) {
      for (const int32_t b : blocks) pool.release_block(b);
    };
    {
      const std::vector<int32_t> into = fresh_blocks(kBlocks);
      REQUIRE(tier.load(keys, into) == kBlocks);
      for (int i = 0; i < kBlocks; ++i) CHECK(bytes_of(pool, into[static_cast<size_t>(i)]) == want[static_cast<size_t>(i)]);
      const KvDiskStats s = tier.stats();
      CHECK(s.loaded == kBlocks);
      const std::string fs_type = KvDiskTier::file_system_type(dir.str());
      INFO("file system " << fs_type);
      if (fs_type == "ext4" || fs_type == "xfs") CHECK(s.read_direct == kBlocks);
      if (fs_type == "tmpfs") CHECK(s.read_direct == 0);
      release(into);
    }
    // A flipped payload byte in the fourth record (second chunk) and the fifth file truncated: the
    // run ends at the fourth, and both are checked, counted and deleted.
    {
      std::fstream f(tier.path_of(keys[3]), std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(tier.record_bytes() - 3));
      const char c = 0x55;
      f.write(&c, 1);
    }
    fs::resize_file(tier.path_of(keys[4]), tier.record_bytes() - 10);
    const KvDiskStats before = tier.stats();
    {
      const std::vector<int32_t> into = fresh_blocks(kBlocks);
      CHECK(tier.load(keys, into) == 3);
      for (int i = 0; i < 3; ++i) CHECK(bytes_of(pool, into[static_cast<size_t>(i)]) == want[static_cast<size_t>(i)]);
      const KvDiskStats s = tier.stats();
      CHECK(s.loaded == before.loaded + 3);
      CHECK(s.rejected_corrupt == before.rejected_corrupt + 1);
      CHECK(s.rejected_truncated == before.rejected_truncated + 1);
      CHECK_FALSE(tier.contains(keys[3]));
      CHECK_FALSE(tier.contains(keys[4]));
      CHECK_FALSE(fs::exists(tier.path_of(keys[3])));
      release(into);
    }
    // A file deleted from under the tier (another process): a miss from there on, nothing after it read.
    fs::remove(tier.path_of(keys[1]));
    {
      const std::vector<int32_t> into = fresh_blocks(3);
      CHECK(tier.load(std::span<const uint64_t>(keys).first(3), into) == 1);
      CHECK(bytes_of(pool, into[0]) == want[0]);
      CHECK_FALSE(tier.contains(keys[1]));
      CHECK(tier.contains(keys[2]));
      release(into);
    }
  }
}

TEST_CASE("KV disk tier: corrupt, truncated and foreign records are detected, counted and not used",
          "[kv][disk]") {
  TempDir dir("bad");
  KvPool pool(small_spec());
  const int32_t a = pool.allocate_block(), target = pool.allocate_block();
  fill(pool, a, 7);
  const std::vector<uint64_t> key = {55};
  const auto store_one = [&](KvDiskTier& tier) {
    tier.store(55, a);
    tier.flush();
    REQUIRE(tier.contains(55));
  };

  SECTION("a flipped payload byte, found at load") {
    KvDiskTier tier(options(dir), kModel, pool);
    store_one(tier);
    {
      std::fstream f(tier.path_of(55), std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(tier.record_bytes() - 5));
      char c = 0;
      f.read(&c, 1);
      f.seekp(static_cast<std::streamoff>(tier.record_bytes() - 5));
      c = static_cast<char>(c ^ 0x10);
      f.write(&c, 1);
    }
    CHECK(tier.load(key, std::vector<int32_t>{target}) == 0);
    CHECK(tier.stats().rejected_corrupt == 1);
    CHECK_FALSE(tier.contains(55));
    CHECK_FALSE(fs::exists(tier.path_of(55)));  // deleted: the next eviction recomputes and rewrites it
  }
  SECTION("a flipped header byte, found by the next process's scan") {
    std::string path;
    {
      KvDiskTier tier(options(dir), kModel, pool);
      store_one(tier);
      path = tier.path_of(55);
    }
    {
      std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(40);
      const char c = 0x7f;
      f.write(&c, 1);
    }
    KvDiskTier later(options(dir), kModel, pool);
    CHECK(later.stats().rejected_corrupt == 1);
    CHECK(later.stats().found_at_start == 0);
    CHECK(later.load(key, std::vector<int32_t>{target}) == 0);
  }
  SECTION("a truncated file, at load and at the next scan") {
    std::string path;
    {
      KvDiskTier tier(options(dir), kModel, pool);
      store_one(tier);
      path = tier.path_of(55);
      fs::resize_file(path, tier.record_bytes() - 1);
      CHECK(tier.load(key, std::vector<int32_t>{target}) == 0);
      CHECK(tier.stats().rejected_truncated == 1);
      store_one(tier);
      fs::resize_file(path, 100);  // not even a header
    }
    KvDiskTier later(options(dir), kModel, pool);
    CHECK(later.stats().rejected_truncated == 1);
    CHECK_FALSE(later.contains(55));
  }
  SECTION("another model's or another KV type's record under this tier's name") {
    const auto plant = [&](uint64_t model, KvType type) {
      TempDir other_dir("other");
      KvPool other_pool(small_spec(type));
      const int32_t ob = other_pool.allocate_block();
      fill(other_pool, ob, 7);
      std::string from;
      {
        KvDiskTier other(options(other_dir), model, other_pool);
        other.store(55, ob);
        other.flush();
        from = other.path_of(55);
      }
      KvDiskTier mine(options(dir), kModel, pool);  // only to learn this tier's file name
      fs::copy_file(from, mine.path_of(55), fs::copy_options::overwrite_existing);
    };
    plant(kOtherModel, KvType::f16);
    {
      KvDiskTier tier(options(dir), kModel, pool);
      CHECK(tier.stats().rejected_foreign == 1);
      CHECK_FALSE(tier.contains(55));
      CHECK(tier.load(key, std::vector<int32_t>{target}) == 0);
    }
    plant(kModel, KvType::bf16);  // same bytes per value, other type
    {
      KvDiskTier tier(options(dir), kModel, pool);
      CHECK(tier.stats().rejected_foreign == 1);
      CHECK_FALSE(tier.contains(55));
    }
    plant(kModel, KvType::int8);  // other type, other length
    KvDiskTier tier(options(dir), kModel, pool);
    CHECK(tier.stats().rejected_foreign == 1);
    CHECK_FALSE(tier.contains(55));
    // This tier's own record is used.
    store_one(tier);
    CHECK(tier.load(key, std::vector<int32_t>{target}) == 1);
    CHECK(bytes_of(pool, target) == bytes_of(pool, a));
  }
}

TEST_CASE(
    "KV disk tier: an int4 record (groups of 32) is never adopted by an int4:64 tier, same length or not",
    "[kv][disk]") {
  // Rows of 96 values: 64 does not divide them, so int4:64 stores int4's bytes; 128: it does.
  for (const int64_t width : {int64_t{96}, int64_t{128}}) {
    INFO("row width " << width);
    const auto spec = [&](KvType type) {
      KvPoolSpec s = small_spec(type);
      s.values_per_token = 2 * width;
      return s;
    };
    KvPool g32(spec(KvType::int4)), g64(spec(KvType::int4_g64));
    CHECK((g32.block_layer_bytes() == g64.block_layer_bytes()) == (width == 96));
    const int32_t a = filled_block(g32, 9);
    const std::vector<uint64_t> key = {77};
    TempDir dir("int4-groups");
    std::string from;
    {
      KvDiskTier tier(options(dir), kModel, g32);
      tier.store(77, a);
      tier.flush();
      from = tier.path_of(77);
    }
    {
      KvDiskTier mine(options(dir), kModel, g64);
      CHECK(mine.path_of(77) != from);  // the file name carries the type: not even opened
      CHECK(mine.stats().found_at_start == 0);
      CHECK(mine.load(key, std::vector<int32_t>{g64.allocate_block()}) == 0);
      fs::copy_file(from, mine.path_of(77));  // the record under the int4:64 tier's name
    }
    KvDiskTier mine(options(dir), kModel, g64);
    CHECK(mine.stats().rejected_foreign == 1);
    CHECK_FALSE(mine.contains(77));
    CHECK(mine.load(key, std::vector<int32_t>{g64.allocate_block()}) == 0);
    // The int4 tier still adopts its own record, bit for bit.
    KvDiskTier own(options(dir), kModel, g32);
    const int32_t back = g32.allocate_block();
    REQUIRE(own.load(key, std::vector<int32_t>{back}) == 1);
    CHECK(bytes_of(g32, back) == bytes_of(g32, a));
  }
}

TEST_CASE("KV disk tier: a write the disk refuses leaves the block host-only, counted; the tier goes on",
          "[kv][disk]") {
  for (const bool uring : {true, false}) {
    INFO("io_uring asked for: " << uring);
    TempDir dir("full");
    KvPool pool(small_spec());
    const int32_t a = filled_block(pool, 5), b = filled_block(pool, 6);
    KvDiskTier tier(options(dir, uint64_t{1} << 30, uring), kModel, pool);
    {
      const test::FileSizeLimit full(tier.record_bytes() / 2);
      tier.store(301, a);
      tier.flush();
    }
    KvDiskStats s = tier.stats();
    CHECK(s.write_failures == 1);
    CHECK(s.written == 0);
    CHECK(s.records == 0);
    CHECK(s.bytes == 0);
    CHECK_FALSE(tier.contains(301));
    CHECK_FALSE(fs::exists(tier.path_of(301)));  // no partial record left to be found later
    const int32_t x = pool.allocate_block();
    CHECK(tier.load(std::vector<uint64_t>{301}, std::vector<int32_t>{x}) == 0);
    // Room again: the next block is written and read back.
    tier.store(302, b);
    tier.flush();
    CHECK(tier.stats().written == 1);
    REQUIRE(tier.load(std::vector<uint64_t>{302}, std::vector<int32_t>{x}) == 1);
    CHECK(bytes_of(pool, x) == bytes_of(pool, b));
  }
}

TEST_CASE("KV disk tier: the size limit evicts the least recently used records", "[kv][disk]") {
  TempDir dir("lru");
  KvPool pool(small_spec());
  const int32_t block = pool.allocate_block(), target = pool.allocate_block();
  fill(pool, block, 3);
  uint64_t record = 0;
  {
    KvDiskTier probe(options(dir), kModel, pool);
    record = probe.record_bytes();
  }
  {
    KvDiskTier tier(options(dir, 3 * record + record / 2), kModel, pool);
    for (uint64_t key = 1; key <= 3; ++key) tier.store(key, block);
    tier.flush();
    const std::vector<uint64_t> one = {1};
    REQUIRE(tier.load(one, std::vector<int32_t>{target}) == 1);  // 1 is now the most recent
    tier.store(4, block);
    tier.flush();
    const KvDiskStats s = tier.stats();
    CHECK(s.records == 3);
    CHECK(s.evicted == 1);
    CHECK(s.bytes <= 3 * record + record / 2);
    CHECK_FALSE(tier.contains(2));
    CHECK_FALSE(fs::exists(tier.path_of(2)));
    CHECK(tier.contains(1));
    CHECK(tier.contains(3));
    CHECK(tier.contains(4));
  }
  // A later process with a smaller budget trims the directory, oldest file first.
  KvDiskTier smaller(options(dir, 2 * record), kModel, pool);
  CHECK(smaller.stats().found_at_start == 3);
  CHECK(smaller.stats().records == 2);
  CHECK(smaller.stats().evicted == 1);
}

TEST_CASE("KV disk tier: bad directories and sizes are refused", "[kv][disk]") {
  KvPool pool(small_spec());
  TempDir dir("flags");
  const auto message = [&](const KvDiskTierOptions& o) {
    try {
      KvDiskTier tier(o, kModel, pool);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  KvDiskTierOptions o = options(dir);
  o.dir = dir.str() + "/missing";
  CHECK_THAT(message(o), Catch::Contains("does not exist"));
  {
    std::ofstream(dir.str() + "/file") << "x";
  }
  o.dir = dir.str() + "/file";
  CHECK_THAT(message(o), Catch::Contains("is not a directory"));
  o.dir = "/proc";  // no file can be made there, not even by root
  CHECK_THAT(message(o), Catch::Contains("is not writable"));
  o = options(dir, 100);
  CHECK_THAT(message(o), Catch::Contains("holds no KV block"));
  o = options(dir, uint64_t{1} << 60);
  CHECK_THAT(message(o), Catch::Contains("larger than the file system"));

  CHECK(parse_byte_size("64G", "--kv-disk-size") == uint64_t{64} << 30);
  CHECK(parse_byte_size("512M", "--kv-disk-size") == uint64_t{512} << 20);
  CHECK(parse_byte_size("1.5k", "--kv-disk-size") == 1536);
  CHECK(parse_byte_size("4096", "--kv-disk-size") == 4096);
  CHECK(parse_byte_size("2GiB", "--kv-disk-size") == uint64_t{2} << 30);
  for (const char* bad : {"", "G", "12Q", "-5G", "0", "1e3", "abc"})
    CHECK_THROWS_WITH(parse_byte_size(bad, "--kv-disk-size"), Catch::Contains("--kv-disk-size"));
}
