#include "tandem/kv/kv_disk_tier.hpp"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstddef>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>
#include <vector>

#include "kv/async_file_io.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/error.hpp"
#include "tandem/kv/kv_pool.hpp"

namespace tandem {
namespace {

constexpr char kMagic[8] = {'T', 'N', 'D', 'M', 'K', 'V', 'B', 'K'};
constexpr uint32_t kVersion = 1;
// Requests in flight at once (each write holds an open file): a 4k-token prompt's blocks (256 at
// 16 tokens a block) are written without waiting for the disk.
constexpr unsigned kRequestsInFlight = 256;
// O_DIRECT wants the buffer, the file offset and the length aligned to the device's logical block;
// 4 KiB covers every device in use.
constexpr uint64_t kDirectAlignment = 4096;
constexpr uint64_t kStagingChunkBytes = uint64_t{64} << 20;
// Staged reads where io_uring is unavailable: this many threads each read their share of a chunk
// (an SSD needs several requests in flight to reach its read rate).
constexpr size_t kReaderThreads = 8;

struct RecordHeader {
  char magic[8];
  uint32_t version;
  uint32_t header_bytes;
  uint64_t model_identity;
  uint32_t dtype;
  uint32_t layout;
  int64_t layers;
  int64_t values_per_token;
  int64_t block_tokens;
  int64_t rope_values;
  uint64_t chain_key;
  uint64_t payload_bytes;
  uint64_t payload_xxh3;
  uint8_t reserved[32];
  uint64_t header_xxh3;  // of every byte before it
};
static_assert(sizeof(RecordHeader) == 128, "the record header is 128 bytes on disk");

uint64_t header_checksum(const RecordHeader& h) { return XXH3_64bits(&h, offsetof(RecordHeader, header_xxh3)); }

// This tier's header: everything but the key and the payload checksum.
RecordHeader tier_header(uint64_t model_identity, const KvPool& pool, uint64_t payload_bytes) {
  RecordHeader h;
  std::memset(&h, 0, sizeof h);
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kVersion;
  h.header_bytes = sizeof(RecordHeader);
  h.model_identity = model_identity;
  const KvPoolSpec& s = pool.spec();
  h.dtype = static_cast<uint32_t>(s.dtype);
  h.layout = static_cast<uint32_t>(s.layout);
  h.layers = s.layers;
  h.values_per_token = s.values_per_token;
  h.block_tokens = s.block_tokens;
  h.rope_values = s.rope_values;
  h.payload_bytes = payload_bytes;
  return h;
}

enum class Verdict { good, corrupt, truncated, foreign };

// Checks a header read from a file of `file_bytes` named for `key` against this tier's `expected`.
Verdict check_header(const RecordHeader& h, const RecordHeader& expected, uint64_t key, uint64_t file_bytes) {
  if (file_bytes < sizeof(RecordHeader)) return Verdict::truncated;
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0 || h.version != kVersion ||
      h.header_bytes != sizeof(RecordHeader) || h.header_xxh3 != header_checksum(h))
    return Verdict::corrupt;
  if (h.model_identity != expected.model_identity || h.dtype != expected.dtype || h.layout != expected.layout ||
      h.layers != expected.layers || h.values_per_token != expected.values_per_token ||
      h.block_tokens != expected.block_tokens || h.rope_values != expected.rope_values || h.chain_key != key)
    return Verdict::foreign;
  if (h.payload_bytes != expected.payload_bytes) return Verdict::corrupt;
  if (file_bytes != sizeof(RecordHeader) + h.payload_bytes) return Verdict::truncated;
  return Verdict::good;
}

uint64_t payload_checksum(const KvPool& pool, int32_t block) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (int64_t layer = 0; layer < pool.spec().layers; ++layer)
    XXH3_64bits_update(&state, pool.plane_data(block, layer, 0), pool.block_layer_bytes());
  return XXH3_64bits_digest(&state);
}

void fill_payload_iov(std::vector<iovec>& iov, KvPool& pool, int32_t block) {
  for (int64_t layer = 0; layer < pool.spec().layers; ++layer)
    iov.push_back({pool.plane_data(block, layer, 0), pool.block_layer_bytes()});
}

