#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>

#include "device/backends.h"
#include "device/poison_list.h"
#include "base/safe_copy.h"
#include "device/read_section.h"
#include "poise/device.h"

namespace poise {

namespace {
thread_local std::optional<BadRange> failed_read;  // see Device::take_failed_read
}  // namespace

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
  failed_read.reset();  // says only what this read met
  if (PoisonList* poison = emulated_poison()) {
    if (auto bad = poison->first_overlap(offset, length)) {
      return fail(EIO, describe() + ": device bytes " + std::to_string(bad->offset_bytes) + ".." +
                           std::to_string(bad->offset_bytes + bad->length_bytes) + " are poisoned");
    }
  }
  ReadSection section;
  if (state() != DeviceState::Alive) return fail(ENXIO, describe() + ": the device is being removed");
  if (auto fault = copy_or_fault(dst, data() + offset, length)) {
    const uint64_t granule = 1ull << fault->addr_lsb;
    const uint64_t at = (fault->addr - reinterpret_cast<uintptr_t>(data())) & ~(granule - 1);
    failed_read = BadRange{at, granule};
    return fail(EIO, describe() + ": device bytes " + std::to_string(at) + ".." + std::to_string(at + granule) +
                         " failed under a read (" +
                         (fault->code == BUS_MCEERR_AR || fault->code == BUS_MCEERR_AO ? "machine check"
                                                                                        : "bus error") +
                         ")");
  }
  return {};
}

std::optional<BadRange> Device::take_failed_read() {
  auto out = failed_read;
  failed_read.reset();
  return out;
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
  TRY(save_poison());
  if (edit == PoisonEdit::Inject) {
    std::shared_lock lock(holder_mutex_);
    if (poison_listener_ != nullptr) poison_listener_->poison_planted(offset, length);
  }
  return {};
}

Result<void> Device::inject_poison(uint64_t offset, uint64_t length) {
  return edit_poison(offset, length, PoisonEdit::Inject);
}

Result<void> Device::clear_poison(uint64_t offset, uint64_t length) {
  return edit_poison(offset, length, PoisonEdit::Clear);
}

std::optional<BadRange> Device::first_poisoned(uint64_t offset, uint64_t length) const {
  PoisonList* poison = emulated_poison();
  return poison == nullptr ? std::nullopt : poison->first_overlap(offset, length);
}

Result<std::vector<BadRange>> Device::bad_ranges() const {
  PoisonList* poison = emulated_poison();
  return poison == nullptr ? std::vector<BadRange>{} : poison->ranges();
}

Result<void> Device::register_holder(FailureHolder* holder) {
  std::unique_lock lock(holder_mutex_);
  if (holder_ != nullptr && holder_ != holder) return fail(EBUSY, describe() + ": already held by a filesystem");
  holder_ = holder;
  return {};
}

void Device::unregister_holder(FailureHolder* holder) {
  std::unique_lock lock(holder_mutex_);
  if (holder_ == holder) holder_ = nullptr;
}

Result<void> Device::notify_failure(uint64_t offset, uint64_t length, FailureFlags flags) {
  if (offset >= size_bytes() || length == 0) return fail(EINVAL, "failure range outside the device");
  length = std::min(length, size_bytes() - offset);  // "to the end" may be given as UINT64_MAX
  std::shared_lock lock(holder_mutex_);
  if (holder_ == nullptr) return fail(ENXIO, describe() + ": no filesystem holds this device");
  return holder_->notify_failure(offset, length, flags);
}

void Device::set_poison_listener(PoisonListener* listener) {
  std::unique_lock lock(holder_mutex_);
  poison_listener_ = listener;
}

Result<void> Device::pre_remove() {
  if (state() != DeviceState::Alive) return fail(ENXIO, describe() + ": removal has already begun");
  return notify_failure(0, size_bytes(), FailureFlags::PreRemove);
}

void Device::cancel_removal() {
  std::shared_lock lock(holder_mutex_);
  if (state() == DeviceState::Alive && holder_ != nullptr) holder_->removal_cancelled();
}

Result<void> Device::remove() {
  DeviceState expected = DeviceState::Alive;
  if (!state_.compare_exchange_strong(expected, DeviceState::Dying)) {
    return fail(ENXIO, describe() + ": removal has already begun");
  }
  // New accesses now fail; the holder revokes the existing ones, waits for its
  // pins and stops. EDEADLK (the caller itself holds a pin) changes nothing.
  {
    std::shared_lock lock(holder_mutex_);
    if (holder_ != nullptr) {
      auto told = holder_->notify_failure(0, size_bytes(), FailureFlags::Remove);
      if (!told.has_value() && told.error().code == EDEADLK) {
        state_.store(DeviceState::Alive, std::memory_order_release);
        return told;
      }
    }
  }
  ReadSection::wait_for_readers();  // accesses that began before Dying are done
  state_.store(DeviceState::Dead, std::memory_order_release);
  return {};
}

void keep_from_children(void* base, uint64_t length) {
  // Fails only for a range that is not mapped: a programmer error.
  POISE_ASSERT(::madvise(base, length, MADV_DONTFORK) == 0);
}

Result<std::unique_ptr<Device>> open_device(const std::string& path,
                                            const OpenDeviceOptions& options) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISCHR(st.st_mode)) {
    if (options.size_bytes != 0) {
      return fail(EINVAL, path + ": the size of a device-dax device is fixed; drop --size");
    }
    return open_dax_device(path, options.access);
  }
  return open_file_device(path, options);
}

}  // namespace poise
