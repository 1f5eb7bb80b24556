// The emulated device: a regular file, created sparse, mapped MAP_SHARED. Stores
// use libpmem's non-temporal copy and cache-line write-back so the ordering code
// paths are the ones real persistent memory runs; sync() adds msync of the file
// because a page-cache-backed mapping is only crash-safe after that.
#include <fcntl.h>
#include <libpmem.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "device/backends.h"
#include "device/poison_list.h"

namespace poise {

std::string poison_path(const std::string& image);

namespace {

std::string errno_text(int code) { return std::strerror(code); }
constexpr uint64_t kPrepareBytesMin = 64 << 10;  // below this the page faults cost less than the call
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

class FileDevice final : public Device {
 public:
  FileDevice(std::string path, int fd, std::byte* base, uint64_t size, PoisonList poison, DeviceAccess access)
      : path_(std::move(path)), fd_(fd), base_(base), size_(size), poison_(std::move(poison)), access_(access) {}
  ~FileDevice() override {
    ::munmap(base_, size_);
    ::close(fd_);  // also drops the flock
  }

  uint64_t size_bytes() const override { return size_; }
  PersistenceDomain domain() const override { return PersistenceDomain::PageCache; }
  uint64_t alignment_bytes() const override { return 4096; }
  std::string describe() const override { return "emulated device on file " + path_; }
  const std::byte* data() const override { return base_; }
  std::byte* data() override { return base_; }
  int map_fd() const override { return fd_; }

  void write(uint64_t offset, const void* src, size_t length) override {
    check_range(offset, length);
    POISE_ASSERT(access_ == DeviceAccess::ReadWrite);
    pmem_memcpy_nodrain(base_ + offset, src, length);
  }
  void fill(uint64_t offset, int byte, size_t length) override {
    check_range(offset, length);
    POISE_ASSERT(access_ == DeviceAccess::ReadWrite);
    pmem_memset_nodrain(base_ + offset, byte, length);
  }
  void prepare_store(uint64_t offset, uint64_t length) override {
    check_range(offset, length);
    if (access_ == DeviceAccess::ReadOnly || length < kPrepareBytesMin) return;
    const uint64_t start = offset / 4096 * 4096;
    // Best effort: an old kernel without MADV_POPULATE_WRITE (5.14) faults page by page instead.
    (void)::madvise(base_ + start, (offset + length - start + 4095) / 4096 * 4096, MADV_POPULATE_WRITE);
  }
  void flush(uint64_t offset, size_t length) override {
    check_range(offset, length);
    pmem_flush(base_ + offset, length);
  }
  void drain() override { pmem_drain(); }
  Result<void> sync_range(uint64_t offset, uint64_t length) override {
    check_range(offset, length);
    if (access_ == DeviceAccess::ReadOnly || length == 0) return {};
    pmem_drain();
    const uint64_t start = offset / 4096 * 4096;  // msync takes page-aligned addresses
    if (::msync(base_ + start, offset + length - start, MS_SYNC) != 0) {
      int e = errno;
      return fail(e, path_ + ": msync failed: " + errno_text(e));
    }
    return {};
  }
  Result<void> sync() override {
    if (access_ == DeviceAccess::ReadOnly) return {};  // nothing was stored
    pmem_drain();
    if (::msync(base_, size_, MS_SYNC) != 0) {
      int e = errno;
      return fail(e, path_ + ": msync failed: " + errno_text(e));
    }
    return {};
  }