bool parse_record_name(const std::string& name, uint64_t& tier, uint64_t& key) {
  if (name.size() != 16 + 1 + 16 + 4 || name[16] != '-' || name.compare(33, 4, ".kvb") != 0) return false;
  const auto hex = [](std::string_view s, uint64_t& out) {
    out = 0;
    for (const char c : s) {
      int d = -1;
      if (c >= '0' && c <= '9') d = c - '0';
      if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      if (d < 0) return false;
      out = out << 4 | static_cast<uint64_t>(d);
    }
    return true;
  };
  return hex(std::string_view(name).substr(0, 16), tier) && hex(std::string_view(name).substr(17, 16), key);
}

[[noreturn]] void fail(const std::string& message) { throw Error(ErrorKind::invalid_argument, message); }


}  // namespace

uint64_t parse_byte_size(std::string_view text, std::string_view flag) {
  const auto bad = [&] {
    fail(fmt::format("{} '{}': expected bytes with an optional K/M/G/T suffix (binary: 64G, 512M, 1.5T)", flag,
                     text));
  };
  size_t end = 0;
  while (end < text.size() && (std::isdigit(static_cast<unsigned char>(text[end])) || text[end] == '.')) ++end;
  if (end == 0) bad();
  double value = 0;
  try {
    value = std::stod(std::string(text.substr(0, end)));
  } catch (const std::exception&) {
    bad();
  }
  std::string unit;
  for (const char c : text.substr(end)) unit += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  static const std::map<std::string, int> shifts = {
      {"", 0},  {"b", 0},   {"k", 10}, {"kb", 10}, {"kib", 10}, {"m", 20}, {"mb", 20},  {"mib", 20},
      {"g", 30}, {"gb", 30}, {"gib", 30}, {"t", 40}, {"tb", 40}, {"tib", 40}};
  const auto it = shifts.find(unit);
  if (it == shifts.end()) bad();
  const double bytes = std::floor(value * static_cast<double>(uint64_t{1} << it->second));
  if (!(bytes >= 1)) fail(fmt::format("{} '{}': must be at least one byte", flag, text));
  if (bytes > 1e18) bad();
  return static_cast<uint64_t>(bytes);
}

struct KvDiskTier::PendingWrite {
  AsyncFileIo::Request request;
  RecordHeader header;
  int fd = -1;
  uint64_t key = 0;
  int32_t block = -1;             // the pool block the write reads from; -1 when staged
  std::vector<std::byte> staged;  // a pool with device layers: the block's bytes, exported
};

KvDiskTier::KvDiskTier(const KvDiskTierOptions& options, uint64_t model_identity, KvPool& pool)
    : dir_(options.dir), max_bytes_(options.max_bytes), model_identity_(model_identity), pool_(pool) {
  check_directory(dir_);
  payload_bytes_ = pool.block_layer_bytes() * static_cast<uint64_t>(pool.spec().layers);
  record_bytes_ = sizeof(RecordHeader) + payload_bytes_;
  if (const uint64_t total = file_system_bytes(dir_); total > 0 && max_bytes_ > total)
    fail(fmt::format("--kv-disk-size {:.2f} GiB is larger than the file system holding '{}' ({:.2f} GiB)",
                     static_cast<double>(max_bytes_) / (1 << 30), dir_, static_cast<double>(total) / (1 << 30)));
  if (max_bytes_ < record_bytes_)
    fail(fmt::format("--kv-disk-size {} bytes holds no KV block: one record of this model takes {} bytes", max_bytes_,
                     record_bytes_));
  const RecordHeader h = tier_header(model_identity, pool, payload_bytes_);
  tier_id_ = XXH3_64bits(&h, offsetof(RecordHeader, chain_key));
  io_ = std::make_unique<AsyncFileIo>(kRequestsInFlight, options.try_io_uring);
  stats_.io = io_->description();
  staged_reads_ = options.staged_reads || pool.has_device_layers();
  if (staged_reads_) {
    slot_bytes_ = (record_bytes_ + kDirectAlignment - 1) / kDirectAlignment * kDirectAlignment;
    const uint64_t chunk = options.staging_chunk_bytes > 0 ? options.staging_chunk_bytes : kStagingChunkBytes;
    slots_per_chunk_ = static_cast<size_t>(std::max<uint64_t>(1, chunk / slot_bytes_));
    const size_t bytes = 2 * slots_per_chunk_ * slot_bytes_ + kDirectAlignment;
    std::byte* base = nullptr;
    if (options.staging_from != nullptr) {
      staging_memory_ = options.staging_from->allocate_host(bytes);
      base = staging_memory_.as<std::byte>();
    } else {
      staging_plain_ = std::make_unique_for_overwrite<std::byte[]>(bytes);
      base = staging_plain_.get();
    }
    const auto address = reinterpret_cast<uintptr_t>(base);
    staging_ = base + ((kDirectAlignment - address % kDirectAlignment) % kDirectAlignment);
  }
  scan();
}

