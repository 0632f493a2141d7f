#include "kv/async_file_io.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

#ifdef TANDEM_HAVE_LIBURING
#include <liburing.h>
#endif

namespace tandem {
void AsyncFileIo::run_now(Request& r) {
  ssize_t n = 0;
  do {
    n = r.write ? pwritev(r.fd, r.iov.data(), static_cast<int>(r.iov.size()), static_cast<off_t>(r.offset))
                : preadv(r.fd, r.iov.data(), static_cast<int>(r.iov.size()), static_cast<off_t>(r.offset));
  } while (n < 0 && errno == EINTR);
  r.result = n < 0 ? -errno : n;
  r.done = true;
}

#ifdef TANDEM_HAVE_LIBURING
struct AsyncFileIo::Ring {
  io_uring ring{};
  unsigned depth = 0;
  ~Ring() { io_uring_queue_exit(&ring); }
};
#else
struct AsyncFileIo::Ring {};
#endif

AsyncFileIo::AsyncFileIo(unsigned depth, bool try_uring) {
  if (!try_uring) {
    description_ = "preadv/pwritev (io_uring not asked for)";
    return;
  }
#ifdef TANDEM_HAVE_LIBURING
  auto ring = std::make_unique<Ring>();
  ring->depth = depth == 0 ? 1 : depth;
  const int rc = io_uring_queue_init(ring->depth, &ring->ring, 0);
  if (rc < 0) {
    description_ = fmt::format("preadv/pwritev (io_uring unavailable: {})", std::strerror(-rc));
    return;
  }
  ring_ = std::move(ring);
  description_ = "io_uring";
#else
  (void)depth;
  description_ = "preadv/pwritev (io_uring unavailable: built without liburing)";
#endif
}

AsyncFileIo::~AsyncFileIo() { drain(); }

void AsyncFileIo::submit(Request& request) {
  request.done = false;
  request.result = 0;
#ifdef TANDEM_HAVE_LIBURING
  if (ring_) {
    while (in_flight_ >= ring_->depth) reap(true);
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_->ring);
    while (sqe == nullptr) {  // the submission queue is full of unsubmitted entries
      io_uring_submit(&ring_->ring);
      sqe = io_uring_get_sqe(&ring_->ring);
    }
    if (request.write)
      io_uring_prep_writev(sqe, request.fd, request.iov.data(), static_cast<unsigned>(request.iov.size()),
                           request.offset);
    else
      io_uring_prep_readv(sqe, request.fd, request.iov.data(), static_cast<unsigned>(request.iov.size()),
                          request.offset);
    io_uring_sqe_set_data(sqe, &request);
    const int rc = io_uring_submit(&ring_->ring);
    if (rc < 0) {
      // The entry may stay queued; run the request now so it completes either way.
      run_now(request);
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data(sqe, nullptr);
    }
    ++in_flight_;
    return;
  }
#endif
  run_now(request);
}

size_t AsyncFileIo::reap(bool wait) {
  size_t marked = 0;
#ifdef TANDEM_HAVE_LIBURING
  if (!ring_) return 0;
  while (in_flight_ > 0) {
    io_uring_cqe* cqe = nullptr;
    int rc = io_uring_peek_cqe(&ring_->ring, &cqe);
    if (rc == -EAGAIN && wait && marked == 0) {
      do {
        rc = io_uring_wait_cqe(&ring_->ring, &cqe);
      } while (rc == -EINTR);
    }
    if (rc < 0 || cqe == nullptr) break;
    auto* request = static_cast<Request*>(io_uring_cqe_get_data(cqe));
    if (request && !request->done) {  // done already: it ran synchronously after a failed submit
      request->result = cqe->res;
      request->done = true;
    }
    io_uring_cqe_seen(&ring_->ring, cqe);
    --in_flight_;
    ++marked;
  }
#else
  (void)wait;
#endif
  return marked;
}

void AsyncFileIo::drain() {
  while (in_flight_ > 0)
    if (reap(true) == 0) break;
}

}  // namespace tandem
