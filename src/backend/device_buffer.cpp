#include "tandem/backend/device_buffer.hpp"

#include "tandem/backend/backend.hpp"

namespace tandem {

void DeviceBuffer::reset() noexcept {
  if (owner_ != nullptr && data_ != nullptr) owner_->free_buffer(data_, bytes_, pinned_host_);
  owner_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

}  // namespace tandem
