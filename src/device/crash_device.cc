#include "device/crash_device.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "base/random.h"
#include "device/backends.h"

namespace poise {

namespace {
// Zeroed memory in a memfd, mapped shared; its descriptor in *fd.
std::byte* map_shareable(uint64_t size_bytes, int* fd) {
  *fd = ::memfd_create("poise-crash-device", MFD_CLOEXEC);
  POISE_ASSERT(*fd >= 0);
  POISE_ASSERT(::ftruncate(*fd, static_cast<off_t>(size_bytes)) == 0);
  void* p = ::mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, *fd, 0);
  POISE_ASSERT(p != MAP_FAILED);
  keep_from_children(p, size_bytes);
  return static_cast<std::byte*>(p);
}
}  // namespace

CrashDevice::CrashDevice(uint64_t size_bytes, Model model, bool shareable)
    : model_(model),
      size_(size_bytes),
      live_(shareable ? map_shareable(size_bytes, &fd_) : map_anonymous(size_bytes)),
      durable_(map_anonymous(size_bytes)) {
  POISE_ASSERT(size_bytes % 4096 == 0);
}

CrashDevice::~CrashDevice() {
  if (fd_ >= 0) {
    ::munmap(live_, size_);
    ::close(fd_);
  } else {
    unmap_anonymous(live_, size_);
  }
  unmap_anonymous(durable_, size_);
  if (captured_ != nullptr) unmap_anonymous(captured_, size_);
}

void CrashDevice::arm(uint64_t flush_point, uint64_t seed) {
  std::lock_guard lock(mutex_);
  POISE_ASSERT(flush_point > 0);
  crash_at_ = flush_point;
  seed_ = seed;
}

uint64_t CrashDevice::flush_points() const {
  std::lock_guard lock(mutex_);
  return drains_;
}

bool CrashDevice::crashed() const {
  std::lock_guard lock(mutex_);
  return captured_ != nullptr;
}

std::unique_ptr<MemoryDevice> CrashDevice::crash_image() const {
  std::lock_guard lock(mutex_);
  POISE_ASSERT(captured_ != nullptr);
  return MemoryDevice::copy_of(captured_, size_, domain());
}

std::unique_ptr<MemoryDevice> CrashDevice::durable_image() const {
  std::lock_guard lock(mutex_);
  return MemoryDevice::copy_of(durable_, size_, domain());
}

void CrashDevice::write(uint64_t offset, const void* src, size_t length) {
  check_range(offset, length);
  std::memcpy(live_ + offset, src, length);
  flush(offset, length);
}

void CrashDevice::fill(uint64_t offset, int byte, size_t length) {
  check_range(offset, length);
  std::memset(live_ + offset, byte, length);
  flush(offset, length);
}

void CrashDevice::flush(uint64_t offset, size_t length) {
  check_range(offset, length);
  if (length == 0) return;
  uint64_t first = offset / kLine * kLine;
  uint64_t end = offset + length;
  std::lock_guard lock(mutex_);
  if (model_ == Model::PageCache) {  // a store dirties pages; only write-back makes them durable
    for (uint64_t page = offset / 4096; page * 4096 < end; ++page) dirty_pages_.insert(page);
    return;
  }
  for (uint64_t line = first; line < end; line += kLine) {
    PendingLine& p = pending_.emplace_back();
    p.offset = line;
    std::memcpy(p.bytes, live_ + line, kLine);
  }
}

void CrashDevice::flush_point_locked() {
  ++drains_;
  if (drains_ != crash_at_ || captured_ != nullptr) return;
  captured_ = map_anonymous(size_);
  std::memcpy(captured_, durable_, size_);
  Rng rng(seed_ ^ drains_);
  if (model_ == Model::PageCache) {
    for (uint64_t page : dirty_pages_) {  // the kernel may have written back any of them
      if (rng.chance(2)) std::memcpy(captured_ + page * 4096, live_ + page * 4096, 4096);
    }
    return;
  }
  constexpr uint64_t kWord = 8;  // the failure-atomic unit of persistent memory
  for (const PendingLine& p : pending_) {
    switch (rng.below(3)) {
      case 0: break;  // lost
      case 1: std::memcpy(captured_ + p.offset, p.bytes, kLine); break;
      default:  // torn: each 8-byte word on its own
        for (uint64_t w = 0; w < kLine; w += kWord) {
          if (rng.chance(2)) std::memcpy(captured_ + p.offset + w, p.bytes + w, kWord);
        }
    }
  }
}

void CrashDevice::write_back_locked(uint64_t offset, uint64_t length) {
  const uint64_t first = offset / 4096;
  const uint64_t end = (offset + length + 4095) / 4096;
  auto it = dirty_pages_.lower_bound(first);
  while (it != dirty_pages_.end() && *it < end) {
    std::memcpy(durable_ + *it * 4096, live_ + *it * 4096, 4096);
    it = dirty_pages_.erase(it);
  }
}

void CrashDevice::drain() {
  std::lock_guard lock(mutex_);
  flush_point_locked();
  if (model_ == Model::PageCache) return;  // a fence orders nothing in the page cache
  for (const PendingLine& p : pending_) std::memcpy(durable_ + p.offset, p.bytes, kLine);
  pending_.clear();
}

Result<void> CrashDevice::sync_range(uint64_t offset, uint64_t length) {
  check_range(offset, length);
  if (model_ == Model::CacheLines) {
    drain();
    return {};
  }
  std::lock_guard lock(mutex_);
  flush_point_locked();
  write_back_locked(offset, length);
  return {};
}

Result<void> CrashDevice::sync() {
  if (model_ == Model::CacheLines) {
    drain();
    return {};
  }
  return sync_range(0, size_);
}

}  // namespace poise
