#include <sys/stat.h>

#include <algorithm>
#include <cstring>

#include "device/backends.h"
#include "device/poison_list.h"
#include "poise/device.h"

namespace poise {

const char* to_string(PersistenceDomain domain) {
  switch (domain) {
    case PersistenceDomain::CpuCache: return "cpu-cache";
    case PersistenceDomain::MemoryController: return "memory-controller";
    case PersistenceDomain::PageCache: return "page-cache";
  }
  return "unknown";
}

Result<void> Device::read(uint64_t offset, void* dst, size_t length) const {
  check_range(offset, length);
  if (PoisonList* poison = emulated_poison()) {
    if (auto bad = poison->first_overlap(offset, length)) {
      return fail(EIO, describe() + ": device bytes " + std::to_string(bad->offset_bytes) + ".." +
                           std::to_string(bad->offset_bytes + bad->length_bytes) + " are poisoned");
    }
  }
  std::memcpy(dst, data() + offset, length);
  return {};
}

Result<void> Device::edit_poison(uint64_t offset, uint64_t length, PoisonEdit edit) {
  PoisonList* poison = emulated_poison();
  if (poison == nullptr) {
    return fail(ENOTSUP, describe() + ": poison can only be " +
                             (edit == PoisonEdit::Inject ? "injected into" : "cleared on") + " an emulated device");
  }
  if (length == 0 || offset >= size_bytes() || length > size_bytes() - offset) {
    return fail(EINVAL, "poison range lies outside the device");
  }
  if (edit == PoisonEdit::Inject) {
    poison->add(offset, length);
  } else {
    poison->remove(offset, length);
  }
  return save_poison();
}

Result<void> Device::inject_poison(uint64_t offset, uint64_t length) {
  return edit_poison(offset, length, PoisonEdit::Inject);
}

Result<void> Device::clear_poison(uint64_t offset, uint64_t length) {
  return edit_poison(offset, length, PoisonEdit::Clear);
}

Result<std::vector<BadRange>> Device::bad_ranges() const {
  PoisonList* poison = emulated_poison();
  return poison == nullptr ? std::vector<BadRange>{} : poison->ranges();
}

Result<void> Device::register_holder(FailureHolder* holder) {
  std::lock_guard lock(holder_mutex_);
  if (holder_ != nullptr && holder_ != holder) return fail(EBUSY, describe() + ": already held by a filesystem");
  holder_ = holder;
  return {};
}

void Device::unregister_holder(FailureHolder* holder) {
  std::lock_guard lock(holder_mutex_);
  if (holder_ == holder) holder_ = nullptr;
}

Result<void> Device::notify_failure(uint64_t offset, uint64_t length, FailureFlags flags) {
  if (offset >= size_bytes() || length == 0) return fail(EINVAL, "failure range outside the device");
  length = std::min(length, size_bytes() - offset);  // "to the end" may be given as UINT64_MAX
  std::lock_guard lock(holder_mutex_);
  if (holder_ == nullptr) return fail(ENXIO, describe() + ": no filesystem holds this device");
  return holder_->notify_failure(offset, length, flags);
}

Result<std::unique_ptr<Device>> open_device(const std::string& path,
                                            const OpenDeviceOptions& options) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISCHR(st.st_mode)) {
    if (options.size_bytes != 0) {
      return fail(EINVAL, path + ": the size of a device-dax device is fixed; drop --size");
    }
    return open_dax_device(path);
  }
  return open_file_device(path, options);
}

}  // namespace poise
