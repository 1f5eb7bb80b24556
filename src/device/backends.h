// Constructors of the concrete device backends, for open_device() to choose from.
// Thread-safety: see poise/device.h.
#pragma once

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
Result<std::unique_ptr<Device>> open_dax_device(const std::string& path);

}  // namespace poise
