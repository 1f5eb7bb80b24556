// poise serve: mount an image once and serve it to many processes over a Unix
// socket (src/serve/, docs/protocol.md), and with --mount to ordinary programs
// through a FUSE mount (src/fuse/). Other poise commands on the image then go
// through the server (session.cc). poise mount and poise umount are the short
// forms for a mount.
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "cli/cli.h"
#include "cli/exit_codes.h"
#include "cli/sizes.h"
#include "fuse/mount.h"
#include "serve/server.h"

namespace poise::cli {

namespace {

struct Args {
  std::string image, socket, socket_mode = "0600", socket_group, log, recall_timeout = "1000";
  bool background = false;
  std::string mount_dir;      // --mount DIR
  std::string mount_options;  // -o OPTIONS
  bool quiet_ready = false;   // poise mount: nothing printed once ready
};

// -o ro,allow_other,cache=SECONDS (the FUSE mount's options).
std::optional<fusemount::MountOptions> parse_mount_options(const std::string& text, std::string* bad) {
  fusemount::MountOptions o;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item == "ro") {
      o.read_only = true;
    } else if (item == "rw") {
      o.read_only = false;
    } else if (item == "allow_other") {
      o.allow_other = true;
    } else if (item == "writeback") {
      o.writeback = true;
    } else if (item == "dev" || item == "nodev") {
      o.dev = item == "dev";
    } else if (item == "suid" || item == "nosuid") {
      o.suid = item == "suid";
    } else if (item == "default_permissions") {
      // always on: the kernel checks mode bits
    } else if (item.starts_with("cache=")) {
      std::string value = item.substr(6);
      char* end = nullptr;
      errno = 0;
      double seconds = value.empty() ? -1 : std::strtod(value.c_str(), &end);
      if (value.empty() || errno != 0 || *end != '\0' || !(seconds >= 0 && seconds <= 86400)) {
        *bad = item + " (cache= takes seconds, 0..86400)";
        return std::nullopt;
      }
      o.cache_seconds = seconds;
    } else if (!item.empty()) {
      *bad = item;
      return std::nullopt;
    }
  }
  return o;
}

// The FUSE mount of a server, reachable from the failure flow's listener; the
// listener and shutdown take turns on it.
struct MountSlot {
  std::mutex mutex;
  std::unique_ptr<fusemount::Mount> mount;
  void on_event(const FsEvent& e) {
    std::lock_guard lock(mutex);
    if (mount) mount->on_event(e);
  }
  void stop() {
    std::unique_ptr<fusemount::Mount> gone;
    {
      std::lock_guard lock(mutex);
      gone = std::move(mount);
    }
    gone.reset();  // unmounts and joins its threads, outside the lock
  }
};

std::optional<uint32_t> parse_group(const std::string& text) {
  if (group* g = ::getgrnam(text.c_str())) return g->gr_gid;
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos || text.size() > 9) return std::nullopt;
  return static_cast<uint32_t>(std::stoul(text));
}

// With --background the caller waits on a pipe for one byte: the exit code
// (0 once the server is ready). Its own end closes when the server is ready
// or has failed.
int ready_fd = -1;
void tell_caller(int code) {
  if (ready_fd < 0) return;
  unsigned char byte = static_cast<unsigned char>(code);
  (void)!::write(ready_fd, &byte, 1);
  ::close(ready_fd);
  ready_fd = -1;
}

