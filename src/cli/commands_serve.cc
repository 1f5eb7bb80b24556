// poise serve: mount an image once and serve it to many processes over a Unix
// socket (src/serve/, docs/protocol.md). Other poise commands on the image then
// go through the server (session.cc).
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "cli/cli.h"
#include "cli/exit_codes.h"
#include "cli/sizes.h"
#include "serve/server.h"

namespace poise::cli {

namespace {

struct Args {
  std::string image, socket, socket_mode = "0600", socket_group, log, recall_timeout = "1000";
  bool background = false;
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

int serve_foreground(const Args& a, const serve::ServerOptions& base) {
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
  auto server = serve::Server::listen(*session.fs, *session.device, options);
  if (!server.has_value()) {
    int code = report("serve", server.error());
    (void)close_session(session);
    return code;
  }
  (*server)->log(fmt::format("serving {} on {} (pid {})", a.image, options.socket_path, ::getpid()));
  if (ready_fd >= 0) {
    fmt::print("{}\n", options.socket_path);
    std::fflush(stdout);
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {  // the caller's terminal or pipe is let go
      ::dup2(null, STDIN_FILENO);
      ::dup2(null, STDOUT_FILENO);
      ::close(null);
    }
    tell_caller(kExitOk);
  }
  (*server)->run(stop_fd);
  signalfd_siginfo info{};
  (void)!::read(stop_fd, &info, sizeof(info));
  (*server)->log(fmt::format("signal {} received: disconnecting clients and unmounting", info.ssi_signo));
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
  if (!a.log.empty()) {
    log = std::fopen(a.log.c_str(), "ae");
    if (log == nullptr) {
      eprint("poise: serve: cannot open the log {}: {}\n", a.log, std::strerror(errno));
      return kExitFailure;
    }
  }
  options.log = log;
  if (!a.background) return serve_foreground(a, options);

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
    int code = serve_foreground(a, options);
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
  sub->footer(
      "SIGTERM, SIGINT or SIGHUP stop the server: clients are disconnected and the filesystem is unmounted.\n"
      "Clients are checked as the kernel checks a process (mode bits, owner, group); root and the server's\n"
      "own user may do anything. See docs/protocol.md.");
}

}  // namespace poise::cli
