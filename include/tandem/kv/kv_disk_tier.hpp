#pragma once
// The SSD tier of the prefix cache: full KV blocks as files in a directory, so a block the host
// tier lets go of — or a later process serving the same model — finds them again.
//
// One file per block, `<tier id>-<chain key>.kvb` (16 hex digits each; the tier id hashes the
// model identity, KV type and block shape, so models sharing a directory never look at each
// other's files). A record is a 128-byte header — magic, format version, model identity, KV type,
// layout, block shape (layers, values per token, tokens per block, rope values), the block's
// token-hash chain key, payload length, the payload's xxHash3-64 and the header's own — then the
// payload: the block's bytes layer after layer, exactly as the pool stores them (one layer's
// planes of one block are contiguous). For a host pool reads land straight in pool blocks and
// writes leave from them (no staging copy), through io_uring when the sandbox allows it, else
// preadv/pwritev. A pool whose layers live on a GPU (KvPoolSpec::device_layers) is written through
// a copy of the block in host memory (KvPool::export_block) and read through two staging chunks in
// turn (pinned memory of the GPU's backend, 4 KiB-aligned slots): each record in one read of its
// whole file with O_DIRECT where the file system takes it (the page cache would only copy the
// bytes once more), one chunk's reads in flight (io_uring, or a few reader threads where io_uring
// is unavailable) while the chunk before is checked and copied to the GPU
// (KvPool::import_blocks). Same layout, same records either way, so a record written with
// attention on a GPU serves attention on the CPU and back (same model and KV type).
//
// A record is used only when every header field matches this tier and the payload checksum holds:
// a corrupt, truncated or foreign (other model, KV type or shape) record is counted, deleted and
// reported as a miss (the caller recomputes the block). At construction the directory is scanned
// and every record of this tier's name is checked (header, length): that index survives the
// process, bounded by `max_bytes` with least-recently-used eviction (file times carry the order
// from one process to the next; a hit refreshes its file's time). A write that fails (a full disk)
// is counted and dropped with one warning — the host tier goes on without it.
//
// Not thread-safe: the prefix cache calls it under the engine's lock.
#include <cstdint>
#include <list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tandem/backend/device_buffer.hpp"

namespace tandem {

class KvPool;
class AsyncFileIo;
class Backend;

struct KvDiskTierOptions {
  std::string dir;         // an existing, writable directory
  uint64_t max_bytes = 0;  // records of this tier kept at most (headers included)
  bool try_io_uring = true;
  // Reads through the staging chunks (above) for a host pool too; a pool with device layers always
  // reads that way.
  bool staged_reads = false;
  // The staging chunks' memory: pinned host memory of this backend (a GPU's: its copies from there
  // run at the bus's speed), or plain host memory when null. Must outlive the tier.
  Backend* staging_from = nullptr;
  // One staging chunk's bytes (two alternate), at least one record; 0: 64 MiB.
  uint64_t staging_chunk_bytes = 0;
};

struct KvDiskStats {
  std::string io;  // "io_uring" or "preadv/pwritev (io_uring unavailable: …)"
  int64_t records = 0;  // records of this tier in the index
  uint64_t bytes = 0;   // their size on disk
  int64_t found_at_start = 0;  // records the directory scan indexed
  int64_t written = 0;         // records written (completed)
  int64_t write_failures = 0;  // writes that failed (full disk, I/O error); their blocks stay host-only
  int64_t loaded = 0;          // records read back into the pool and used
  int64_t read_direct = 0;     // records read with O_DIRECT (staged reads on a file system that takes it)
  int64_t rejected_corrupt = 0;    // bad magic, version, header or payload checksum
  int64_t rejected_truncated = 0;  // shorter (or longer) than the header says
  int64_t rejected_foreign = 0;    // another model identity, KV type, layout or block shape
  int64_t evicted = 0;             // records deleted to stay within max_bytes
  double page_cache_resident = -1;  // after the last drop_page_cache(); -1 before any
};

// "64G", "512M", "1.5T", "4096" (bytes): K/M/G/T binary (1024-based), an optional trailing B or
// iB. Error(invalid_argument) naming `flag` for anything else, or zero.
uint64_t parse_byte_size(std::string_view text, std::string_view flag);

class KvDiskTier {
 public:
  // Error(invalid_argument) when `dir` is missing, not a directory or not writable, when
  // max_bytes is smaller than one record or larger than the file system holding `dir`.
  KvDiskTier(const KvDiskTierOptions& options, uint64_t model_identity, KvPool& pool);
  ~KvDiskTier();  // waits for the writes in flight
  KvDiskTier(const KvDiskTier&) = delete;
  KvDiskTier& operator=(const KvDiskTier&) = delete;