// `mount`: the FUSE mount's options, parsed and checked by serve_cmd (none: no --mount).
int serve_foreground(const Args& a, const serve::ServerOptions& base,
                     std::optional<fusemount::MountOptions> mount) {
  // SIGTERM and SIGINT become readable events, for every thread started below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);
  ::pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  int stop_fd = ::signalfd(-1, &stop_signals, SFD_CLOEXEC);
  if (stop_fd < 0) {
    eprint("poise: serve: signalfd: {}\n", std::strerror(errno));
    return kExitFailure;
  }
  Session session;
  if (int code = open_session(a.image, MountMode::ReadWrite, &session); code != kExitOk) return code;
  serve::ServerOptions options = base;
  auto slot = std::make_shared<MountSlot>();
  options.on_event = [slot](const FsEvent& e) { slot->on_event(e); };
  auto server = serve::Server::listen(*session.fs, *session.device, options);
  if (!server.has_value()) {
    int code = report("serve", server.error());
    (void)close_session(session);
    return code;
  }
  (*server)->log(fmt::format("serving {} on {} (pid {})", a.image, options.socket_path, ::getpid()));
  if (mount) {
    char* absolute = ::realpath(a.image.c_str(), nullptr);
    mount->source = absolute != nullptr ? absolute : a.image;
    std::free(absolute);
    mount->dir = a.mount_dir;
    // The kernel ended the mount (umount, fusermount3 -u): stop as on SIGTERM.
    mount->on_unmounted = [] { ::kill(::getpid(), SIGTERM); };
    auto mounted = fusemount::Mount::start(*session.fs, *mount);
    if (!mounted.has_value()) {
      int code = report("mount", mounted.error());
      server->reset();
      (void)close_session(session);
      return code;
    }
    {
      std::lock_guard lock(slot->mutex);
      slot->mount = std::move(*mounted);
    }
    if (mount->writeback) {
      (*server)->set_kernel_owns_size([slot](uint64_t ino) {
        std::lock_guard lock(slot->mutex);
        return slot->mount != nullptr && slot->mount->kernel_owns_size(ino);
      });
    }
    (*server)->log(fmt::format("mounted on {} (FUSE{}{}{}{}{}, cache {} s)", a.mount_dir,
                               mount->read_only ? ", read-only" : "", mount->allow_other ? ", allow_other" : "",
                               mount->writeback ? ", writeback" : "", mount->dev ? ", dev" : ", nodev",
                               mount->suid ? ", suid" : ", nosuid", mount->cache_seconds));
  }
  if (ready_fd >= 0) {
    if (!a.quiet_ready) fmt::print("{}\n", options.socket_path);
    std::fflush(stdout);
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {  // the caller's terminal or pipe is let go
      ::dup2(null, STDIN_FILENO);
      ::dup2(null, STDOUT_FILENO);
      // The log goes to its file (--log), or nowhere (poise mount without
      // --log): the caller's stderr is let go too, so that a caller capturing
      // it ($(...), a pipe) is not held open by the server; what would still go
      // to stderr goes to the log. Without --log the log is the caller's
      // stderr, as the help says.
      if (!a.log.empty() && options.log != nullptr) {
        ::dup2(::fileno(options.log), STDERR_FILENO);
      } else if (a.quiet_ready) {
        ::dup2(null, STDERR_FILENO);
      }
      ::close(null);
    }
    tell_caller(kExitOk);
  }
  (*server)->run(stop_fd);
  signalfd_siginfo info{};
  (void)!::read(stop_fd, &info, sizeof(info));
  (*server)->log(fmt::format("signal {} received: disconnecting clients and unmounting", info.ssi_signo));
  if (session.fs->frozen()) {
    // Writers wait in the freeze of a pre-remove that nobody will finish now:
    // the removal is called off, so that they complete and the stop is clean.
    session.device->cancel_removal();
    (*server)->log("the pending removal is cancelled (the server is stopping): writers resume");
  }
  if (mount) {
    slot->stop();  // programs using the mount see it go first
    (*server)->log(fmt::format("unmounted {}", a.mount_dir));
  }
  auto* log = options.log;
  server->reset();  // every client is disconnected and the socket removed
  int code = close_session(session);
  if (log != nullptr) {
    std::fprintf(log, "poise serve: %s\n", code == kExitOk ? "unmounted cleanly" : "unmount failed");
    std::fflush(log);
  }
  return code;
}

