// A device-dax character device (/dev/daxX.Y). libpmem2 maps it with the
// namespace's alignment, tells the store granularity (byte = eADR, cache line =
// ADR) and hands out the matching persist primitives and the kernel's bad-block
// list for the namespace.
#include <fcntl.h>
#include <libpmem2.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "device/backends.h"

namespace poise {
namespace {

std::string pmem2_text(int code) {
  const char* msg = pmem2_errormsg();
  return msg != nullptr && *msg != '\0' ? msg : ("libpmem2 error " + std::to_string(code));
}

int pmem2_to_errno(int code) { return code < 0 && code > -4096 ? -code : EIO; }

class DaxDevice final : public Device {
 public:
  DaxDevice(std::string path, int fd, pmem2_source* source, pmem2_map* map, uint64_t alignment)
      : path_(std::move(path)), fd_(fd), source_(source), map_(map), alignment_(alignment) {
    base_ = static_cast<std::byte*>(pmem2_map_get_address(map_));
    size_ = pmem2_map_get_size(map_);
    keep_from_children(base_, size_);
    memcpy_ = pmem2_get_memcpy_fn(map_);
    memset_ = pmem2_get_memset_fn(map_);
    flush_ = pmem2_get_flush_fn(map_);
    drain_ = pmem2_get_drain_fn(map_);
    domain_ = pmem2_map_get_store_granularity(map_) == PMEM2_GRANULARITY_BYTE
                  ? PersistenceDomain::CpuCache
                  : PersistenceDomain::MemoryController;
  }
  ~DaxDevice() override {
    pmem2_map_delete(&map_);
    pmem2_source_delete(&source_);
    ::close(fd_);
  }

  uint64_t size_bytes() const override { return size_; }
  PersistenceDomain domain() const override { return domain_; }
  uint64_t alignment_bytes() const override { return alignment_; }
  std::string describe() const override { return "device-dax " + path_; }
  const std::byte* data() const override { return base_; }
  std::byte* data() override { return base_; }
  // The character device maps at any multiple of the namespace's alignment, so
  // direct mappings of files work where that alignment is 4 KiB (the mapping
  // layer refuses larger ones with a clear error).
  int map_fd() const override { return fd_; }
  bool reports_machine_checks() const override { return true; }

  void write(uint64_t offset, const void* src, size_t length) override {
    check_range(offset, length);
    memcpy_(base_ + offset, src, length, PMEM2_F_MEM_NODRAIN);
  }
  void fill(uint64_t offset, int byte, size_t length) override {
    check_range(offset, length);
    memset_(base_ + offset, byte, length, PMEM2_F_MEM_NODRAIN);
  }
  void flush(uint64_t offset, size_t length) override {
    check_range(offset, length);
    flush_(base_ + offset, length);
  }
  void drain() override { drain_(); }
  Result<void> sync() override {
    drain_();
    return {};
  }

  Result<std::vector<BadRange>> bad_ranges() const override {
    pmem2_badblock_context* context = nullptr;
    int rc = pmem2_badblock_context_new(&context, source_);
    if (rc != 0) return fail(pmem2_to_errno(rc), path_ + ": cannot read bad blocks: " + pmem2_text(rc));
    std::vector<BadRange> ranges;
    pmem2_badblock bad{};
    constexpr size_t kBadRangesMax = 1 << 20;
    while (pmem2_badblock_next(context, &bad) == 0) {
      if (ranges.size() == kBadRangesMax) {
        pmem2_badblock_context_delete(&context);
        return fail(E2BIG, path_ + ": more than 2^20 bad ranges reported");
      }
      ranges.push_back(BadRange{bad.offset, bad.length});
    }
    pmem2_badblock_context_delete(&context);
    return ranges;
  }

 private:
  std::string path_;
  int fd_;
  pmem2_source* source_;
  pmem2_map* map_;
  uint64_t alignment_;
  std::byte* base_ = nullptr;
  uint64_t size_ = 0;
  pmem2_memcpy_fn memcpy_ = nullptr;
  pmem2_memset_fn memset_ = nullptr;
  pmem2_flush_fn flush_ = nullptr;
  pmem2_drain_fn drain_ = nullptr;
  PersistenceDomain domain_ = PersistenceDomain::MemoryController;
};

}  // namespace

Result<std::unique_ptr<Device>> open_dax_device(const std::string& path, DeviceAccess access) {
  const bool read_only = access == DeviceAccess::ReadOnly;
  int fd = open_above_stdio(path.c_str(), read_only ? O_RDONLY : O_RDWR);
  if (fd < 0) {
    int e = errno;
    return fail(e, path + ": cannot open device-dax: " + std::strerror(e));
  }
  if (::flock(fd, (read_only ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
    ::close(fd);
    return fail(EBUSY, path + ": device is in use by another poise process");
  }
  pmem2_source* source = nullptr;
  pmem2_config* config = nullptr;
  pmem2_map* map = nullptr;
  size_t alignment = 0;
  auto give_up = [&](int rc, const char* what) {
    std::string message = path + ": " + what + ": " + pmem2_text(rc);
    if (config != nullptr) pmem2_config_delete(&config);
    if (source != nullptr) pmem2_source_delete(&source);
    ::close(fd);
    return fail(pmem2_to_errno(rc), message);
  };
  if (int rc = pmem2_source_from_fd(&source, fd); rc != 0) return give_up(rc, "not a DAX source");
  if (int rc = pmem2_source_alignment(source, &alignment); rc != 0) {
    return give_up(rc, "cannot read alignment");
  }
  if (int rc = pmem2_config_new(&config); rc != 0) return give_up(rc, "config");
  // Accept whatever the platform offers; the domain is reported from the map.
  if (int rc = pmem2_config_set_required_store_granularity(config, PMEM2_GRANULARITY_PAGE);
      rc != 0) {
    return give_up(rc, "granularity");
  }
  if (read_only) {
    if (int rc = pmem2_config_set_protection(config, PMEM2_PROT_READ); rc != 0) return give_up(rc, "protection");
  }
  if (int rc = pmem2_map_new(&map, config, source); rc != 0) return give_up(rc, "cannot map");
  pmem2_config_delete(&config);
  size_t size = pmem2_map_get_size(map);
  if (size < kDeviceSizeMin) {
    pmem2_map_delete(&map);
    return give_up(-EINVAL, "device is smaller than 16 MiB");
  }
  return std::unique_ptr<Device>(new DaxDevice(path, fd, source, map, alignment));
}

}  // namespace poise
