#pragma once
// DeviceBuffer: an owning allocation made by a Backend — device memory (the backend's own: host RAM
// for the CPU backend, VRAM for a GPU) or pinned host memory for copies to and from it. It is freed
// by the backend that made it, so that backend must outlive it. Never dereferenced by the forward
// pass: only the backend that owns it (or copies through it) reads what it holds.
#include <cstddef>
#include <utility>

#include "tandem/tensor/device.hpp"

namespace tandem {

class Backend;

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // Called by backends only: `owner` frees `data` with Backend::free_buffer.
  DeviceBuffer(Backend* owner, Device device, void* data, size_t bytes, bool pinned_host) noexcept
      : owner_(owner), device_(device), data_(data), bytes_(bytes), pinned_host_(pinned_host) {}
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      owner_ = std::exchange(o.owner_, nullptr);
      device_ = o.device_;
      data_ = std::exchange(o.data_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
      pinned_host_ = o.pinned_host_;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }
  // Where the bytes are: the backend's device, or the host for pinned host memory.
  Device device() const { return device_; }
  bool pinned_host() const { return pinned_host_; }
  bool empty() const { return data_ == nullptr; }
  void reset() noexcept;  // frees now (backend.cpp)

 private:
  Backend* owner_ = nullptr;
  Device device_;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  bool pinned_host_ = false;
};

}  // namespace tandem
