// MemoryDevice: a device in anonymous memory, for tests and benchmarks. Reserved
// with MAP_NORESERVE, so a 1 TiB device costs only the pages touched. Stores are
// plain copies; drain() is a fence. Nothing survives the process.
// Private memory is fastest (transparent huge pages); Shared memory lives in a
// memfd, which files can be mapped from directly (map_fd()).
// Thread-safety: as poise/device.h.
#pragma once

#include <memory>

#include "device/poison_list.h"
#include "poise/device.h"

namespace poise {

class MemoryDevice final : public Device {
 public:
  enum class Backing : uint8_t { Private, Shared };
  // REQUIRES: size_bytes is a multiple of 4096.
  explicit MemoryDevice(uint64_t size_bytes, Backing backing = Backing::Private);
  // A device holding a copy of `image` (for mounting a captured crash state).
  // `domain` is what the copy reports: a captured page-cache crash state mounts
  // as the emulated device it came from would.
  static std::unique_ptr<MemoryDevice> copy_of(const std::byte* image, uint64_t size_bytes,
                                               PersistenceDomain domain = PersistenceDomain::CpuCache);
  // A private copy-on-write view of `device` (its memory mapped MAP_PRIVATE, or
  // copied where it has no descriptor), with the same bad ranges: stores to the
  // view never reach the device. For dry runs.
  static Result<std::unique_ptr<MemoryDevice>> private_view_of(const Device& device);
  ~MemoryDevice() override;
  MemoryDevice(const MemoryDevice&) = delete;
  MemoryDevice& operator=(const MemoryDevice&) = delete;

  uint64_t size_bytes() const override { return size_; }
  PersistenceDomain domain() const override { return domain_; }
  uint64_t alignment_bytes() const override { return 4096; }
  std::string describe() const override;
  const std::byte* data() const override { return base_; }
  std::byte* data() override { return base_; }
  int map_fd() const override { return fd_; }
  // Tests: stand in for real memory, whose failures arrive as machine checks.
  void set_reports_machine_checks(bool on) { reports_machine_checks_ = on; }
  bool reports_machine_checks() const override { return reports_machine_checks_; }
  void write(uint64_t offset, const void* src, size_t length) override;
  void fill(uint64_t offset, int byte, size_t length) override;
  void flush(uint64_t, size_t) override {}
  void drain() override;
  Result<void> sync() override { return {}; }

 protected:
  PoisonList* emulated_poison() const override { return &poison_; }

 private:
  bool reports_machine_checks_ = false;
  mutable PoisonList poison_;
  std::byte* base_;
  uint64_t size_;
  int fd_ = -1;  // the memfd of Shared memory
  PersistenceDomain domain_ = PersistenceDomain::CpuCache;
  struct Adopt {};
  MemoryDevice(Adopt, std::byte* base, uint64_t size_bytes) : base_(base), size_(size_bytes) {}
};

// Anonymous, zero-filled, lazily backed memory; aborts if the address space is gone.
std::byte* map_anonymous(uint64_t size_bytes);
void unmap_anonymous(std::byte* base, uint64_t size_bytes);

}  // namespace poise
