// The emulated device: a regular file, created sparse, mapped MAP_SHARED. Stores
// use libpmem's non-temporal copy and cache-line write-back so the ordering code
// paths are the ones real persistent memory runs; sync() adds msync of the file
// because a page-cache-backed mapping is only crash-safe after that.
#include <fcntl.h>
#include <libpmem.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "device/backends.h"
#include "device/poison_list.h"

namespace poise {

std::string poison_path(const std::string& image);

namespace {

std::string errno_text(int code) { return std::strerror(code); }

class FileDevice final : public Device {
 public:
  FileDevice(std::string path, int fd, std::byte* base, uint64_t size, PoisonList poison)
      : path_(std::move(path)), fd_(fd), base_(base), size_(size), poison_(std::move(poison)) {}
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
    pmem_memcpy_nodrain(base_ + offset, src, length);
  }
  void fill(uint64_t offset, int byte, size_t length) override {
    check_range(offset, length);
    pmem_memset_nodrain(base_ + offset, byte, length);
  }
  void flush(uint64_t offset, size_t length) override {
    check_range(offset, length);
    pmem_flush(base_ + offset, length);
  }
  void drain() override { pmem_drain(); }
  Result<void> sync() override {
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
    int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
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
};

}  // namespace

std::string poison_path(const std::string& image) { return image + ".poison"; }

// Reads the emulated hardware error list kept beside the image (none: healthy).
Result<PoisonList> load_poison(const std::string& image, uint64_t device_bytes) {
  std::string list = poison_path(image);
  int fd = ::open(list.c_str(), O_RDONLY | O_CLOEXEC);
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

Result<std::unique_ptr<Device>> open_file_device(const std::string& path,
                                                 const OpenDeviceOptions& options) {
  int flags = O_RDWR | O_CLOEXEC;
  if (options.create == CreateMode::CreateIfMissing) flags |= O_CREAT;
  int fd = ::open(path.c_str(), flags, 0644);
  if (fd < 0) {
    int e = errno;
    return fail(e, path + ": cannot open image: " + errno_text(e));
  }
  auto close_with = [&](int code, std::string message) {
    ::close(fd);
    return fail(code, std::move(message));
  };
  struct stat st {};
  if (::fstat(fd, &st) != 0) return close_with(errno, path + ": fstat failed");
  if (!S_ISREG(st.st_mode)) {
    return close_with(EINVAL, path + ": not a regular file or a device-dax character device");
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
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
  if (size < kDeviceSizeMin) {
    return close_with(EINVAL, path + ": image is " + std::to_string(size) +
                                  " bytes; a device needs at least 16 MiB");
  }
  if (size % 4096 != 0) {
    return close_with(EINVAL, path + ": image size " + std::to_string(size) +
                                  " is not a multiple of 4096 bytes");
  }
  auto poison = load_poison(path, size);
  if (!poison.has_value()) return close_with(poison.error().code, poison.error().message);
  void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (base == MAP_FAILED) {
    int e = errno;
    return close_with(e, path + ": mmap failed: " + errno_text(e));
  }
  return std::unique_ptr<Device>(
      new FileDevice(path, fd, static_cast<std::byte*>(base), size, std::move(*poison)));
}

}  // namespace poise