KvDiskTier::~KvDiskTier() { flush(); }

void KvDiskTier::check_directory(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (dir.empty()) fail("--kv-disk: no directory given");
  if (!fs::exists(dir, ec)) fail(fmt::format("--kv-disk '{}' does not exist (create the directory first)", dir));
  if (!fs::is_directory(dir, ec)) fail(fmt::format("--kv-disk '{}' is not a directory", dir));
  const std::string probe = fmt::format("{}/.tandem-kv-probe-{}", dir, getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (errno == ENOSPC || errno == EDQUOT) fail(fmt::format("--kv-disk '{}' is full: no space for a file", dir));
    fail(fmt::format("--kv-disk '{}' is not writable: {}", dir, std::strerror(errno)));
  }
  // A page written and synced: a full file system (or quota) takes a name but no data. A short write
  // (no error, fewer bytes) is a full one too.
  const std::vector<char> page(4096, 0);
  const ssize_t written = ::write(fd, page.data(), page.size());
  int write_errno = written < 0 ? errno : written < static_cast<ssize_t>(page.size()) ? ENOSPC : 0;
  if (write_errno == 0 && ::fsync(fd) != 0) write_errno = errno;
  ::close(fd);
  ::unlink(probe.c_str());
  if (write_errno != 0) {
    struct statvfs vfs {};
    const uint64_t free_bytes =
        statvfs(dir.c_str(), &vfs) == 0 ? static_cast<uint64_t>(vfs.f_bavail) * static_cast<uint64_t>(vfs.f_frsize) : 0;
    if (write_errno == ENOSPC || write_errno == EDQUOT)
      fail(fmt::format("--kv-disk '{}' is full: {} bytes free on its file system", dir, free_bytes));
    fail(fmt::format("--kv-disk '{}': writing a test file failed: {}", dir, std::strerror(write_errno)));
  }
}

uint64_t KvDiskTier::file_system_bytes(const std::string& dir) {
  struct statvfs vfs {};
  if (statvfs(dir.c_str(), &vfs) != 0) return 0;
  return static_cast<uint64_t>(vfs.f_blocks) * static_cast<uint64_t>(vfs.f_frsize);
}

std::string KvDiskTier::path_of(uint64_t key) const { return fmt::format("{}/{:016x}-{:016x}.kvb", dir_, tier_id_, key); }

void KvDiskTier::scan() {
  namespace fs = std::filesystem;
  const RecordHeader expected = tier_header(model_identity_, pool_, payload_bytes_);
  std::vector<std::pair<fs::file_time_type, uint64_t>> found;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir_, ec)) {
    uint64_t tier = 0, key = 0;
    if (!parse_record_name(entry.path().filename().string(), tier, key) || tier != tier_id_) continue;
    const std::string path = entry.path().string();
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st {};
    RecordHeader h{};
    Verdict v = Verdict::truncated;
    if (fstat(fd, &st) == 0 && pread(fd, &h, sizeof h, 0) == static_cast<ssize_t>(sizeof h))
      v = check_header(h, expected, key, static_cast<uint64_t>(st.st_size));
    ::close(fd);
    if (v != Verdict::good) {
      ++(v == Verdict::corrupt ? stats_.rejected_corrupt
                                : v == Verdict::foreign ? stats_.rejected_foreign : stats_.rejected_truncated);
      ::unlink(path.c_str());
      continue;
    }
    found.emplace_back(entry.last_write_time(ec), key);
  }
  std::sort(found.begin(), found.end());
  for (const auto& [time, key] : found) {
    lru_.push_back(key);
    index_[key] = Entry{std::prev(lru_.end()), record_bytes_};
    bytes_ += record_bytes_;
  }
  stats_.found_at_start = static_cast<int64_t>(found.size());
  make_room(0);
}