int serve_cmd(const Args& a) {
  serve::ServerOptions options;
  options.image = a.image;
  options.socket_path = a.socket.empty() ? default_socket_path(a.image) : a.socket;
  if (int code = refuse_if_served(a.image, "serve"); code != kExitOk) return code;
  auto mode = parse_mode(a.socket_mode);
  if (!mode || (*mode & ~0777u) != 0) {
    eprint("poise: serve: --socket-mode takes octal permission bits (0600, 0660, ...), not '{}'\n", a.socket_mode);
    return kExitUsage;
  }
  options.socket_mode = *mode;
  if (a.recall_timeout.empty() || a.recall_timeout.size() > 7 ||
      a.recall_timeout.find_first_not_of("0123456789") != std::string::npos || std::stoul(a.recall_timeout) == 0) {
    eprint("poise: serve: --recall-timeout takes milliseconds, 1..9999999, not '{}'\n", a.recall_timeout);
    return kExitUsage;
  }
  options.recall_timeout_ms = static_cast<uint32_t>(std::stoul(a.recall_timeout));
  if (!a.socket_group.empty()) {
    options.socket_group = parse_group(a.socket_group);
    if (!options.socket_group) {
      eprint("poise: serve: --socket-group: no group '{}'\n", a.socket_group);
      return kExitUsage;
    }
  }
  std::FILE* log = stderr;
  if (a.quiet_ready && a.log.empty()) log = std::fopen("/dev/null", "we");  // poise mount without --log
  if (!a.log.empty()) {
    log = std::fopen(a.log.c_str(), "ae");
    if (log == nullptr) {
      eprint("poise: serve: cannot open the log {}: {}\n", a.log, std::strerror(errno));
      return kExitFailure;
    }
  }
  options.log = log;
  std::optional<fusemount::MountOptions> mount;
  if (!a.mount_dir.empty()) {
    std::string bad;
    mount = parse_mount_options(a.mount_options, &bad);
    if (!mount) {
      eprint("poise: mount: unknown option '{}' (known: ro, rw, allow_other, default_permissions, dev, nodev, suid, nosuid, writeback, cache=SECONDS)\n",
             bad);
      return kExitUsage;
    }
    struct stat st {};
    const bool found = ::stat(a.mount_dir.c_str(), &st) == 0;
    if (!found && errno == ENOTCONN) {
      eprint("poise: mount: {}: a mount whose server is gone is still there (poise umount {} clears it)\n",
             a.mount_dir, a.mount_dir);
      return kExitBusy;
    }
    if (!found || !S_ISDIR(st.st_mode)) {
      eprint("poise: mount: {}: not a directory\n", a.mount_dir);
      return kExitInvalid;
    }
  } else if (!a.mount_options.empty()) {
    eprint("poise: serve: -o needs --mount DIR\n");
    return kExitUsage;
  }
  if (!a.background) return serve_foreground(a, options, mount);

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    eprint("poise: serve: pipe: {}\n", std::strerror(errno));
    return kExitFailure;
  }
  std::fflush(nullptr);
  pid_t child = ::fork();
  if (child < 0) {
    eprint("poise: serve: fork: {}\n", std::strerror(errno));
    return kExitFailure;
  }
  if (child == 0) {
    ::close(pipe_fds[0]);
    ::setsid();  // the server outlives the caller's terminal session
    ready_fd = pipe_fds[1];
    int code = serve_foreground(a, options, mount);
    tell_caller(code);  // a failure before ready reaches the caller
    std::fflush(nullptr);
    std::_Exit(code);
  }
  ::close(pipe_fds[1]);
  unsigned char byte = 0;
  ssize_t got = 0;
  do {
    got = ::read(pipe_fds[0], &byte, 1);
  } while (got < 0 && errno == EINTR);
  ::close(pipe_fds[0]);
  if (got != 1) {
    eprint("poise: serve: the server process (pid {}) ended before it was ready\n", child);
    return kExitFailure;
  }
  return byte;
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_mountinfo(const std::string& field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      std::string digits = field.substr(i + 1, 3);
      if (digits.size() == 3 && digits.find_first_not_of("01234567") == std::string::npos) {
        out += static_cast<char>(std::stoi(digits, nullptr, 8));
        i += 3;
        continue;
      }
    }
    out += field[i];
  }
  return out;
}

// The image of the poise mount at `dir` (absolute, no symbolic links), from
// /proc/self/mountinfo; empty if nothing of poise's is mounted there.
std::optional<std::string> poise_mount_source(const std::string& dir) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  std::optional<std::string> found;
  while (std::getline(in, line)) {
    // id parent major:minor root mount-point options [optional...] - fstype source super-options
    std::istringstream fields(line);
    std::string id, parent, devno, root, point;
    fields >> id >> parent >> devno >> root >> point;
    size_t dash = line.find(" - ");
    if (dash == std::string::npos || unescape_mountinfo(point) != dir) continue;
    std::istringstream tail(line.substr(dash + 3));
    std::string fstype, source;
    tail >> fstype >> source;
    // The last one mounted there is what an unmount would take off.
    found = fstype == "fuse.poise" ? std::optional<std::string>(unescape_mountinfo(source)) : std::nullopt;
  }
  return found;
}

