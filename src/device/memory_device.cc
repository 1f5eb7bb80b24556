#include "device/memory_device.h"
#include "device/backends.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

namespace poise {

std::byte* map_anonymous(uint64_t size_bytes) {
  void* p = ::mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  POISE_ASSERT(p != MAP_FAILED);
  // Device memory (device-dax, pmem) is mapped in 2 MiB pages; ask for the same
  // so that tests and benchmarks do not measure 4 KiB page faults instead.
  ::madvise(p, size_bytes, MADV_HUGEPAGE);
  return static_cast<std::byte*>(p);
}

void unmap_anonymous(std::byte* base, uint64_t size_bytes) { ::munmap(base, size_bytes); }

MemoryDevice::MemoryDevice(uint64_t size_bytes, Backing backing) : base_(nullptr), size_(size_bytes) {
  POISE_ASSERT(size_bytes % 4096 == 0);
  if (backing == Backing::Private) {
    base_ = map_anonymous(size_bytes);
    return;
  }
  fd_ = ::memfd_create("poise-memory-device", MFD_CLOEXEC);
  POISE_ASSERT(fd_ >= 0);
  POISE_ASSERT(::ftruncate(fd_, static_cast<off_t>(size_bytes)) == 0);
  void* p = ::mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd_, 0);
  POISE_ASSERT(p != MAP_FAILED);
  base_ = static_cast<std::byte*>(p);
  keep_from_children(base_, size_bytes);
}

std::unique_ptr<MemoryDevice> MemoryDevice::copy_of(const std::byte* image, uint64_t size_bytes,
                                                   PersistenceDomain domain) {
  auto device = std::make_unique<MemoryDevice>(size_bytes);
  device->domain_ = domain;
  // Fresh anonymous memory reads as zeros: copy only pages that hold something,
  // so a mostly empty image costs no page faults.
  static const std::byte kZeros[4096] = {};
  for (uint64_t off = 0; off < size_bytes; off += 4096) {
    if (std::memcmp(image + off, kZeros, 4096) != 0) std::memcpy(device->base_ + off, image + off, 4096);
  }
  return device;
}

Result<std::unique_ptr<MemoryDevice>> MemoryDevice::private_view_of(const Device& device) {
  const uint64_t size = device.size_bytes();
  std::unique_ptr<MemoryDevice> view;
  if (device.map_fd() >= 0) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, device.map_fd(), 0);
    if (p != MAP_FAILED) {
      view.reset(new MemoryDevice(Adopt{}, static_cast<std::byte*>(p), size));
      keep_from_children(view->base_, size);
    }
  }
  if (view == nullptr) view = copy_of(device.data(), size);
  view->domain_ = device.domain();
  for (const BadRange& b : TRY(device.bad_ranges())) TRY(view->inject_poison(b.offset_bytes, b.length_bytes));
  return view;
}

MemoryDevice::~MemoryDevice() {
  unmap_anonymous(base_, size_);
  if (fd_ >= 0) ::close(fd_);
}

std::string MemoryDevice::describe() const {
  return "memory device of " + std::to_string(size_) + " bytes";
}

void MemoryDevice::write(uint64_t offset, const void* src, size_t length) {
  check_range(offset, length);
  std::memcpy(base_ + offset, src, length);
}

void MemoryDevice::fill(uint64_t offset, int byte, size_t length) {
  check_range(offset, length);
  std::memset(base_ + offset, byte, length);
}

void MemoryDevice::drain() { std::atomic_thread_fence(std::memory_order_seq_cst); }

}  // namespace poise