void KvDiskTier::make_room(uint64_t bytes) {
  while (!lru_.empty() && bytes_ + bytes > max_bytes_) {
    forget(lru_.front(), true);
    ++stats_.evicted;
  }
}

void KvDiskTier::forget(uint64_t key, bool delete_file) {
  const auto it = index_.find(key);
  if (it == index_.end()) return;
  bytes_ -= it->second.bytes;
  lru_.erase(it->second.lru);
  index_.erase(it);
  if (delete_file) ::unlink(path_of(key).c_str());
}

void KvDiskTier::touch(uint64_t key) {
  const auto it = index_.find(key);
  if (it != index_.end()) lru_.splice(lru_.end(), lru_, it->second.lru);
}

void KvDiskTier::store(uint64_t key, int32_t block) {
  reap_writes(false);
  if (contains(key)) return;
  make_room(record_bytes_);
  auto write = std::make_unique<PendingWrite>();
  write->key = key;
  write->block = block;
  const std::string path = path_of(key);
  write->fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (write->fd < 0) {
    write->request.result = -errno;
    write->request.done = true;
    finish_write(*write);
    return;
  }
  write->header = tier_header(model_identity_, pool_, payload_bytes_);
  write->header.chain_key = key;
  write->request.write = true;
  write->request.fd = write->fd;
  write->request.iov.push_back({&write->header, sizeof(RecordHeader)});
  if (pool_.has_device_layers()) {
    // A GPU's layers cannot be written from where they are: the block's bytes are copied out
    // (same layout), and the write reads from that copy.
    write->staged.resize(payload_bytes_);
    try {
      pool_.export_block(block, write->staged.data());
    } catch (...) {
      ::close(write->fd);
      ::unlink(path.c_str());
      throw;
    }
    write->block = -1;
    write->header.payload_xxh3 = XXH3_64bits(write->staged.data(), write->staged.size());
    write->request.iov.push_back({write->staged.data(), write->staged.size()});
  } else {
    write->header.payload_xxh3 = payload_checksum(pool_, block);
    fill_payload_iov(write->request.iov, pool_, block);
  }
  write->header.header_xxh3 = header_checksum(write->header);
  // In the index from now on (so its bytes count and a second store of the key is skipped); a
  // failed write takes it out again.
  lru_.push_back(key);
  index_[key] = Entry{std::prev(lru_.end()), record_bytes_};
  bytes_ += record_bytes_;
  io_->submit(write->request);
  writes_.push_back(std::move(write));
  reap_writes(false);
}

void KvDiskTier::finish_write(PendingWrite& write) {
  if (write.fd >= 0) ::close(write.fd);
  write.fd = -1;
  if (write.request.result == static_cast<int64_t>(record_bytes_)) {
    ++stats_.written;
    return;
  }
  forget(write.key, false);
  ::unlink(path_of(write.key).c_str());
  ++stats_.write_failures;
  if (!warned_write_failure_) {
    warned_write_failure_ = true;
    const int64_t r = write.request.result;
    // fputs, not fmt::print: a stderr the same full disk (or file size limit) refuses must not turn
    // the warning into an exception.
    const std::string warning = fmt::format(
        "tandem: warning: KV disk tier '{}': a block could not be written ({}); blocks that cannot be "
        "written stay in host memory only\n",
        dir_, r < 0 ? std::strerror(static_cast<int>(-r)) : fmt::format("{} of {} bytes", r, record_bytes_));
    std::fputs(warning.c_str(), stderr);
  }
}

