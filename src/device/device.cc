#include <sys/stat.h>

#include <cstring>

#include "device/backends.h"
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
  std::memcpy(dst, data() + offset, length);
  return {};
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