 protected:
  PoisonList* emulated_poison() const override { return &poison_; }
  // Written to a temporary file and renamed over the old list: never half-written.
  Result<void> save_poison() override {
    std::string list = poison_path(path_);
    std::string temp = list + ".tmp";
    std::string text = poison_.to_text();
    int fd = open_above_stdio(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return fail(errno, list + ": cannot write the poison list: " + errno_text(errno));
    bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
    ::close(fd);
    if (!ok || ::rename(temp.c_str(), list.c_str()) != 0) {
      return fail(EIO, list + ": cannot write the poison list");
    }
    return {};
  }

 private:
  std::string path_;
  int fd_;
  std::byte* base_;
  uint64_t size_;
  mutable PoisonList poison_;
  DeviceAccess access_;
};

}  // namespace

std::string poison_path(const std::string& image) { return image + ".poison"; }

// Reads the emulated hardware error list kept beside the image (none: healthy).
Result<PoisonList> load_poison(const std::string& image, uint64_t device_bytes) {
  std::string list = poison_path(image);
  int fd = open_above_stdio(list.c_str(), O_RDONLY);
  if (fd < 0) {
    if (errno == ENOENT) return PoisonList();
    return fail(errno, list + ": cannot read the poison list: " + errno_text(errno));
  }
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  ::close(fd);
  auto parsed = PoisonList::from_text(text, device_bytes);
  if (!parsed.has_value()) return fail(parsed.error().code, list + ": " + parsed.error().message);
  return std::move(*parsed);
}

int open_above_stdio(const char* path, int flags, mode_t mode) {
  int fd = ::open(path, flags | O_CLOEXEC, mode);
  if (fd < 0 || fd > STDERR_FILENO) return fd;
  int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
  int e = errno;
  ::close(fd);
  errno = e;
  return moved;
}

namespace {

Result<void> check_image_size(const std::string& path, uint64_t size) {
  if (size < kDeviceSizeMin) {
    return fail(EINVAL, path + ": image is " + std::to_string(size) + " bytes; a device needs at least 16 MiB");
  }
  if (size % 4096 != 0) {
    return fail(EINVAL, path + ": image size " + std::to_string(size) + " is not a multiple of 4096 bytes");
  }
  return {};
}

// Makes the host filesystem back every byte of the image, so that no store into
// the mapping can fault for lack of host space later (see Backing::Reserved).
Result<void> reserve_backing(const std::string& path, int fd, const struct stat& st, uint64_t size, bool created) {
  if (static_cast<uint64_t>(st.st_blocks) * 512 >= size) return {};  // no holes left
  int e = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
  if (e == 0) return {};
  if (e == ENOSPC || e == EDQUOT) {
    return fail(ENOSPC, path + ": the host filesystem holding the image is full: it cannot back the image's " +
                            std::to_string(size) + " bytes (free space there" +
                            (created ? ")" : "; read-only commands still work)"));
  }
  return fail(e, path + ": cannot reserve the image's backing on the host filesystem: " + errno_text(e));
}

// On tmpfs even a load from a hole of a shared mapping allocates a page, and
// faults with SIGBUS when there is none: a sparse image on a tmpfs that is full
// (less free than its holes, and under 64 MiB) cannot be read safely, so it is
// refused up front. Other filesystems map holes to the zero page on a read.
Result<void> check_holes_readable(const std::string& path, int fd, const struct stat& st, uint64_t size) {
  constexpr long kTmpfsMagic = 0x01021994;
  const uint64_t backed = static_cast<uint64_t>(st.st_blocks) * 512;
  if (backed >= size) return {};
  struct statfs host {};
  if (::fstatfs(fd, &host) != 0 || host.f_type != kTmpfsMagic) return {};
  constexpr uint64_t kRoomForReads = 64ull << 20;  // what a read-only command may fault in
  const uint64_t holes = size - backed;
  const uint64_t available = static_cast<uint64_t>(host.f_bavail) * static_cast<uint64_t>(host.f_bsize);
  if (holes <= available || available >= kRoomForReads) return {};
  return fail(ENOSPC, path + ": the image is sparse on a tmpfs that is full: reading its " + std::to_string(holes) +
                          " bytes of holes needs memory the host filesystem does not have (free space there)");
}

}  // namespace

Result<std::unique_ptr<Device>> open_file_device(const std::string& path, const OpenDeviceOptions& options) {
  const bool read_only = options.access == DeviceAccess::ReadOnly;
  POISE_ASSERT(!(read_only && options.size_bytes != 0));
  if (options.size_bytes != 0) TRY(check_image_size(path, options.size_bytes));
  int flags = read_only ? O_RDONLY : O_RDWR;
  int fd = open_above_stdio(path.c_str(), flags);
  bool created = false;
  if (fd < 0 && errno == ENOENT && options.create == CreateMode::CreateIfMissing) {
    fd = open_above_stdio(path.c_str(), flags | O_CREAT | O_EXCL, 0644);
    created = fd >= 0;
  }
  if (fd < 0) {
    int e = errno;
    if (e == EROFS) {  // the host's filesystem, not poise's format: a plain permission problem
      return fail(EACCES, path + ": the image is on a read-only filesystem; only read-only commands can use it");
    }
    return fail(e, path + ": cannot open image: " + errno_text(e));
  }
  // A failed open leaves no file it created behind.
  auto close_with = [&](int code, std::string message) {
    ::close(fd);
    if (created) ::unlink(path.c_str());
    return fail(code, std::move(message));
  };
  struct stat st {};
  if (::fstat(fd, &st) != 0) return close_with(errno, path + ": fstat failed");
  if (!S_ISREG(st.st_mode)) {
    return close_with(EINVAL, path + ": not a regular file or a device-dax character device");
  }
  if (::flock(fd, (read_only ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
    return close_with(EBUSY, path + ": image is in use by another poise process");
  }
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (options.size_bytes != 0 && options.size_bytes != size) {
    if (::ftruncate(fd, static_cast<off_t>(options.size_bytes)) != 0) {
      int e = errno;
      return close_with(e == EFBIG ? ENOSPC : e,
                        path + ": cannot size image to " + std::to_string(options.size_bytes) +
                            " bytes: " + errno_text(e));
    }
    size = options.size_bytes;
  }
  if (auto valid = check_image_size(path, size); !valid.has_value()) {
    return close_with(valid.error().code, valid.error().message);
  }
  if (!read_only && options.backing == Backing::Reserved) {
    if (auto reserved = reserve_backing(path, fd, st, size, created); !reserved.has_value()) {
      if (created || options.size_bytes != 0) (void)::ftruncate(fd, st.st_size);  // leave the old size
      return close_with(reserved.error().code, reserved.error().message);
    }
  }
  if (read_only) {  // a read-write open reserves the holes, or was told to leave them (Sparse)
    if (auto readable = check_holes_readable(path, fd, st, size); !readable.has_value()) {
      return close_with(readable.error().code, readable.error().message);
    }
  }
  auto poison = load_poison(path, size);
  if (!poison.has_value()) return close_with(poison.error().code, poison.error().message);
  int prot = read_only ? PROT_READ : PROT_READ | PROT_WRITE;
  void* base = ::mmap(nullptr, size, prot, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (base == MAP_FAILED) {
    int e = errno;
    return close_with(e, path + ": mmap failed: " + errno_text(e));
  }
  keep_from_children(base, size);
  return std::unique_ptr<Device>(
      new FileDevice(path, fd, static_cast<std::byte*>(base), size, std::move(*poison), options.access));
}

}  // namespace poise