void KvDiskTier::reap_writes(bool wait) {
  if (writes_.empty()) return;
  io_->reap(wait);
  for (auto it = writes_.begin(); it != writes_.end();) {
    if (!(*it)->request.done) {
      ++it;
      continue;
    }
    finish_write(**it);
    it = writes_.erase(it);
  }
}

void KvDiskTier::wait_for(int32_t block) {
  const auto pending = [&] {
    return std::any_of(writes_.begin(), writes_.end(), [&](const auto& w) { return w->block == block; });
  };
  reap_writes(false);
  while (pending()) reap_writes(true);
}

void KvDiskTier::flush() {
  while (!writes_.empty()) reap_writes(true);
}

size_t KvDiskTier::load(std::span<const uint64_t> keys, std::span<const int32_t> blocks) {
  flush();
  if (staged_reads_) return load_staged(keys, blocks);
  const size_t n = std::min(keys.size(), blocks.size());
  struct Read {
    AsyncFileIo::Request request;
    RecordHeader header{};
    int fd = -1;
    uint64_t file_bytes = 0;
  };
  std::vector<Read> reads(n);  // sized once: requests stay where the ring points
  size_t submitted = 0;
  for (; submitted < n && contains(keys[submitted]); ++submitted) {
    Read& r = reads[submitted];
    r.fd = ::open(path_of(keys[submitted]).c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st {};
    if (r.fd < 0 || fstat(r.fd, &st) != 0) {  // gone from under us: a miss
      forget(keys[submitted], false);
      break;
    }
    r.file_bytes = static_cast<uint64_t>(st.st_size);
    r.request.fd = r.fd;
    r.request.iov.push_back({&r.header, sizeof(RecordHeader)});
    fill_payload_iov(r.request.iov, pool_, blocks[submitted]);
    io_->submit(r.request);
  }
  io_->drain();
  const RecordHeader expected = tier_header(model_identity_, pool_, payload_bytes_);
  // Every record read is checked (a bad one is deleted, so the next eviction rewrites it); the
  // run the caller gets ends at the first bad one.
  size_t good = submitted;
  for (size_t i = 0; i < submitted; ++i) {
    Read& r = reads[i];
    Verdict v = r.request.result < static_cast<int64_t>(sizeof(RecordHeader))
                    ? Verdict::truncated
                    : check_header(r.header, expected, keys[i], r.file_bytes);
    if (v == Verdict::good && r.request.result != static_cast<int64_t>(record_bytes_)) v = Verdict::truncated;
    if (v == Verdict::good && payload_checksum(pool_, blocks[i]) != r.header.payload_xxh3) v = Verdict::corrupt;
    if (v != Verdict::good) {
      ++(v == Verdict::corrupt ? stats_.rejected_corrupt
                                : v == Verdict::foreign ? stats_.rejected_foreign : stats_.rejected_truncated);
      forget(keys[i], true);
      good = std::min(good, i);
      continue;
    }
    if (i < good) {
      futimens(r.fd, nullptr);  // the file's time carries the LRU order to the next process
      touch(keys[i]);
    }
  }
  for (Read& r : reads)
    if (r.fd >= 0) ::close(r.fd);
  stats_.loaded += static_cast<int64_t>(good);
  return good;
}

struct KvDiskTier::StagedChunk {
  struct Read {
    AsyncFileIo::Request request;
    uint64_t key = 0;
    int fd = -1;
    uint64_t file_bytes = 0;
    bool direct = false;
  };
  std::byte* slots = nullptr;  // slots_per_chunk_ slots of slot_bytes_
  size_t first = 0;            // the load's keys [first, first + reads.size()) are this chunk's
  std::vector<Read> reads;
  std::vector<std::jthread> readers;  // no io_uring: the reads run on these (declared after reads: joined first)

  std::byte* slot(size_t i) const { return slots + i * slot_bytes; }
  uint64_t slot_bytes = 0;
  void close_files() {
    for (Read& r : reads)
      if (r.fd >= 0) ::close(std::exchange(r.fd, -1));
  }
};

// Opens the files of keys [chunk.first, chunk.first + chunk.reads.size()) and starts reading each
// whole into its slot. A file gone from under us (deleted by another process) is a miss: the chunk
// ends before it.
void KvDiskTier::submit_staged(StagedChunk& chunk, std::span<const uint64_t> keys) {
  size_t opened = 0;
  for (; opened < chunk.reads.size(); ++opened) {
    StagedChunk::Read& r = chunk.reads[opened];
    const uint64_t key = keys[chunk.first + opened];
    r.key = key;
    const std::string path = path_of(key);
    if (try_direct_) {
      r.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
      if (r.fd < 0 && errno == EINVAL) try_direct_ = false;  // tmpfs and a few others refuse it
      r.direct = r.fd >= 0;
    }
    if (r.fd < 0) r.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st {};
    if (r.fd < 0 || fstat(r.fd, &st) != 0) {
      if (r.fd >= 0) ::close(std::exchange(r.fd, -1));
      forget(key, false);
      break;
    }
    r.file_bytes = static_cast<uint64_t>(st.st_size);
    r.request.fd = r.fd;
    // The whole slot: O_DIRECT reads whole aligned blocks, and the file ends before the slot does.
    r.request.iov.assign(1, iovec{chunk.slot(opened), static_cast<size_t>(slot_bytes_)});
  }
  chunk.reads.resize(opened);
  if (io_->uses_uring()) {
    for (StagedChunk::Read& r : chunk.reads) io_->submit(r.request);
    return;
  }
  const size_t threads = std::min(chunk.reads.size(), kReaderThreads);
  for (size_t t = 0; t < threads; ++t)
    chunk.readers.emplace_back([&chunk, t, threads] {
      for (size_t i = t; i < chunk.reads.size(); i += threads) AsyncFileIo::run_now(chunk.reads[i].request);
    });
}

void KvDiskTier::wait_staged(StagedChunk& chunk) {
  const auto pending = [&] {
    return std::any_of(chunk.reads.begin(), chunk.reads.end(), [](const auto& r) { return !r.request.done; });
  };
  if (io_->uses_uring())
    while (pending() && io_->reap(true) > 0) {
    }
  chunk.readers.clear();  // joins
  for (StagedChunk::Read& r : chunk.reads) {
    if (r.direct && r.request.result == -EINVAL) {
      // The file system took O_DIRECT at open but not this read (an alignment it wants larger):
      // read the record through the page cache, and from now on every record.
      try_direct_ = false;
      r.direct = false;
      const int fd = ::open(path_of(r.key).c_str(), O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        ::close(std::exchange(r.fd, fd));
        r.request.fd = fd;
        AsyncFileIo::run_now(r.request);
      }
    }
  }
}

size_t KvDiskTier::load_staged(std::span<const uint64_t> keys, std::span<const int32_t> blocks) {
  const size_t n = std::min(keys.size(), blocks.size());
  size_t run = 0;  // the keys to read: those in the index, up to the first that is not
  while (run < n && contains(keys[run])) ++run;
  StagedChunk chunks[2];
  for (int c = 0; c < 2; ++c) {
    chunks[c].slot_bytes = slot_bytes_;
    chunks[c].slots = staging_ + static_cast<size_t>(c) * slots_per_chunk_ * slot_bytes_;
  }
  // Whatever happens below (a GPU copy that throws), no read may still be landing in the staging
  // chunks or hold a file open when this returns.
  struct Settle {
    KvDiskTier& tier;
    StagedChunk* chunks;
    ~Settle() {
      tier.io_->drain();
      for (int c = 0; c < 2; ++c) {
        chunks[c].readers.clear();
        chunks[c].close_files();
      }
    }
  } settle{*this, chunks};
  size_t next = 0;  // the first key not yet submitted
  const auto submit = [&](StagedChunk& chunk) {
    chunk.close_files();
    chunk.reads.clear();
    chunk.first = next;
    chunk.reads.resize(std::min(slots_per_chunk_, run - next));
    const size_t wanted = chunk.reads.size();
    submit_staged(chunk, keys);
    next += chunk.reads.size();
    if (chunk.reads.size() < wanted) run = next;  // a file was gone: the run ends there
  };
  const RecordHeader expected = tier_header(model_identity_, pool_, payload_bytes_);
  size_t good = 0;     // keys [0, good) were read, checked and imported
  bool ended = false;  // a bad record was found: nothing after it is used (but every record read is checked)
  std::vector<const std::byte*> sources;
  if (run > 0) submit(chunks[0]);
  for (int current = 0; !chunks[current].reads.empty(); current ^= 1) {
    StagedChunk& chunk = chunks[current];
    StagedChunk& other = chunks[current ^ 1];
    other.close_files();
    other.reads.clear();
    if (!ended && next < run) submit(other);  // its reads run while this chunk is checked and copied
    wait_staged(chunk);
    sources.clear();
    for (size_t i = 0; i < chunk.reads.size(); ++i) {
      const StagedChunk::Read& r = chunk.reads[i];
      const uint64_t key = keys[chunk.first + i];
      const std::byte* slot = chunk.slot(i);
      RecordHeader h{};
      Verdict v = Verdict::truncated;
      if (r.request.result >= static_cast<int64_t>(sizeof h)) {
        std::memcpy(&h, slot, sizeof h);
        v = check_header(h, expected, key, r.file_bytes);
      }
      if (v == Verdict::good && r.request.result != static_cast<int64_t>(record_bytes_)) v = Verdict::truncated;
      if (v == Verdict::good && XXH3_64bits(slot + sizeof h, payload_bytes_) != h.payload_xxh3) v = Verdict::corrupt;
      if (r.direct && r.request.result > 0) ++stats_.read_direct;
      if (v != Verdict::good) {
        ++(v == Verdict::corrupt ? stats_.rejected_corrupt
                                  : v == Verdict::foreign ? stats_.rejected_foreign : stats_.rejected_truncated);
        forget(key, true);
        ended = true;
        continue;
      }
      if (ended) continue;
      futimens(r.fd, nullptr);  // the file's time carries the LRU order to the next process
      touch(key);
      sources.push_back(slot + sizeof h);
    }
    chunk.close_files();
    if (!sources.empty()) {
      pool_.import_blocks(blocks.subspan(chunk.first, sources.size()), sources);
      good += sources.size();
    }
    chunk.reads.clear();
  }
  stats_.loaded += static_cast<int64_t>(good);
  return good;
}

double KvDiskTier::drop_page_cache() {
  flush();
  const auto page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  uint64_t pages = 0, resident = 0;
  std::vector<unsigned char> in_core;
  for (const uint64_t key : lru_) {
    const int fd = ::open(path_of(key).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    void* map = mmap(nullptr, record_bytes_, PROT_READ, MAP_SHARED, fd, 0);
    if (map != MAP_FAILED) {
      in_core.assign((record_bytes_ + page - 1) / page, 0);
      if (mincore(map, record_bytes_, in_core.data()) == 0) {
        pages += in_core.size();
        for (const unsigned char c : in_core) resident += c & 1;
      }
      munmap(map, record_bytes_);
    }
    ::close(fd);
  }
  stats_.page_cache_resident = pages ? static_cast<double>(resident) / static_cast<double>(pages) : 0.0;
  return stats_.page_cache_resident;
}

std::string KvDiskTier::file_system_type(const std::string& dir) {
  struct statfs fs {};
  if (statfs(dir.c_str(), &fs) != 0) return "unknown";
  switch (static_cast<uint64_t>(fs.f_type)) {
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x01021994: return "tmpfs";
    case 0x794C7630: return "overlayfs";
    case 0x6969: return "nfs";
    case 0x2FC12FC1: return "zfs";
    case 0x65735546: return "fuse";
    default: return fmt::format("0x{:x}", static_cast<uint64_t>(fs.f_type));
  }
}

KvDiskStats KvDiskTier::stats() {
  reap_writes(false);
  KvDiskStats s = stats_;
  s.records = static_cast<int64_t>(index_.size());
  s.bytes = bytes_;
  return s;
}

}  // namespace tandem
