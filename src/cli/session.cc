#include <fmt/format.h>

#include <sys/stat.h>

#include <cstring>

#include "cli/cli.h"
#include "cli/exit_codes.h"
#include "cli/sizes.h"

namespace poise::cli {

int report(const std::string& context, const Error& error) {
  // Plain stdio: a failing stderr must not turn an error report into an exception.
  std::string text = fmt::format("poise: {}: {}\n", context, error.message);
  end_progress_line();
  std::fputs(text.c_str(), stderr);
  last_reported_error = error.code;
  return exit_code_for(error.code);
}

const CLI::Validator kNonEmptyPath(
    [](std::string& path) { return path.empty() ? std::string("an empty path names nothing (the root is /)") : ""; },
    "PATH");

const CLI::Validator kNonEmptyValue(
    [](std::string& value) { return value.empty() ? std::string("an empty value") : ""; }, "VALUE");

std::optional<uint64_t> parse_byte_count(const std::string& option, const std::string& text) {
  auto value = parse_size(text);
  if (!value) {
    eprint("poise: {} takes a byte count below 2^64 (4096, 64K, 8M, ...), not '{}'\n", option, text);
  }
  return value;
}

bool is_the_image(const std::string& local, const std::string& image) {
  struct stat a {}, b {};
  int got = local == "-" ? -1 : ::stat(local.c_str(), &a);
  if (got != 0) return false;
  if (::stat(image.c_str(), &b) != 0) return false;
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

bool stream_is_the_image(int fd, const std::string& image) {
  struct stat a {}, b {};
  if (::fstat(fd, &a) != 0 || ::stat(image.c_str(), &b) != 0) return false;
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

bool stdin_was_closed = false;
bool stdout_was_closed = false;
bool output_error_reported = false;
int last_reported_error = 0;
bool progress_line_open = false;

int report(const Error& error) {
  std::string text = fmt::format("poise: {}\n", error.message);
  end_progress_line();
  std::fputs(text.c_str(), stderr);
  last_reported_error = error.code;
  return exit_code_for(error.code);
}

int open_session(const std::string& image, MountMode mode, Session* out) {
  OpenDeviceOptions device_options;
  device_options.access = mode == MountMode::ReadOnly ? DeviceAccess::ReadOnly : DeviceAccess::ReadWrite;
  auto device = open_device(image, device_options);
  if (!device.has_value()) return report(device.error());  // the message names the image
  MountOptions options;
  options.mode = mode;
  auto fs = Filesystem::mount(**device, options);
  if (!fs.has_value()) return report(image, fs.error());
  // Transactions a read-write mount is about to erase for good (or a read-only
  // one shows without) are said on every command, not only by check.
  for (const std::string& warning : (*fs)->mount_warnings()) eprint("poise: warning: {}\n", warning);
  out->device = std::move(*device);
  out->fs = std::move(*fs);
  return kExitOk;
}

std::string socket_option;

int connect_if_served(const std::string& image, std::unique_ptr<RemoteFilesystem>* out) {
  const bool explicit_socket = !socket_option.empty();
  const std::string path = explicit_socket ? socket_option : default_socket_path(image);
  struct stat st {};
  if (!explicit_socket && (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode))) return kExitOk;
  auto remote = connect(path);
  if (remote.has_value()) {
    // A socket beside the image could have been bound by anyone who may write
    // that directory: only root, the image's owner or this user is believed.
    struct stat image_st {};
    const uint32_t server = (*remote)->server_uid();
    const bool owner = ::stat(image.c_str(), &image_st) == 0 && image_st.st_uid == server;
    if (server != 0 && server != ::geteuid() && !owner) {
      eprint("poise: {}: answered by a process of uid {}, which is not root, the image's owner or you: not trusted\n",
             path, server);
      return kExitDenied;
    }
    *out = std::move(*remote);
    return kExitOk;
  }
  // A socket left by a server that died: the image is used directly.
  if (!explicit_socket && remote.error().code == ECONNREFUSED) return kExitOk;
  return report(remote.error());
}

int refuse_if_served(const std::string& image, const char* command) {
  std::unique_ptr<RemoteFilesystem> remote;
  if (int code = connect_if_served(image, &remote); code != kExitOk) return code;
  if (!remote) return kExitOk;
  eprint("poise: {}: {} is served by poise serve (pid {}); stop the server first\n", command, image,
         remote->server_pid());
  return kExitBusy;
}

int with_mounted(const std::string& image, MountMode mode, const std::function<int(Filesystem&)>& fn) {
  std::unique_ptr<RemoteFilesystem> remote;
  if (int code = connect_if_served(image, &remote); code != kExitOk) return code;
  if (remote) {
    int code = fn(*remote);
    (void)remote->unmount();
    return code;
  }
  Session session;
  if (int code = open_session(image, mode, &session); code != kExitOk) return code;
  int code = fn(*session.fs);
  int closed = close_session(session);
  return code != kExitOk ? code : closed;
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
