// poise serve, end to end over a real Unix socket: the client library gives the
// same answers as the in-process API (a seeded model test against a second,
// in-process filesystem), a malformed message drops only its sender, a client
// that goes away releases what it held open, and a server that goes away makes
// every later call fail instead of hang. Permission checks between different
// users need other uids: tests/serve_test.sh runs them as real processes.
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <thread>

#include "base/random.h"
#include "device/crash_device.h"
#include "fs/test_util.h"
#include "poise/client.h"
#include "serve/protocol.h"
#include "serve/server.h"
#include "serve/serve_test_util.h"

namespace poise::serve {
namespace {
using namespace poise::testing;

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
    for (const std::string& name : fs.list_xattrs(e.ino).value_or(std::vector<std::string>{"(unlistable)"})) {
      out += "  " + name + "=" + fs.get_xattr(e.ino, name).value_or("(unreadable)") + "\n";
    }
    if (e.type == FileType::Directory) {
      out += tree(fs, path);
    } else if (e.type == FileType::Symlink) {
      out += "-> " + fs.readlink(e.ino).value_or("(unreadable)") + "\n";
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
    uint64_t op = rng.below(15);
    const char* xattr_names[] = {"user.a", "user.b", "trusted.t", "os2.x"};
    const std::string xname = xattr_names[rng.below(std::size(xattr_names))];
    const auto xmode = static_cast<XattrMode>(rng.below(3));
    const bool also_remove = rng.chance(3);
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
        case 10: {  // the directory-inode calls: remove a name, then list the directory
          const size_t slash = p.rfind('/');
          const std::string dir = slash == 0 ? "/" : p.substr(0, slash), name = p.substr(slash + 1);
          what = std::string(also_remove ? "rmdir_at " : "unlink_at ") + dir + " " + name;
          auto d = ino(dir);
          if (!d) {
            results[side] = outcome(d);
            break;
          }
          results[side] = outcome(also_remove ? fs.rmdir_at(*d, name) : fs.unlink_at(*d, name));
          auto listed = fs.readdir_at(*d);
          results[side] += outcome(listed);
          if (listed) {
            for (const auto& e : *listed) results[side] += " " + e.name + ":" + std::to_string(static_cast<int>(e.type));
          }
          break;
        }
        case 11: what = "symlink " + p + " -> " + q; results[side] = outcome(fs.symlink(q, p)); break;
        case 12: {
          what = "readlink " + p;
          auto i = ino(p);
          auto target = i ? fs.readlink(*i) : Result<std::string>(std::string());
          results[side] = outcome(i) + (target ? "ok " + *target : "errno " + std::to_string(target.error().code));
          break;
        }
        case 13: {
          what = "setxattr " + p + " " + xname;
          auto i = ino(p);
          results[side] = i ? outcome(fs.set_xattr(*i, xname, data.substr(0, 4000), xmode)) : outcome(i);
          break;
        }
        case 14: {
          what = "getxattr/removexattr " + p + " " + xname;
          auto i = ino(p);
          if (!i) {
            results[side] = outcome(i);
            break;
          }
          auto value = fs.get_xattr(*i, xname);
          results[side] = value ? "ok " + *value : "errno " + std::to_string(value.error().code);
          if (also_remove) results[side] += outcome(fs.remove_xattr(*i, xname));
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
  auto listed_at = remote->readdir_at(*remote->lookup("/many"));
  ASSERT_OK(listed_at);
  EXPECT_EQ(listed_at->size(), 4000u);
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

// info through the server is the server's own, the checkpoint kept as a
// fallback included.
TEST(Serve, InfoThroughTheServerIsTheServersOwn) {
  Served served;
  auto remote = served.client();
  ASSERT_NE(remote, nullptr);
  ASSERT_OK(remote->create("/f"));
  ASSERT_OK(served.fs().checkpoint(CheckpointMode::Full));
  ASSERT_OK(remote->create("/g"));
  ASSERT_OK(served.fs().checkpoint(CheckpointMode::Full));
  const FsInfo local = served.fs().info();
  auto got = remote->info();
  EXPECT_NE(local.previous_generation, 0u) << "a checkpoint is kept";
  EXPECT_EQ(got.previous_generation, local.previous_generation);
  EXPECT_EQ(got.previous_bytes, local.previous_bytes);
  EXPECT_EQ(got.checkpoint_generation, local.checkpoint_generation);
  EXPECT_EQ(got.free_bytes, local.free_bytes);
  EXPECT_EQ(got.files, local.files);
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
POISE_CHILD_MAIN(holds_a_file_open) {
  auto holder = connect(args.at(0));
  CHILD_CHECK(holder.has_value());
  auto f = (*holder)->open("/held", OpenFlags::Create);
  CHILD_CHECK(f.has_value());
  std::string data(1 << 20, 'h');
  CHILD_CHECK(f->write(0, as_bytes(data)).has_value());
  me.ready();
  for (;;) ::pause();
}

TEST(Serve, AKilledClientReleasesWhatItHeldOpen) {
  Served served;
  auto other = served.client();
  ASSERT_NE(other, nullptr);
  const uint64_t free_at_start = other->info().free_bytes;
  Child child("holds_a_file_open", {served.socket()});
  ASSERT_TRUE(child.wait_until_ready());
  ASSERT_OK(other->unlink("/held"));
  EXPECT_LT(other->info().free_bytes, free_at_start) << "an unlinked file open in another process lost its blocks";
  ::kill(child.pid(), SIGKILL);
  EXPECT_EQ(exit_code(child.wait()), 128 + SIGKILL);
  bool released = false;
  for (int i = 0; i < 500 && !released; ++i) {
    released = other->info().free_bytes == free_at_start;
    if (!released) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(released) << "a killed client still holds its open file's blocks";
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

// The same flows with the client in this process (no fork), so that
// ThreadSanitizer sees the server's and the client's threads together: the
// follow channel, recalls, notices, events and their locks.
TEST(Serve, AClientInThisProcessFollowsRecallsFailuresAndEvents) {
  Served served;
  write_file(served.fs(), "/f", std::string(8192, 'f'));
  auto remote = served.client();
  ASSERT_NE(remote, nullptr);
  auto watcher_fs = served.client();
  std::mutex events_mu;
  std::vector<std::string> events;
  std::thread watcher([&] {
    (void)watcher_fs->watch_events([&](const std::string& e) {
      std::lock_guard lock(events_mu);
      events.push_back(e);
      return true;
    });
  });
  served.wait_for_subscribers(1);
  std::atomic<int> told{0};
  auto owner = std::make_shared<MapOwner>(MapOwner{"in-process client", [&](const MappingEvent&) { ++told; }, nullptr});
  auto m = remote->map(*remote->lookup("/f"), 0, 8192, MapAccess::ReadWrite, owner);
  ASSERT_OK(m);
  ASSERT_OK(store(m->data(), "through the client"));
  EXPECT_EQ(read_file(served.fs(), "/f").substr(0, 18), "through the client");
  ASSERT_OK(served.fs().truncate(*served.fs().lookup("/f"), 4096));
  EXPECT_EQ(load(m->data() + 4096, 1).error().code, EFAULT);
  uint64_t off = device_offset_of(served.fs(), "/f", 0);
  ASSERT_OK(served.device().inject_poison(off, 4096));
  ASSERT_OK(served.device().notify_failure(off, 4096, FailureFlags::None));
  EXPECT_EQ(load(m->data(), 1).error().code, EIO);
  for (int i = 0; i < 500 && told.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(told.load(), 1);
  m->unmap();
  served.stop();
  watcher.join();
  std::string all;
  for (const auto& e : events) all += e + "\n";
  EXPECT_NE(all.find("\"event\":\"memory_failure\""), std::string::npos) << all;
  EXPECT_NE(all.find("\"path\":\"/f\""), std::string::npos) << all;
}

// A machine check in a client's mapping is the client's (the kernel signals the
// process that touched the memory): the client reports it, and the server
// records the block, revokes it in every other client and tells the owners.
// Before, the server learnt of it only on its own next access. The signal is
// crafted here (tests/qemu does it with the kernel's own).
TEST(Serve, AMachineCheckInAClientsMappingReachesTheServerAndEveryOtherClient) {
  Served served;
  write_file(served.fs(), "/g", std::string(3 * 4096, 'g'));
  auto consumer = served.client();
  auto other = served.client();
  ASSERT_NE(consumer, nullptr);
  ASSERT_NE(other, nullptr);
  std::atomic<int> told_other{0};
  auto other_owner = std::make_shared<MapOwner>(MapOwner{"other", [&](const MappingEvent& e) {
    if (e.file_offset == 4096 && e.cause == MappingCause::MemoryFailure) ++told_other;
  }, nullptr});
  auto mc = consumer->map(*consumer->lookup("/g"), 0, 3 * 4096, MapAccess::Read);
  auto mo = other->map(*other->lookup("/g"), 0, 3 * 4096, MapAccess::Read, other_owner);
  ASSERT_OK(mc);
  ASSERT_OK(mo);
  ASSERT_EQ(*load(mc->data(), 3 * 4096), std::string(3 * 4096, 'g'));
  ASSERT_EQ(*load(mo->data(), 3 * 4096), std::string(3 * 4096, 'g'));
  const uint64_t lost = device_offset_of(served.fs(), "/g", 4096);
  std::byte* page = mc->data() + 4096;
  auto consumed = guarded([&] {
    siginfo_t si;
    std::memset(&si, 0, sizeof si);
    si.si_signo = SIGBUS;
    si.si_code = BUS_MCEERR_AR;
    si.si_addr = page + 5;
    si.si_addr_lsb = 12;
    ::syscall(SYS_rt_tgsigqueueinfo, ::getpid(), ::gettid(), SIGBUS, &si);
  });
  ASSERT_FALSE(consumed.has_value());
  EXPECT_EQ(consumed.error().code, EIO);
  for (int i = 0; i < 500 && (!recorded_bad(served.fs(), lost) || told_other.load() == 0); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(recorded_bad(served.fs(), lost)) << "the server never heard of the client's machine check";
  EXPECT_EQ(told_other.load(), 1) << "the other client's owner was not told";
  EXPECT_EQ(load(mo->data() + 4096, 1).error().code, EIO);
  EXPECT_EQ(*load(mo->data() + 2 * 4096, 1), "g");
  EXPECT_EQ(read_range(served.fs(), "/g", 4096, 1).error().code, EIO);
  EXPECT_EQ(*read_range(served.fs(), "/g", 0, 1), "g");
  mc->unmap();
  mo->unmap();
}

// An unprivileged client's report is believed only where the server's own read
// of the memory fails too: a client may not make blocks it can only read
// unreadable for everyone.
TEST(Serve, AnUnprivilegedFailureReportIsConfirmedByTheServersOwnRead) {
  MemoryDevice device(64ull << 20, MemoryDevice::Backing::Shared);
  ASSERT_OK(Filesystem::format(device));
  auto fs = std::move(*Filesystem::mount(device));
  write_file(*fs, "/h", std::string(2 * 4096, 'h'));
  const uint64_t healthy = device_offset_of(*fs, "/h", 0);
  const uint64_t failing = device_offset_of(*fs, "/h", 4096);
  ASSERT_OK(device.inject_poison(failing + 64, 64));  // real failed memory: reads of it fail
  Server::Client client;
  client.peer.uid = client.peer.gid = 1000;
  auto report = [&](uint64_t offset, uint64_t length) -> std::optional<int> {
    Encoder e(Op::ReportFailure, 7);
    e.u64(offset);
    e.u64(length);
    std::vector<std::byte> frame = e.finish();
    auto header = decode_header(std::span<const std::byte, kHeaderBytes>(frame.data(), kHeaderBytes));
    auto reply = answer(*fs, device, client, nullptr, *header, std::span(frame).subspan(kHeaderBytes));
    if (!reply) return std::nullopt;
    Decoder d(std::span<const std::byte>(reply->frame).subspan(kHeaderBytes));
    int32_t status = 0;
    uint8_t confirmed = 9;
    if (!d.i32(&status)) return std::nullopt;
    if (status != 0) return -status;
    if (!d.u8(&confirmed)) return std::nullopt;
    return confirmed;
  };
  EXPECT_EQ(report(healthy, 4096), 0) << "a read that succeeds confirms nothing";
  EXPECT_FALSE(recorded_bad(*fs, healthy));
  EXPECT_EQ(report(failing, 4096), 1);
  EXPECT_TRUE(recorded_bad(*fs, failing));
  EXPECT_EQ(report(0, 0), -EINVAL);
  EXPECT_EQ(report(device.size_bytes(), 4096), -EINVAL);
  client.privileged = true;  // root or the server's own user is believed
  const uint64_t believed = healthy;
  EXPECT_EQ(report(believed, 4096), 1);
  EXPECT_TRUE(recorded_bad(*fs, believed));
  ASSERT_OK(fs->unmount());
}

// --- direct mappings across processes ---------------------------------------

// The client processes' programs (Child): args[0] is always the socket.

POISE_CHILD_MAIN(maps_zero_copy) {
  auto fs = connect(args.at(0));
  CHILD_CHECK(fs.has_value());
  auto m = (*fs)->map(*(*fs)->lookup("/f"), 0, 8192, MapAccess::ReadWrite);
  CHILD_CHECK(m.has_value());
  CHILD_CHECK(store(m->data(), "from the child").has_value());
  me.ready();
  CHILD_CHECK(me.wait_for_go());
  auto seen = load(m->data() + 4096, 15);
  CHILD_CHECK(seen.has_value() && *seen == "from the server");
  CHILD_CHECK((*fs)->mapping_count() == 1);
  return 0;
}

TEST(ServeMapping, AClientMapsZeroCopyBothWays) {
  Served served;
  write_file(served.fs(), "/f", std::string(8192, '.'));
  Child child("maps_zero_copy", {served.socket()});
  ASSERT_TRUE(child.wait_until_ready());
  EXPECT_EQ(read_file(served.fs(), "/f").substr(0, 14), "from the child") << "a client's store did not reach the file";
  write_file(served.fs(), "/f", "from the server", 4096);
  child.go();
  EXPECT_EQ(exit_code(child.wait()), 0);
  // The client's lease is gone with it.
  for (int i = 0; i < 200 && served.fs().mapping_count() != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(served.fs().mapping_count(), 0u);
}

// A client's Mapping::sync makes its stores durable: on a device that keeps
// only what was flushed and fenced (persistent memory's rule), a power cut
// right after the sync keeps the synced store; a store after it, never
// flushed, is not kept (so the test tells a sync from none).
TEST(ServeMapping, AClientsMappingSyncIsDurableAcrossAPowerCut) {
  auto owned = std::make_unique<CrashDevice>(64ull << 20, CrashDevice::Model::CacheLines, true);
  CrashDevice* crash = owned.get();
  Served served(1000, std::move(owned));
  write_file(served.fs(), "/f", std::string(8192, '.'));
  ASSERT_OK(served.fs().sync());
  std::unique_ptr<MemoryDevice> image;
  {
    auto client = served.client();
    ASSERT_NE(client, nullptr);
    auto m = client->map(*client->lookup("/f"), 0, 8192, MapAccess::ReadWrite);
    ASSERT_OK(m);
    ASSERT_OK(store(m->data(), "synced by the client"));
    ASSERT_OK(m->sync());
    ASSERT_OK(store(m->data() + 4096, "never synced"));
    image = crash->durable_image();  // the power goes now
  }
  served.stop();
  MountOptions ro;
  ro.mode = MountMode::ReadOnly;
  auto fs = Filesystem::mount(*image, ro);
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  const std::string after = read_file(**fs, "/f");
  EXPECT_EQ(after.substr(0, 20), "synced by the client");
  EXPECT_EQ(after.substr(4096, 12), std::string(12, '.'));
}

POISE_CHILD_MAIN(maps_what_is_truncated) {
  auto fs = connect(args.at(0));
  CHILD_CHECK(fs.has_value());
  auto m = (*fs)->map(*(*fs)->lookup("/t"), 0, 8192, MapAccess::Read);
  CHILD_CHECK(m.has_value());
  CHILD_CHECK(load(m->data() + 4096, 4).value_or("") == "tttt");
  me.ready();
  CHILD_CHECK(me.wait_for_go());
  auto beyond = load(m->data() + 4096, 4);
  CHILD_CHECK(!beyond.has_value() && beyond.error().code == EFAULT);
  CHILD_CHECK(load(m->data(), 4).value_or("") == "tttt");
  return 0;
}

TEST(ServeMapping, TruncateRecallsTheClientsPagesBeforeFreeingThem) {
  Served served;
  write_file(served.fs(), "/t", std::string(8192, 't'));
  Child child("maps_what_is_truncated", {served.socket()});
  ASSERT_TRUE(child.wait_until_ready());
  ASSERT_OK(served.fs().truncate(*served.fs().lookup("/t"), 4096));
  // The freed block is reused at once: the client must not see these bytes.
  write_file(served.fs(), "/reuse", std::string(1 << 20, 'R'));
  child.go();
  EXPECT_EQ(exit_code(child.wait()), 0);
}

// args: socket, path, "loses" or "keeps" its first page.
POISE_CHILD_MAIN(maps_for_a_failure) {
  const std::string& path = args.at(1);
  const bool expect_loss = args.at(2) == "loses";
  auto fs = connect(args.at(0));
  CHILD_CHECK(fs.has_value());
  std::atomic<int> told{0};
  std::atomic<uint64_t> told_offset{UINT64_MAX};
  auto owner = std::make_shared<MapOwner>(MapOwner{"p", [&](const MappingEvent& e) {
                                                     told_offset = e.file_offset;
                                                     ++told;
                                                   }, nullptr});
  auto m = (*fs)->map(*(*fs)->lookup(path), 0, 8192, MapAccess::Read, owner);
  CHILD_CHECK(m.has_value());
  CHILD_CHECK(load(m->data(), 4).has_value());
  me.ready();
  CHILD_CHECK(me.wait_for_go());
  // Early notice: the sink is called (on a poise thread, soon after the
  // failure), without any access to the page.
  for (int i = 0; i < 500 && expect_loss && told.load() == 0; ++i) ::usleep(10000);
  if (!expect_loss) ::usleep(100000);  // a stray notice would have come by now
  CHILD_CHECK(told.load() == (expect_loss ? 1 : 0));
  auto first = load(m->data(), 4);
  if (expect_loss) {
    CHILD_CHECK(told_offset.load() == 0);
    CHILD_CHECK(!first.has_value() && first.error().code == EIO);
  } else {
    CHILD_CHECK(first.has_value());
  }
  CHILD_CHECK(load(m->data() + 4096, 4).has_value());  // only the lost page
  return 0;
}

TEST(ServeMapping, APoisonedSharedBlockTellsExactlyTheProcessesThatMapIt) {
  Served served;
  write_file(served.fs(), "/a", std::string(8192, 'a'));
  ASSERT_OK(served.fs().create("/b"));
  ASSERT_OK(served.fs().reflink(*served.fs().lookup("/a"), *served.fs().lookup("/b")));
  write_file(served.fs(), "/c", std::string(8192, 'c'));
  Child p1("maps_for_a_failure", {served.socket(), "/a", "loses"});
  Child p2("maps_for_a_failure", {served.socket(), "/b", "loses"});
  Child p3("maps_for_a_failure", {served.socket(), "/c", "keeps"});
  for (Child* c : {&p1, &p2, &p3}) ASSERT_TRUE(c->wait_until_ready());
  uint64_t off = device_offset_of(served.fs(), "/a", 0);
  ASSERT_OK(served.device().inject_poison(off, 4096));
  ASSERT_OK(served.device().notify_failure(off, 4096, FailureFlags::None));
  for (Child* c : {&p1, &p2, &p3}) c->go();
  EXPECT_EQ(exit_code(p1.wait()), 0) << "the process mapping /a";
  EXPECT_EQ(exit_code(p2.wait()), 0) << "the process mapping /b, its reflink";
  EXPECT_EQ(exit_code(p3.wait()), 0) << "the process mapping an unrelated file";
}

POISE_CHILD_MAIN(stores_across_a_reflink) {
  auto fs = connect(args.at(0));
  CHILD_CHECK(fs.has_value());
  auto m = (*fs)->map(*(*fs)->lookup("/s"), 0, 4096, MapAccess::ReadWrite);
  CHILD_CHECK(m.has_value());
  CHILD_CHECK(store(m->data(), "one").has_value());
  me.ready();
  CHILD_CHECK(me.wait_for_go());
  CHILD_CHECK(store(m->data(), "two").has_value());
  me.ready();
  CHILD_CHECK(me.wait_for_go());
  return 0;
}

TEST(ServeMapping, AStoreToAReflinkedPageInAClientCopiesOnWrite) {
  Served served;
  write_file(served.fs(), "/s", std::string(4096, 's'));
  Child child("stores_across_a_reflink", {served.socket()});
  ASSERT_TRUE(child.wait_until_ready());
  ASSERT_OK(served.fs().create("/clone"));
  ASSERT_OK(served.fs().reflink(*served.fs().lookup("/s"), *served.fs().lookup("/clone")));
  child.go();
  ASSERT_TRUE(child.wait_until_ready());
  EXPECT_EQ(read_file(served.fs(), "/s").substr(0, 3), "two");
  EXPECT_EQ(read_file(served.fs(), "/clone").substr(0, 3), "one") << "a client's old writable page wrote into the clone";
  child.go();
  EXPECT_EQ(exit_code(child.wait()), 0);
  EXPECT_TRUE(served.fs().check().clean());
}

POISE_CHILD_MAIN(maps_and_waits) {
  auto fs = connect(args.at(0));
  CHILD_CHECK(fs.has_value());
  auto m = (*fs)->map(*(*fs)->lookup("/k"), 0, 8192, MapAccess::Read);
  CHILD_CHECK(m.has_value());
  CHILD_CHECK(load(m->data() + 4096, 1).has_value());
  me.ready();
  for (;;) ::pause();
}

TEST(ServeMapping, AClientThatDoesNotAnswerARecallIsKilledBeforeTheBlockIsFreed) {
  Served served(300);
  write_file(served.fs(), "/k", std::string(8192, 'k'));
  Child child("maps_and_waits", {served.socket()});
  ASSERT_TRUE(child.wait_until_ready());
  // An operator's event stream, through the client library.
  auto watcher_fs = served.client();
  std::mutex events_mu;
  std::vector<std::string> events;
  std::atomic<bool> subscribed{false};
  std::thread watcher([&] {
    subscribed = true;
    (void)watcher_fs->watch_events([&](const std::string& e) {
      std::lock_guard lock(events_mu);
      events.push_back(e);
      return true;
    });
  });
  while (!subscribed) std::this_thread::yield();
  served.wait_for_subscribers(1);
  ASSERT_TRUE(child.stop()) << "the client did not stop";  // it cannot answer
  EXPECT_TRUE(served.fs().truncate(*served.fs().lookup("/k"), 0).has_value());
  // truncate returned: the client must already be dead (killed, not stopped).
  int status = 0;
  const bool dead = ::waitpid(child.pid(), &status, WNOHANG) == child.pid();
  EXPECT_TRUE(dead) << "the block was freed while the client lived";
  if (dead) {
    child.forget();
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  }
  served.stop();
  watcher.join();
  std::string all;
  for (const auto& e : events) all += e + "\n";
  EXPECT_NE(all.find("\"event\":\"lease_recalled\""), std::string::npos) << all;
  EXPECT_NE(all.find("\"event\":\"client_killed\",\"pid\":" + std::to_string(child.pid())), std::string::npos) << all;
  EXPECT_NE(all.find("server_stopped"), std::string::npos) << all;
}

// A store to a read-only mapping kills the client with SIGSEGV, as the kernel
// would, and never reaches the server (whose copy would take it as its own
// stray store).
POISE_CHILD_MAIN(stores_to_a_read_only_mapping) {
  auto fs = connect(args.at(0));
  CHILD_CHECK(fs.has_value());
  auto m = (*fs)->map(*(*fs)->lookup("/ro"), 0, 4096, MapAccess::Read);
  CHILD_CHECK(m.has_value());
  me.ready();  // mapped: what follows is the store
  *reinterpret_cast<volatile char*>(m->data()) = 'w';
  return 0;
}

TEST(ServeMapping, AStoreToAReadOnlyMappingKillsOnlyTheClient) {
  Served served;
  write_file(served.fs(), "/ro", std::string(4096, 'r'));
  Child child("stores_to_a_read_only_mapping", {served.socket()});
  ASSERT_TRUE(child.wait_until_ready()) << "the client did not map the file";
  int status = child.wait();
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // The sanitizer's own SIGSEGV handler reports the signal and stops the process.
  EXPECT_NE(exit_code(status), 0) << "a store to a read-only mapping went through";
#else
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV) << "exit " << exit_code(status);
#endif
  auto other = served.client();
  ASSERT_NE(other, nullptr);
  EXPECT_EQ(read_file(*other, "/ro"), std::string(4096, 'r'));
}

// poise offline under load, across processes: a process mapping a file for
// reading, one mapping it for writing and one writing through the API. After
// the pre-remove every mapping owner was told (device removal); after the
// removal the device memory is overwritten from outside, and no process may
// see the new bytes; every write the API acknowledged is in the image, which
// mounts again and checks clean.
// args: socket, "read" or "write".
POISE_CHILD_MAIN(maps_through_a_removal) {
  const MapAccess access = args.at(1) == "write" ? MapAccess::ReadWrite : MapAccess::Read;
  auto fs = connect(args.at(0));
  CHILD_CHECK(fs.has_value());
  std::atomic<int> removal_notices{0};
  auto owner = std::make_shared<MapOwner>(MapOwner{"m", [&](const MappingEvent& e) {
                                                     if (e.cause == MappingCause::DeviceRemoval) ++removal_notices;
                                                   }, nullptr});
  auto m = (*fs)->map(*(*fs)->lookup("/w"), 0, 8192, access, owner);
  CHILD_CHECK(m.has_value());
  if (access == MapAccess::ReadWrite) CHILD_CHECK(store(m->data() + 4096, "mapped store").has_value());
  CHILD_CHECK(load(m->data(), 1).value_or("") == "w");
  me.ready();
  CHILD_CHECK(me.wait_for_go());  // pre-removed
  for (int i = 0; i < 500 && removal_notices.load() == 0; ++i) ::usleep(10000);
  CHILD_CHECK(removal_notices.load() == 1);
  me.ready();
  CHILD_CHECK(me.wait_for_go());  // removed, and the memory overwritten from outside
  auto after = load(m->data(), 8);
  CHILD_CHECK(!after.has_value());
  CHILD_CHECK(!store(m->data(), "late").has_value());
  return 0;
}

// Writes block after block until a write fails, telling each acknowledged
// write's number on its extra descriptor.
POISE_CHILD_MAIN(writes_through_a_removal) {
  auto fs = connect(args.at(0));
  CHILD_CHECK(fs.has_value());
  auto f = (*fs)->open("/api", OpenFlags::Create);
  CHILD_CHECK(f.has_value());
  me.ready();
  for (uint32_t i = 0;; ++i) {  // until the removal fails a write
    std::string block(4096, static_cast<char>('a' + i % 26));
    if (!f->write(uint64_t(i) * 4096, as_bytes(block)).has_value()) break;
    (void)!::write(Child::kExtraFd, &i, sizeof(i));
  }
  return 0;
}

TEST(ServeMapping, RemovalUnderLoadLosesNothingAcknowledgedAndShowsNothingAfter) {
  Served served;
  write_file(served.fs(), "/w", std::string(8192, 'w'));
  const uint64_t w_off = device_offset_of(served.fs(), "/w", 0);
  Child reader("maps_through_a_removal", {served.socket(), "read"});
  Child writer("maps_through_a_removal", {served.socket(), "write"});
  int acked_pipe[2];
  ASSERT_EQ(::pipe2(acked_pipe, O_CLOEXEC), 0);
  Child api("writes_through_a_removal", {served.socket()}, acked_pipe[1]);
  ::close(acked_pipe[1]);
  for (Child* c : {&reader, &writer, &api}) ASSERT_TRUE(c->wait_until_ready());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the API writer writes meanwhile
  auto admin = served.client();
  ASSERT_NE(admin, nullptr);
  ASSERT_OK(admin->offline(0));
  for (Child* c : {&reader, &writer}) c->go();
  for (Child* c : {&reader, &writer}) ASSERT_TRUE(c->wait_until_ready());
  // The mapped store is in the device memory, written back before the freeze.
  EXPECT_EQ(read_file(served.fs(), "/w").substr(4096, 12), "mapped store");
  // A copy of the device as the removal leaves it: what must survive.
  ASSERT_OK(admin->offline(2));
  std::vector<std::byte> image(served.device().data(), served.device().data() + (64ull << 20));
  std::memset(served.device().data() + w_off, 'Z', 8192);  // the memory is reused by someone else
  for (Child* c : {&reader, &writer}) c->go();
  EXPECT_EQ(exit_code(reader.wait()), 0) << "a mapped reader reached the device after its removal";
  EXPECT_EQ(exit_code(writer.wait()), 0) << "a mapped writer reached the device after its removal";
  EXPECT_EQ(exit_code(api.wait()), 0);
  uint32_t i = 0, acked = 0;
  while (::read(acked_pipe[0], &i, sizeof(i)) == sizeof(i)) acked = i + 1;
  ::close(acked_pipe[0]);
  EXPECT_GT(acked, 0u) << "the API writer never got an acknowledgement";
  // The image mounts again and holds everything acknowledged.
  MemoryDevice again(64ull << 20);
  std::memcpy(again.data(), image.data(), image.size());
  auto fs = Filesystem::mount(again);
  ASSERT_OK(fs);
  EXPECT_TRUE((*fs)->check().clean());
  std::string api_file = read_file(**fs, "/api");
  ASSERT_GE(api_file.size(), uint64_t(acked) * 4096) << acked << " writes were acknowledged";
  for (uint32_t k = 0; k < acked; ++k) {
    ASSERT_EQ(api_file[uint64_t(k) * 4096], static_cast<char>('a' + k % 26)) << "acknowledged write " << k << " lost";
  }
  EXPECT_EQ(read_file(**fs, "/w").substr(4096, 12), "mapped store");
}

POISE_CHILD_MAIN(maps_while_the_server_stops) {
  auto fs = connect(args.at(0));
  CHILD_CHECK(fs.has_value());
  auto m = (*fs)->map(*(*fs)->lookup("/x"), 0, 4096, MapAccess::ReadWrite);
  CHILD_CHECK(m.has_value());
  CHILD_CHECK(load(m->data(), 1).has_value());
  me.ready();
  CHILD_CHECK(me.wait_for_go());
  auto after = load(m->data(), 1);
  CHILD_CHECK(!after.has_value() && after.error().code == ESHUTDOWN);
  CHILD_CHECK(!store(m->data(), "late").has_value());
  return 0;
}

TEST(ServeMapping, WhenTheServerStopsEveryClientMappingIsRevoked) {
  auto served = std::make_unique<Served>();
  write_file(served->fs(), "/x", std::string(4096, 'x'));
  Child child("maps_while_the_server_stops", {served->socket()});
  ASSERT_TRUE(child.wait_until_ready());
  served->stop();
  child.go();
  EXPECT_EQ(exit_code(child.wait()), 0);
}

}  // namespace
}  // namespace poise::serve
