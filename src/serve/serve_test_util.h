// Helpers for the poise serve tests: a server on a real Unix socket over an
// in-process filesystem (Served), a client process that is told when to go
// (Child) and its checks, and a look at the filesystem's bad-range record.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "fs/test_util.h"
#include "poise/client.h"
#include "serve/server.h"

namespace poise::serve {

class Served {
 public:
  // On `device` (which files can be mapped from), or a 64 MiB shared MemoryDevice.
  explicit Served(uint32_t recall_timeout_ms = 1000, std::unique_ptr<Device> device = nullptr)
      : device_(device ? std::move(device) : std::make_unique<MemoryDevice>(64ull << 20, MemoryDevice::Backing::Shared)) {
    EXPECT_TRUE(Filesystem::format(*device_).has_value());
    fs_ = std::move(*Filesystem::mount(*device_));
    char dir[] = "/tmp/poise-serve-test.XXXXXX";
    dir_ = ::mkdtemp(dir);
    ServerOptions options;
    options.image = "test";
    options.socket_path = dir_ + "/s.sock";
    options.log = nullptr;
    options.recall_timeout_ms = recall_timeout_ms;
    server_ = std::move(*Server::listen(*fs_, *device_, options));
    EXPECT_EQ(::pipe2(stop_, O_CLOEXEC), 0);
    thread_ = std::thread([this] { server_->run(stop_[0]); });
  }
  ~Served() { stop(); }
  void stop() {
    if (!thread_.joinable()) return;
    (void)!::write(stop_[1], "x", 1);
    thread_.join();
    server_.reset();
    ::close(stop_[0]);
    ::close(stop_[1]);
    ::rmdir(dir_.c_str());
  }
  std::string socket() const { return dir_ + "/s.sock"; }
  std::unique_ptr<RemoteFilesystem> client() {
    auto c = connect(socket());
    EXPECT_TRUE(c.has_value()) << c.error().message;
    return c.has_value() ? std::move(*c) : nullptr;
  }
  Filesystem& fs() { return *fs_; }
  // The default device (a test that passed its own keeps its own pointer).
  MemoryDevice& device() {
    auto* memory = dynamic_cast<MemoryDevice*>(device_.get());
    POISE_ASSERT(memory != nullptr);
    return *memory;
  }
  // Returns once `n` event streams are attached (or after 10 s).
  void wait_for_subscribers(size_t n) {
    for (int i = 0; i < 1000 && server_->subscriber_count() < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

 private:
  std::unique_ptr<Device> device_;
  std::unique_ptr<Filesystem> fs_;
  std::string dir_;
  std::unique_ptr<Server> server_;
  int stop_[2] = {-1, -1};
  std::thread thread_;
};

inline bool recorded_bad(Filesystem& fs, uint64_t device_offset) {
  auto map = fs.fsmap(device_offset, 4096);
  if (!map) return false;
  for (const auto& r : *map) {
    if (r.owner == OwnerKind::Bad) return true;
  }
  return false;
}


// A client process: this test binary started again (fork, then exec of
// /proc/self/exe) as `--poise-child NAME ARGS...`, which runs the function
// registered under NAME with POISE_CHILD_MAIN instead of the tests. The exec
// gives the child a fresh, single-threaded start, so both sanitizers follow
// it like any other process (neither supports a child that goes on running in
// a fork of this multi-threaded process: ThreadSanitizer refuses it, and
// under AddressSanitizer such a child now and then died before it was ready).
// Between the fork and the exec the child makes only async-signal-safe calls.
// Two one-byte channels: the child says "ready", the parent says "go". The
// child's exit code is its verdict (0: every check held).
class Child;
using ChildMain = int (*)(Child& me, const std::vector<std::string>& args);

inline std::map<std::string, ChildMain>& child_mains() {
  static std::map<std::string, ChildMain> mains;
  return mains;
}

struct ChildMainRegistrar {
  ChildMainRegistrar(const char* name, ChildMain main) { child_mains()[name] = main; }
};

// Defines a child's program: POISE_CHILD_MAIN(name) { ... return 0; }, with
// `me` (its Child) and `args` (the strings the parent gave) in scope.
#define POISE_CHILD_MAIN(name)                                        \
  int name(Child& me, const std::vector<std::string>& args);          \
  const ChildMainRegistrar name##_registrar(#name, name);             \
  int name([[maybe_unused]] Child& me, [[maybe_unused]] const std::vector<std::string>& args)

class Child {
 public:
  // The descriptors the child finds its channels (and an optional extra
  // descriptor from the parent) on.
  static constexpr int kUpFd = 100, kDownFd = 101, kExtraFd = 102;

  // In the parent: starts `--poise-child name args...`; `extra_fd`, if given,
  // is the child's kExtraFd.
  Child(const std::string& name, const std::vector<std::string>& args, int extra_fd = -1) {
    int up[2] = {-1, -1}, down[2] = {-1, -1};
    EXPECT_EQ(::pipe2(up, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(down, O_CLOEXEC), 0);
    std::vector<std::string> words{"/proc/self/exe", "--poise-child", name};
    words.insert(words.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& w : words) argv.push_back(w.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      // Above every descriptor the targets could clash with, then onto them
      // (dup2 clears close-on-exec on the copies).
      int from_up = ::fcntl(up[1], F_DUPFD_CLOEXEC, 200), from_down = ::fcntl(down[0], F_DUPFD_CLOEXEC, 200);
      int from_extra = extra_fd >= 0 ? ::fcntl(extra_fd, F_DUPFD_CLOEXEC, 200) : -1;
      if (from_up < 0 || from_down < 0 || (extra_fd >= 0 && from_extra < 0)) ::_exit(126);
      if (::dup2(from_up, kUpFd) < 0 || ::dup2(from_down, kDownFd) < 0 ||
          (from_extra >= 0 && ::dup2(from_extra, kExtraFd) < 0)) {
        ::_exit(126);
      }
      ::execv("/proc/self/exe", argv.data());
      ::_exit(127);
    }
    ::close(up[1]);
    ::close(down[0]);
    up_ = up[0];
    down_ = down[1];
  }
  // In the child: its ends of the channels.
  struct Attached {};
  explicit Child(Attached) : pid_(::getpid()), up_(kUpFd), down_(kDownFd), reaped_(true) {}

  ~Child() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      (void)wait();
    }
    ::close(up_);
    ::close(down_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // In the child.
  void ready() { (void)!::write(up_, "r", 1); }
  bool wait_for_go() {
    char c;
    return ::read(down_, &c, 1) == 1;
  }
  // In the parent.
  bool wait_until_ready() {
    char c;
    return ::read(up_, &c, 1) == 1;
  }
  void go() { (void)!::write(down_, "g", 1); }
  int wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    reaped_ = true;
    return status;
  }
  pid_t pid() const { return pid_; }
  void forget() { reaped_ = true; }  // reaped by the test itself
  // SIGSTOP, returning once the child has stopped (kill() returns before: a
  // busy machine could let it answer one more message first).
  bool stop() {
    if (::kill(pid_, SIGSTOP) != 0) return false;
    int status = 0;
    return ::waitpid(pid_, &status, WUNTRACED) == pid_ && WIFSTOPPED(status);
  }

 private:
  pid_t pid_ = -1;
  int up_ = -1, down_ = -1;
  bool reaped_ = false;
};

// The test binary's main: a child's program when started as one, else the tests.
inline int child_or_tests_main(int argc, char** argv) {
  if (argc >= 3 && std::string(argv[1]) == "--poise-child") {
    auto found = child_mains().find(argv[2]);
    if (found == child_mains().end()) {
      std::fprintf(stderr, "no child program named %s\n", argv[2]);
      return 125;
    }
    int code = 0;
    {
      Child me{Child::Attached{}};
      code = found->second(me, std::vector<std::string>(argv + 3, argv + argc));
    }
    std::fflush(nullptr);
    std::_Exit(code);  // (no static destructors while a client's threads may still run)
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}


// The child's checks: each failed one is printed and makes the exit code 1.
#define CHILD_CHECK(cond)                                                        \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "child %d: check failed: %s (line %d)\n", ::getpid(), #cond, __LINE__); \
      return 1;                                                                  \
    }                                                                            \
  } while (0)

inline int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

}  // namespace poise::serve