  // Error(invalid_argument) when `dir` is missing, not a directory, not writable or full (a file of
  // one page is written, synced and removed to find out).
  static void check_directory(const std::string& dir);
  // The size of the file system holding `dir` (0 when unknown).
  static uint64_t file_system_bytes(const std::string& dir);

  // Size of one record: header plus the payload of one block.
  uint64_t record_bytes() const { return record_bytes_; }
  // Host memory of the staged reads' two chunks (pinned where staging_from gave it); 0 without them.
  uint64_t staging_bytes() const { return 2 * static_cast<uint64_t>(slots_per_chunk_) * slot_bytes_; }
  bool contains(uint64_t key) const { return index_.count(key) != 0; }

  // Writes pool block `block` under `key`, asynchronously, unless the key is on disk already. The
  // block must not change or be freed before its write completes: wait_for(block) before
  // releasing it (cached blocks are full and never written again). A pool with device layers:
  // the block is copied out first (the write then needs nothing of the pool).
  void store(uint64_t key, int32_t block);
  // Waits for any write still reading from `block`.
  void wait_for(int32_t block);
  // Reads the records of keys[i] into pool blocks blocks[i], all at once, and checks them.
  // Returns n: keys [0, n) were found good and their blocks hold the records; from the first
  // missing or rejected key on, the blocks' contents are undefined (the caller frees them). Every
  // record read is checked, and each bad one counted and deleted.
  size_t load(std::span<const uint64_t> keys, std::span<const int32_t> blocks);
  // Waits for every write in flight.
  void flush();
  // Flushes, then asks the kernel to drop this tier's files from the page cache (fdatasync and
  // POSIX_FADV_DONTNEED per file), so the next reads come from the device: what a benchmark of
  // the disk tier needs. Returns the fraction of the records' bytes still cached afterwards
  // (mincore): 0 when it worked, 1 on tmpfs (memory is the device there).
  double drop_page_cache();
  // The file system type holding `dir` ("ext4", "xfs", "tmpfs", "overlayfs", ... or its magic
  // number in hex).
  static std::string file_system_type(const std::string& dir);

  KvDiskStats stats();
  const std::string& dir() const { return dir_; }
  std::string path_of(uint64_t key) const;  // the record's file name for `key`

 private:
  struct Entry {
    std::list<uint64_t>::iterator lru;  // position in lru_ (front: least recently used)
    uint64_t bytes = 0;
  };
  struct PendingWrite;

  void scan();
  void make_room(uint64_t bytes);
  void forget(uint64_t key, bool delete_file);
  void touch(uint64_t key);
  void reap_writes(bool wait);
  void finish_write(PendingWrite& write);
  struct StagedChunk;
  size_t load_staged(std::span<const uint64_t> keys, std::span<const int32_t> blocks);
  void submit_staged(StagedChunk& chunk, std::span<const uint64_t> keys);
  void wait_staged(StagedChunk& chunk);

  std::string dir_;
  uint64_t max_bytes_ = 0;
  uint64_t model_identity_ = 0;
  uint64_t tier_id_ = 0;
  KvPool& pool_;
  uint64_t payload_bytes_ = 0, record_bytes_ = 0;
  std::unique_ptr<AsyncFileIo> io_;
  std::unordered_map<uint64_t, Entry> index_;
  std::list<uint64_t> lru_;
  uint64_t bytes_ = 0;
  std::list<std::unique_ptr<PendingWrite>> writes_;
  KvDiskStats stats_;
  bool warned_write_failure_ = false;
  bool staged_reads_ = false;
  uint64_t slot_bytes_ = 0;       // a record rounded up to 4 KiB (O_DIRECT reads whole slots)
  size_t slots_per_chunk_ = 0;
  DeviceBuffer staging_memory_;   // from options.staging_from, or
  std::unique_ptr<std::byte[]> staging_plain_;
  std::byte* staging_ = nullptr;  // 4 KiB-aligned: two chunks of slots_per_chunk_ slots
  bool try_direct_ = true;        // cleared once the file system refuses O_DIRECT
};

}  // namespace tandem
