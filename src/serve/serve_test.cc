// poise serve, end to end over a real Unix socket: the client library gives the
// same answers as the in-process API (a seeded model test against a second,
// in-process filesystem), a malformed message drops only its sender, a client
// that goes away releases what it held open, and a server that goes away makes
// every later call fail instead of hang. Permission checks between different
// users need other uids: tests/serve_test.sh runs them as real processes.
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <thread>

#include "base/random.h"
#include "fs/test_util.h"
#include "poise/client.h"
#include "serve/protocol.h"
#include "serve/server.h"

namespace poise::serve {
namespace {
using namespace poise::testing;

class Served {
 public:
  Served() : device_(64ull << 20, MemoryDevice::Backing::Shared) {
    EXPECT_TRUE(Filesystem::format(device_).has_value());
    fs_ = std::move(*Filesystem::mount(device_));
    char dir[] = "/tmp/poise-serve-test.XXXXXX";
    dir_ = ::mkdtemp(dir);
    ServerOptions options;
    options.image = "test";
    options.socket_path = dir_ + "/s.sock";
    options.log = nullptr;
    server_ = std::move(*Server::listen(*fs_, device_, options));
    EXPECT_EQ(::pipe(stop_), 0);
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

 private:
  MemoryDevice device_;
  std::unique_ptr<Filesystem> fs_;
  std::string dir_;
  std::unique_ptr<Server> server_;
  int stop_[2] = {-1, -1};
  std::thread thread_;
};

// The same operation's outcome on both sides: its errno (0 for success) and value.
template <class T>
std::string outcome(const Result<T>& r) {
  if (!r.has_value()) return "errno " + std::to_string(r.error().code);
  if constexpr (std::is_same_v<T, void>) {
    return "ok";
  } else if constexpr (std::is_same_v<T, InodeNumber>) {
    return "ok";  // inode numbers may differ: compared through stat below
  } else if constexpr (std::is_same_v<T, size_t>) {
    return "ok " + std::to_string(*r);
  } else {
    return "ok";
  }
}

std::string tree(Filesystem& fs, const std::string& dir = "/") {
  std::string out;
  auto entries = fs.readdir(dir);
  if (!entries) return "unreadable " + dir;
  std::sort(entries->begin(), entries->end(), [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
  for (const auto& e : *entries) {
    std::string path = (dir == "/" ? "" : dir) + "/" + e.name;
    auto st = fs.stat(path);
    out += path + (e.type == FileType::Directory ? "/" : "") + " " + std::to_string(st ? st->size_bytes : 0) + " " +
           std::to_string(st ? st->nlink : 0) + "\n";
    if (e.type == FileType::Directory) {
      out += tree(fs, path);
    } else {
      out += read_file(fs, path) + "\n";
    }
  }
  return out;
}

TEST(Serve, TheClientAnswersAsTheInProcessApiDoes) {
  Served served;
  auto remote = served.client();
  ASSERT_NE(remote, nullptr);
  MemoryDevice ref_device(64ull << 20);
  ASSERT_OK(Filesystem::format(ref_device));
  auto ref = std::move(*Filesystem::mount(ref_device));
  Filesystem* both[2] = {ref.get(), remote.get()};

  uint64_t seed = test_seed("Serve.Model");
  Rng rng(seed);
  const char* names[] = {"/a", "/b", "/d", "/d/x", "/d/y", "/e", "/e/z", "/a/bad"};
  auto pick = [&] { return std::string(names[rng.below(std::size(names))]); };
  int succeeded = 0;
  for (int step = 0; step < 1500; ++step) {
    std::string what, results[2];
    uint64_t op = rng.below(11);
    std::string p = pick(), q = pick();
    uint64_t off = rng.below(3 * 4096 + 100), len = rng.below(3 * 1024 * 1024 / 2);
    std::string data(rng.below(6000) + 1, static_cast<char>('a' + rng.below(26)));
    if (rng.chance(20)) data.assign((1 << 20) + 777, 'L');  // more than one message
    for (int side = 0; side < 2; ++side) {
      Filesystem& fs = *both[side];
      auto ino = [&](const std::string& path) { return fs.lookup(path); };
      switch (op) {
        case 0: what = "create " + p; results[side] = outcome(fs.create(p)); break;
        case 1: what = "mkdir " + p; results[side] = outcome(fs.mkdir(p)); break;
        case 2: what = "unlink " + p; results[side] = outcome(fs.unlink(p)); break;
        case 3: what = "rmdir " + p; results[side] = outcome(fs.rmdir(p)); break;
        case 4: what = "rename " + p + " " + q; results[side] = outcome(fs.rename(p, q)); break;
        case 5: what = "link " + p + " " + q; results[side] = outcome(fs.link(p, q)); break;
        case 6: {
          what = "write " + p + " at " + std::to_string(off);
          auto i = ino(p);
          results[side] = i ? outcome(fs.write(*i, off, as_bytes(data))) : outcome(i);
          break;
        }
        case 7: {
          what = "truncate " + p + " to " + std::to_string(len);
          auto i = ino(p);
          results[side] = i ? outcome(fs.truncate(*i, len)) : outcome(i);
          break;
        }
        case 8: {
          what = "reflink " + p + " " + q;
          auto i = ino(p), j = ino(q);
          results[side] = i && j ? outcome(fs.reflink(*i, *j)) : outcome(i) + outcome(j);
          break;
        }
        case 9: {
          what = "read " + p + " at " + std::to_string(off);
          auto i = ino(p);
          std::string buf(len, '\0');
          auto n = i ? fs.read(*i, off, {reinterpret_cast<std::byte*>(buf.data()), buf.size()}) : Result<size_t>(0);
          results[side] = outcome(i) + outcome(n) + (n ? buf.substr(0, *n) : "");
          break;
        }
        default: {
          what = "punch " + p;
          auto i = ino(p);
          results[side] = i ? outcome(fs.punch_hole(*i, off & ~4095ull, 8192)) : outcome(i);
          break;
        }
      }
    }
    ASSERT_EQ(results[0].substr(0, 200), results[1].substr(0, 200)) << "step " << step << ": " << what << " (seed " << seed << ")";
    ASSERT_EQ(results[0].size(), results[1].size()) << "step " << step << ": " << what;
    succeeded += results[0].rfind("ok", 0) == 0 || results[0].rfind("okok", 0) == 0;
  }
  std::printf("[model] %d of 1500 operations succeeded on both sides\n", succeeded);
  EXPECT_GT(succeeded, 200) << "the model barely exercised anything";
  EXPECT_EQ(tree(*ref), tree(*remote)) << "seed " << seed;
  EXPECT_EQ(tree(*ref), tree(served.fs())) << "the server's own view differs (seed " << seed << ")";
  EXPECT_TRUE(remote->check().clean());
  // Directory listings longer than one message come back whole.
  ASSERT_OK(remote->mkdir("/many"));
  for (int i = 0; i < 4000; ++i) ASSERT_OK(served.fs().create("/many/" + std::string(200, 'n') + std::to_string(i)));
  auto listed = remote->readdir("/many");
  ASSERT_OK(listed);
  EXPECT_EQ(listed->size(), 4000u);
  auto served_map = served.fs().fsmap(0, 64ull << 20);
  auto remote_map = remote->fsmap(0, 64ull << 20);
  ASSERT_OK(remote_map);
  EXPECT_EQ(remote_map->size(), served_map->size());
}

int raw_connect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  return fd;
}

// True when the server closed the connection (EOF), within a few seconds.
bool closed_by_server(int fd) {
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[256];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n == 0) return true;
    if (n < 0) return false;
  }
}

TEST(Serve, AMalformedMessageDropsOnlyItsSender) {
  Served served;
  auto good = served.client();
  ASSERT_NE(good, nullptr);
  ASSERT_OK(good->create("/keep"));

  // An unknown operation.
  int fd = raw_connect(served.socket());
  std::byte bad_op[kHeaderBytes] = {};
  bad_op[4] = std::byte(200);
  ASSERT_EQ(::send(fd, bad_op, sizeof(bad_op), 0), ssize_t(sizeof(bad_op)));
  EXPECT_TRUE(closed_by_server(fd));
  ::close(fd);

  // A body larger than any message.
  fd = raw_connect(served.socket());
  std::byte huge[kHeaderBytes] = {};
  huge[3] = std::byte(0x7f);
  huge[4] = std::byte(2);
  ASSERT_EQ(::send(fd, huge, sizeof(huge), 0), ssize_t(sizeof(huge)));
  EXPECT_TRUE(closed_by_server(fd));
  ::close(fd);

  // A lookup whose path length runs past the body.
  fd = raw_connect(served.socket());
  Encoder e(Op::Lookup, 1);
  e.u32(1000);
  e.u32(0);
  const auto& frame = e.finish();
  ASSERT_TRUE(send_frame(fd, frame));
  EXPECT_TRUE(closed_by_server(fd));
  ::close(fd);

  // Trailing bytes after a well-formed request.
  fd = raw_connect(served.socket());
  Encoder extra(Op::Sync, 1);
  extra.u64(42);
  ASSERT_TRUE(send_frame(fd, extra.finish()));
  EXPECT_TRUE(closed_by_server(fd));
  ::close(fd);

  // A message cut short, then the client vanishes.
  fd = raw_connect(served.socket());
  Encoder cut(Op::Write, 1);
  cut.u64(2);
  cut.u64(0);
  cut.string(std::string(5000, 'w'));
  const auto& cut_frame = cut.finish();
  ASSERT_EQ(::send(fd, cut_frame.data(), cut_frame.size() - 100, 0), ssize_t(cut_frame.size() - 100));
  ::close(fd);

  // The well-behaved client never noticed.
  ASSERT_OK(good->stat("/keep"));
  ASSERT_OK(good->create("/after"));
  EXPECT_TRUE(good->check().clean());
}

// A client process killed with -9 while it holds a file open: the server
// releases it, so the unlinked file's blocks are freed.
TEST(Serve, AKilledClientReleasesWhatItHeldOpen) {
  Served served;
  auto other = served.client();
  ASSERT_NE(other, nullptr);
  const uint64_t free_at_start = other->info().free_bytes;
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto holder = connect(served.socket());
    if (!holder) std::_Exit(1);
    auto f = (*holder)->open("/held", OpenFlags::Create);
    if (!f) std::_Exit(2);
    std::string data(1 << 20, 'h');
    if (!f->write(0, as_bytes(data))) std::_Exit(3);
    (void)!::write(ready[1], "r", 1);
    for (;;) ::pause();
  }
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);
  ASSERT_OK(other->unlink("/held"));
  EXPECT_LT(other->info().free_bytes, free_at_start) << "an unlinked file open in another process lost its blocks";
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  bool released = false;
  for (int i = 0; i < 500 && !released; ++i) {
    released = other->info().free_bytes == free_at_start;
    if (!released) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(released) << "a killed client still holds its open file's blocks";
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST(Serve, WhenTheServerGoesAwayEveryCallFailsInsteadOfHanging) {
  auto served = std::make_unique<Served>();
  auto remote = served->client();
  ASSERT_NE(remote, nullptr);
  ASSERT_OK(remote->create("/x"));
  served->stop();
  EXPECT_ERRNO(remote->stat("/x"), ESHUTDOWN);
  EXPECT_ERRNO(remote->create("/y"), ESHUTDOWN);
  EXPECT_FALSE(remote->check().clean()) << "a check that could not run must not say clean";
}

}  // namespace
}  // namespace poise::serve
