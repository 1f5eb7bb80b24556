#include "device/crash_device.h"

#include <cstring>

#include "base/random.h"

namespace poise {

CrashDevice::CrashDevice(uint64_t size_bytes)
    : size_(size_bytes), live_(map_anonymous(size_bytes)), durable_(map_anonymous(size_bytes)) {
  POISE_ASSERT(size_bytes % 4096 == 0);
}

CrashDevice::~CrashDevice() {
  unmap_anonymous(live_, size_);
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
  return MemoryDevice::copy_of(captured_, size_);
}

std::unique_ptr<MemoryDevice> CrashDevice::durable_image() const {
  std::lock_guard lock(mutex_);
  return MemoryDevice::copy_of(durable_, size_);
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
  for (uint64_t line = first; line < end; line += kLine) {
    PendingLine& p = pending_.emplace_back();
    p.offset = line;
    std::memcpy(p.bytes, live_ + line, kLine);
  }
}

void CrashDevice::drain() {
  std::lock_guard lock(mutex_);
  ++drains_;
  if (drains_ == crash_at_ && captured_ == nullptr) {
    captured_ = map_anonymous(size_);
    std::memcpy(captured_, durable_, size_);
    Rng rng(seed_ ^ drains_);
    for (const PendingLine& p : pending_) {
      if (rng.chance(2)) std::memcpy(captured_ + p.offset, p.bytes, kLine);
    }
  }
  for (const PendingLine& p : pending_) std::memcpy(durable_ + p.offset, p.bytes, kLine);
  pending_.clear();
}

Result<void> CrashDevice::sync() {
  drain();
  return {};
}

}  // namespace poise
