#pragma once
// Vectored file reads and writes that run asynchronously through io_uring (liburing) when the
// kernel and the sandbox allow it, else synchronously with preadv/pwritev. Containers often forbid
// io_uring (seccomp, kernel.io_uring_disabled): setting the ring up fails then, and every request
// runs at submit instead — same results, no overlap. description() says which is in use and why.
// Not thread-safe: one owner (the KV disk tier, under the engine's lock).
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tandem {

class AsyncFileIo {
 public:
  struct Request {
    bool write = false;
    int fd = -1;
    std::vector<iovec> iov;  // the buffers must stay valid until `done`
    uint64_t offset = 0;
    int64_t result = 0;  // bytes moved, or -errno
    bool done = false;
  };

  // `depth`: requests in flight at once. `try_uring` false: the synchronous path, always.
  explicit AsyncFileIo(unsigned depth = 64, bool try_uring = true);
  ~AsyncFileIo();  // waits for every request in flight
  AsyncFileIo(const AsyncFileIo&) = delete;
  AsyncFileIo& operator=(const AsyncFileIo&) = delete;

  bool uses_uring() const { return ring_ != nullptr; }
  // Runs `request` now on the calling thread (preadv/pwritev, retried on EINTR) and marks it done:
  // the synchronous path, also for callers that spread requests over threads of their own.
  static void run_now(Request& request);
  // "io_uring" or "preadv/pwritev (io_uring unavailable: <reason>)".
  const std::string& description() const { return description_; }

  // Starts `request` (which must stay alive until it is done): queued on the ring, waiting for a
  // completion first when the ring is full; on the synchronous path it runs now and is done on
  // return.
  void submit(Request& request);
  // Marks finished requests done: without blocking (`wait` false), or waiting until at least one
  // finishes when any is in flight. Returns how many were marked.
  size_t reap(bool wait);
  // Waits for every request in flight.
  void drain();
  size_t in_flight() const { return in_flight_; }

 private:
  struct Ring;
  std::unique_ptr<Ring> ring_;
  std::string description_;
  size_t in_flight_ = 0;
};

}  // namespace tandem