// Unmounts the FUSE mount at `dir` (lazily: detached now, gone once unused):
// umount2 as root, fusermount3 otherwise. kExitBusy if it is in use, 127 if
// fusermount3 cannot run.
int unmount_fuse(const std::string& dir, bool lazy) {
  if (::geteuid() == 0) {
    if (::umount2(dir.c_str(), UMOUNT_NOFOLLOW | (lazy ? MNT_DETACH : 0)) == 0) return kExitOk;
    return errno == EBUSY ? kExitBusy : kExitFailure;
  }
  std::fflush(nullptr);
  pid_t child = ::fork();
  if (child == 0) {
    if (lazy) {
      ::execlp("fusermount3", "fusermount3", "-u", "-z", "--", dir.c_str(), static_cast<char*>(nullptr));
    } else {
      ::execlp("fusermount3", "fusermount3", "-u", "--", dir.c_str(), static_cast<char*>(nullptr));
    }
    std::_Exit(127);
  }
  int status = 0;
  if (child < 0 || ::waitpid(child, &status, 0) != child || !WIFEXITED(status)) return kExitFailure;
  if (WEXITSTATUS(status) == 127) return 127;
  return WEXITSTATUS(status) == 0 ? kExitOk : kExitBusy;
}

// How the mount at `dir` answers: 0 it does, ENOTCONN its server is gone,
// ETIMEDOUT it did not answer within `wait` (its server is stopped, say by
// SIGSTOP, or stuck). Asked from a child process, since a request to a
// server that does not run waits until it runs; the child is killed then.
int probe_mount(const std::string& dir, std::chrono::milliseconds wait) {
  std::fflush(nullptr);
  pid_t child = ::fork();
  if (child == 0) {
    // A name nobody uses: the kernel has no answer cached for it and must ask.
    const std::string probe = dir + "/.poise-umount-probe-" + std::to_string(::getpid());
    struct stat st {};
    std::_Exit(::lstat(probe.c_str(), &st) == 0 || errno != ENOTCONN ? 0 : 1);
  }
  if (child < 0) return 0;  // cannot tell: go on as if it answered
  const auto deadline = std::chrono::steady_clock::now() + wait;
  int status = 0;
  for (;;) {
    pid_t done = ::waitpid(child, &status, WNOHANG);
    if (done == child) break;
    if (done < 0 && errno != EINTR) return 0;
    if (std::chrono::steady_clock::now() > deadline) {
      // A fatal signal ends a FUSE request's wait, unless the server had
      // already taken the request: then the child ends when the server answers
      // (reaped by init once this process exits).
      ::kill(child, SIGKILL);
      for (int i = 0; i < 100 && ::waitpid(child, &status, WNOHANG) == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      return ETIMEDOUT;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 1 ? ENOTCONN : 0;
}

namespace stdfs = std::filesystem;

// Whether process `pid` has the file `st` open (its descriptors, followed).
bool has_open(pid_t pid, const struct stat& st) {
  std::error_code ec;
  for (const auto& entry : stdfs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    struct stat fd_st {};
    if (::stat(entry.path().c_str(), &fd_st) == 0 && fd_st.st_dev == st.st_dev && fd_st.st_ino == st.st_ino) return true;
  }
  return false;
}

// The processes holding a lock on the image (its server), from /proc/locks.
// Matched by inode number and confirmed by the process having the image open
// (the device number /proc/locks prints is the superblock's, which stat(2)
// may not report, as on btrfs subvolumes).
std::vector<pid_t> image_lock_holders(const std::string& image) {
  std::vector<pid_t> out;
  struct stat st {};
  if (::stat(image.c_str(), &st) != 0) return out;
  std::ifstream locks("/proc/locks");
  std::string line;
  while (std::getline(locks, line)) {
    // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters have "->".
    std::istringstream fields(line);
    std::string id, kind, advisory, access, where;
    long pid = 0;
    if (line.find("->") != std::string::npos || !(fields >> id >> kind >> advisory >> access >> pid >> where)) continue;
    unsigned major_no = 0, minor_no = 0;
    unsigned long long ino = 0;
    if (kind != "FLOCK" || pid <= 0 || std::sscanf(where.c_str(), "%x:%x:%llu", &major_no, &minor_no, &ino) != 3) continue;
    if (ino == st.st_ino && has_open(static_cast<pid_t>(pid), st)) out.push_back(static_cast<pid_t>(pid));
  }
  return out;
}

// Whether process `pid` is stopped (SIGSTOP, a debugger): state T or t.
bool is_stopped(pid_t pid) {
  std::ifstream stat_file("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');  // the name may hold spaces and parentheses
  if (paren == std::string::npos || paren + 2 >= text.size()) return false;
  return text[paren + 2] == 'T' || text[paren + 2] == 't';
}

// The absolute path of `dir_arg` without asking the mount itself: its parent
// is resolved, its last name kept as it is (a stat of the mount point would
// wait for a server that does not run).
Result<std::string> mount_point_path(const std::string& dir_arg) {
  stdfs::path given = stdfs::path(dir_arg).lexically_normal();
  if (given.has_filename() == false && given.has_parent_path()) given = given.parent_path();  // "dir/" -> "dir"
  const std::string name = given.filename().string();
  if (name.empty() || name == "." || name == ".." || given == given.root_path()) {
    char* resolved = ::realpath(dir_arg.c_str(), nullptr);  // an unusual spelling: resolved as it is
    if (resolved == nullptr) return fail(errno, dir_arg + ": " + std::strerror(errno));
    std::string out = resolved;
    std::free(resolved);
    return out;
  }
  const std::string parent = given.has_parent_path() ? given.parent_path().string() : ".";
  char* resolved = ::realpath(parent.c_str(), nullptr);
  if (resolved == nullptr) return fail(errno, dir_arg + ": " + std::strerror(errno));
  std::string out = resolved;
  std::free(resolved);
  return (out == "/" ? out : out + "/") + name;
}

int umount_cmd(const std::string& dir_arg) {
  auto where = mount_point_path(dir_arg);
  if (!where.has_value()) {
    eprint("poise: umount: {}\n", where.error().message);
    return exit_code_for(where.error().code);
  }
  std::string dir = *where;
  auto image = poise_mount_source(dir);
  if (!image) {  // a symbolic link to the mount point, say: resolved whole
    if (char* resolved = ::realpath(dir_arg.c_str(), nullptr); resolved != nullptr) {
      dir = resolved;
      std::free(resolved);
      image = poise_mount_source(dir);
    }
  }
  if (!image) {
    struct stat st {};
    if (::stat(dir_arg.c_str(), &st) != 0 && errno == ENOENT) {
      eprint("poise: umount: {}: no such file or directory\n", dir_arg);
      return kExitNotFound;
    }
    eprint("poise: umount: {}: not a poise mount\n", dir_arg);
    return kExitInvalid;
  }
  // A mount whose server is gone answers ENOTCONN: nothing can be lost by
  // detaching it at once, even while programs hold files there. One whose
  // server is stopped is detached too: the server still holds everything,
  // and finishes the unmount once it runs again. A server that is only slow
  // to answer (busy) is unmounted as usual.
  const int probe = probe_mount(dir, std::chrono::seconds(3));
  const bool server_gone = probe == ENOTCONN;
  pid_t server = 0;
  if (probe == ETIMEDOUT) {
    for (pid_t holder : image_lock_holders(*image)) {
      if (is_stopped(holder)) server = holder;
    }
  }
  if (server > 0) {
    if (int code = unmount_fuse(dir, true); code != kExitOk) {
      eprint("poise: umount: {}: its server does not answer, and the unmount failed\n", dir_arg);
      return kExitFailure;
    }
    eprint("poise: umount: {}: its server (pid {}) is stopped (SIGSTOP or a debugger): the mount is detached, "
           "and the server lets go of {} once it runs again (kill -CONT {})\n",
           dir_arg, server, *image, server);
    return kExitBusy;
  }
  if (int code = unmount_fuse(dir, server_gone); code != kExitOk) {
    if (code == kExitBusy) {
      eprint("poise: umount: {}: busy: programs still use it (close them, or stop its server with SIGTERM, which "
             "unmounts lazily)\n",
             dir_arg);
    } else {
      eprint("poise: umount: {}: the unmount failed{}\n", dir_arg,
             code == 127 ? " (fusermount3 is missing: install fuse3)" : "");
      code = kExitFailure;
    }
    return code;
  }
  if (server_gone) eprint("poise: umount: {}: its server was gone; the mount is detached\n", dir_arg);
  // The server saw the mount end and is unmounting the filesystem: return once
  // it has let go of the image, so the image is ready for anything next.
  int fd = ::open(image->c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return kExitOk;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  int code = kExitOk;
  while (::flock(fd, LOCK_SH | LOCK_NB) != 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      eprint("poise: umount: {} is unmounted, but its server has not let go of {} after 120 s\n", dir_arg, *image);
      code = kExitBusy;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::close(fd);
  return code;
}

}  // namespace

void add_serve_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand(
      "serve",
      "Mount IMAGE and serve it to many processes on a Unix socket; other poise commands on IMAGE then go through it");
  sub->callback([run, args] { *run = [args] { return serve_cmd(*args); }; });
  sub->add_option("IMAGE", args->image, "Image file or /dev/daxX.Y")->required();
  sub->add_option("--socket", args->socket, "Socket path (default: IMAGE.sock)")->check(kNonEmptyValue);
  sub->add_flag("--background", args->background, "Return once the server is ready, printing the socket path");
  sub->add_option("--socket-mode", args->socket_mode, "Permission bits of the socket, octal (default 0600)")
      ->check(kNonEmptyValue);
  sub->add_option("--socket-group", args->socket_group, "Group of the socket (a name or a number)")
      ->check(kNonEmptyValue);
  sub->add_option("--recall-timeout", args->recall_timeout,
                  "Milliseconds a client has to give up mapped pages the server recalls before it is killed "
                  "(default 1000)")
      ->check(kNonEmptyValue);
  sub->add_option("--log", args->log, "Append the log to FILE instead of standard error")->check(kNonEmptyValue);
  sub->add_option("--mount", args->mount_dir, "Also mount the filesystem on DIR for ordinary programs (FUSE)")
      ->check(kNonEmptyValue);
  sub->add_option("-o", args->mount_options, "Mount options: ro, allow_other, dev, suid, writeback, cache=SECONDS (default 1; nodev,nosuid unless dev, suid)");
  sub->footer(
      "SIGTERM, SIGINT or SIGHUP stop the server: clients are disconnected and the filesystem is unmounted.\n"
      "Clients are checked as the kernel checks a process (mode bits, owner, group); root and the server's\n"
      "own user may do anything. See docs/protocol.md.");
}

void add_mount_commands(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand(
      "mount", "Mount IMAGE on DIR for ordinary programs (FUSE), served in the background like poise serve");
  sub->callback([run, args] {
    *run = [args] {
      args->background = true;
      args->quiet_ready = true;
      return serve_cmd(*args);
    };
  });
  sub->add_option("IMAGE", args->image, "Image file or /dev/daxX.Y")->required();
  sub->add_option("DIR", args->mount_dir, "An existing directory")->required()->check(kNonEmptyValue);
  sub->add_option("-o", args->mount_options, "ro, allow_other, dev, suid, writeback, cache=SECONDS (default 1; nodev,nosuid unless dev, suid)");
  sub->add_option("--socket", args->socket, "Socket path of the server (default: IMAGE.sock)")->check(kNonEmptyValue);
  sub->add_option("--log", args->log, "Append the server's log to FILE (default: discarded)")->check(kNonEmptyValue);
  sub->footer(
      "Returns once the mount is ready. The server also serves IMAGE on its socket, so every poise command\n"
      "on IMAGE keeps working. poise umount DIR (or fusermount3 -u DIR) unmounts it cleanly.\n"
      "mmap through the mount maps page-cache copies, not device memory: direct mappings are poise::connect's.");

  auto dir = std::make_shared<std::string>();
  CLI::App* um = app.add_subcommand("umount", "Unmount a poise mount and wait until its server has let go of the image");
  um->callback([run, dir] { *run = [dir] { return umount_cmd(*dir); }; });
  um->add_option("DIR", *dir, "The mount point")->required()->check(kNonEmptyValue);
}

}  // namespace poise::cli
