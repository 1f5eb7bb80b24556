#include <fmt/format.h>

#include <cstring>

#include "cli/cli.h"
#include "cli/exit_codes.h"

namespace poise::cli {

int report(const std::string& context, const Error& error) {
  fmt::print(stderr, "poise: {}: {}\n", context, error.message);
  return exit_code_for(error.code);
}

int open_session(const std::string& image, MountMode mode, Session* out) {
  auto device = open_device(image);
  if (!device.has_value()) return report("cannot open image", device.error());
  MountOptions options;
  options.mode = mode;
  auto fs = Filesystem::mount(**device, options);
  if (!fs.has_value()) return report(image, fs.error());
  out->device = std::move(*device);
  out->fs = std::move(*fs);
  return kExitOk;
}

int close_session(Session& session) {
  int code = kExitOk;
  if (session.fs) {
    auto r = session.fs->unmount();
    if (!r.has_value()) code = report("unmount", r.error());
  }
  session.fs.reset();
  session.device.reset();
  return code;
}

}  // namespace poise::cli
