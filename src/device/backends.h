// Constructors of the concrete device backends, for open_device() to choose from.
// Thread-safety: see poise/device.h.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

#include "poise/device.h"

namespace poise {

// An emulated device on a regular file (sparse, mapped shared, locked).
Result<std::unique_ptr<Device>> open_file_device(const std::string& path,
                                                 const OpenDeviceOptions& options);

// Where an emulated device keeps its poison list: IMAGE.poison.
std::string poison_path(const std::string& image);

// A device-dax character device, mapped through libpmem2.
Result<std::unique_ptr<Device>> open_dax_device(const std::string& path,
                                                DeviceAccess access = DeviceAccess::ReadWrite);

// Marks a shared mapping of device memory MADV_DONTFORK: a fork()ed child gets
// none of it, so a copy of the filesystem in the child (its destructors at
// exit, say) faults instead of writing into the parent's live device.
void keep_from_children(void* base, uint64_t length);

// open(2) that never returns 0, 1 or 2 (a closed standard stream must not become
// the image): a low descriptor is moved above 2. Sets errno on failure.
int open_above_stdio(const char* path, int flags, mode_t mode = 0);

}  // namespace poise
