// Crash consistency (invariant I8): each workload runs on the crash-simulating
// device; then, for every flush point, it runs again, the device captures what a
// power cut at that point could leave (lines lost, kept or torn into 8-byte
// words; on the page-cache model, dirty pages written back in any order), and
// the captured image must
//   - pass the offline checker,
//   - mount (replaying the journal), and pass the online checker,
//   - hold exactly the state after the last completed operation, or after the
//     one in flight (every operation is atomic and durable when it returns), or
//     for workloads that overwrite in place or run on the page-cache model,
//     everything fsync'd,
//   - accept new writes and remount.
// Workloads: mixed namespace and data operations (symbolic links and
// RENAME_EXCHANGE among them); a journal that fills and
// checkpoints; in-place overwrites with fsync (both models); fsync'd files on an
// emulated device (page cache); two threads at once. Each crash point runs with
// several seeds, printed.
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <thread>
#include <map>
#include <string>

#include "base/random.h"
#include "device/crash_device.h"
#include "device/memory_device.h"
#include "format/superblock.h"
#include "fs/posix_acl.h"
#include "poise/filesystem.h"

namespace poise {
namespace {

using State = std::map<std::string, std::string>;  // path -> content, or "<dir>"
using Op = std::function<void(Filesystem&)>;

std::span<const std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

void must(const Result<void>& r, const char* what) {
  ASSERT_TRUE(r.has_value()) << what << ": " << r.error().message;
}

InodeNumber ino_of(Filesystem& fs, const std::string& path) {
  auto ino = fs.lookup(path);
  EXPECT_TRUE(ino.has_value()) << path;
  return ino.value_or(InodeNumber(0));
}

void write_at(Filesystem& fs, const std::string& path, uint64_t offset, const std::string& data) {
  auto n = fs.write(ino_of(fs, path), offset, bytes(data));
  ASSERT_TRUE(n.has_value()) << n.error().message;
}

void collect(Filesystem& fs, const std::string& dir, State* out) {
  auto entries = fs.readdir(dir);
  ASSERT_TRUE(entries.has_value()) << entries.error().message;
  for (const auto& e : *entries) {
    std::string path = (dir == "/" ? "" : dir) + "/" + e.name;
    // Extended attributes (ACLs among them), and then the permission bits they may set.
    auto names = fs.list_xattrs(e.ino);
    ASSERT_TRUE(names.has_value()) << path << ": " << names.error().message;
    for (const std::string& name : *names) (*out)[path + " xattr " + name] = fs.get_xattr(e.ino, name).value_or("?");
    if (!names->empty()) (*out)[path + " mode"] = std::to_string(fs.stat(e.ino)->mode);
    if (e.type == FileType::Directory) {
      (*out)[path] = "<dir>";
      collect(fs, path, out);
      continue;
    }
    if (e.type == FileType::Symlink) {
      auto target = fs.readlink(e.ino);
      ASSERT_TRUE(target.has_value()) << path << ": " << target.error().message;
      (*out)[path] = "<link> " + *target;
      continue;
    }
    auto st = fs.stat(e.ino);
    std::string content(st->size_bytes, '\0');
    auto n = fs.read(e.ino, 0, {reinterpret_cast<std::byte*>(content.data()), content.size()});
    ASSERT_TRUE(n.has_value());
    (*out)[path] = content;
  }
}

State state_of(Filesystem& fs) {
  State s;
  collect(fs, "/", &s);
  return s;
}

// The state after i operations, when the workload can say it without a tree walk.
using Expected = std::function<State(size_t)>;

struct Trace {
  std::vector<State> states;         // states[i]: after i operations
  std::vector<uint64_t> flush_points;  // flush points completed by then
  uint64_t total_flush_points = 0;
};

constexpr uint64_t kDeviceBytes = 16ull << 20;
uint64_t fallbacks_verified = 0;  // crash images whose previous checkpoint stood in for the newest
constexpr int kSeedsPerPoint = 2;  // each crash point keeps a different random subset per seed

// Runs the workload, arming the device at `crash_at` (0: never).
Trace run(const std::vector<Op>& ops, CrashDevice& device, uint64_t crash_at, uint64_t seed,
          const Expected& expected = nullptr) {
  Trace t;
  if (crash_at != 0) device.arm(crash_at, seed);
  auto formatted = Filesystem::format(device);
  EXPECT_TRUE(formatted.has_value());
  auto fs = Filesystem::mount(device);
  EXPECT_TRUE(fs.has_value());
  // Only the reference run records states, and only when the workload cannot say them.
  bool record = crash_at == 0 && !expected;
  if (record) t.states.push_back(state_of(**fs));
  t.flush_points.push_back(device.flush_points());
  for (const Op& op : ops) {
    op(**fs);
    if (record) t.states.push_back(state_of(**fs));
    t.flush_points.push_back(device.flush_points());
  }
  EXPECT_TRUE((*fs)->unmount().has_value());
  t.total_flush_points = device.flush_points();
  return t;
}

// Checks a captured crash image offline, mounts it (replaying the journal) and
// checks it online; every problem is a test failure. nullptr if it cannot mount.
std::unique_ptr<Filesystem> mount_checked(Device& image) {
  auto offline = Filesystem::check_device(image);
  if (!offline.has_value()) {
    ADD_FAILURE() << "offline check: " << offline.error().message;
    return nullptr;
  }
  for (const auto& p : offline->problems) ADD_FAILURE() << "offline check: " << p;
  auto fs = Filesystem::mount(image);
  if (!fs.has_value()) {
    ADD_FAILURE() << "mount: " << fs.error().message;
    return nullptr;
  }
  for (const auto& p : (*fs)->check().problems) ADD_FAILURE() << "online check: " << p;
  return std::move(*fs);
}

// Operations whose every flush point precedes the crash at `point`.
size_t ops_done(const Trace& reference, uint64_t point) {
  size_t done = 0;
  while (done + 1 < reference.flush_points.size() && reference.flush_points[done + 1] < point) ++done;
  return done;
}

// Where the crash image keeps a previous checkpoint, the newest one is made
// unreadable (a byte of each root copy, in a private view): the previous one and
// the journal carried with the newest must stand in and give the same state.
void expect_the_previous_checkpoint_stands_in(const MemoryDevice& image, const State& recovered) {
  auto sb = format::decode_superblock(image.data(), 0, "primary superblock");
  if (!sb.has_value()) {  // a torn primary: the secondary is as good
    const uint64_t last = image.size_bytes() / kBlockSize - 1;
    sb = format::decode_superblock(image.data() + last * kBlockSize, last, "secondary superblock");
  }
  ASSERT_TRUE(sb.has_value()) << sb.error().message;
  if (!sb->has_previous()) return;
  auto view = MemoryDevice::private_view_of(image);
  ASSERT_TRUE(view.has_value()) << view.error().message;
  for (uint64_t root : {sb->checkpoint_root_block, sb->checkpoint_copy_root_block}) {
    std::byte b;
    ASSERT_TRUE((*view)->read(root * kBlockSize + 100, &b, 1).has_value());
    b ^= std::byte{0x40};
    (*view)->write(root * kBlockSize + 100, &b, 1);
  }
  MountOptions ro;
  ro.mode = MountMode::ReadOnly;
  auto fs = Filesystem::mount(**view, ro);
  ASSERT_TRUE(fs.has_value()) << "the previous checkpoint could not stand in: " << fs.error().message;
  EXPECT_TRUE(state_of(**fs) == recovered) << "the previous checkpoint and the carried journal give another state";
  ++fallbacks_verified;
}

void verify_crash_point(const std::vector<Op>& ops, const Trace& reference, uint64_t point, uint64_t seed,
                        const Expected& expected = nullptr) {
  SCOPED_TRACE("crash at flush point " + std::to_string(point));
  CrashDevice device(kDeviceBytes);
  run(ops, device, point, seed, expected);
  ASSERT_TRUE(device.crashed());
  auto image = device.crash_image();
  auto untouched = MemoryDevice::private_view_of(*image);  // as the crash left it, before any mount writes
  ASSERT_TRUE(untouched.has_value()) << untouched.error().message;
  auto fs = mount_checked(*image);
  ASSERT_TRUE(fs != nullptr);
  State recovered = state_of(*fs);
  expect_the_previous_checkpoint_stands_in(**untouched, recovered);
  size_t done = ops_done(reference, point);
  auto state_at = [&](size_t i) { return expected ? expected(i) : reference.states[i]; };
  bool matches = recovered == state_at(done) ||
                 (done + 1 < reference.flush_points.size() && recovered == state_at(done + 1));
  if (!matches) {
    State a = state_at(done);
    std::string diff;
    for (const auto& [path, content] : recovered) {
      if (a.count(path) == 0) diff += " extra:" + path;
      else if (a[path] != content) diff += " differs:" + path;
    }
    for (const auto& [path, content] : a) {
      if (recovered.count(path) == 0) diff += " missing:" + path;
    }
    if (diff.size() > 400) diff.resize(400);
    ADD_FAILURE() << "recovered state is neither the state after operation " << done
                  << " nor after the one in flight; against the former:" << diff;
  }
  // The recovered filesystem keeps working.
  auto ino = fs->create("/after-crash");
  ASSERT_TRUE(ino.has_value()) << ino.error().message;
  ASSERT_TRUE(fs->write(*ino, 0, bytes("still works")).has_value());
  ASSERT_TRUE(fs->unmount().has_value());
  auto again = Filesystem::mount(*image);
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE((*again)->check().clean());
}

// An ACL with a named user: kept as an attribute, and it sets the mode.
std::string some_acl() {
  return acl::encode({{acl::kUserObj, 7, 0}, {acl::kUser, 6, 1000}, {acl::kGroupObj, 5, 0}, {acl::kMask, 5, 0},
                      {acl::kOther, 0, 0}});
}

std::vector<Op> mixed_workload() {
  std::string block_a(10000, 'a');
  return {
      [](Filesystem& fs) { ASSERT_TRUE(fs.mkdir("/a").has_value()); },
      [](Filesystem& fs) { ASSERT_TRUE(fs.create("/a/f1").has_value()); },
      [=](Filesystem& fs) { write_at(fs, "/a/f1", 0, block_a); },
      [](Filesystem& fs) { write_at(fs, "/a/f1", 10000, std::string(5000, 'b')); },
      [](Filesystem& fs) { ASSERT_TRUE(fs.create("/a/f2").has_value()); },
      [](Filesystem& fs) { must(fs.reflink(ino_of(fs, "/a/f1"), ino_of(fs, "/a/f2")), "reflink"); },
      [](Filesystem& fs) { write_at(fs, "/a/f2", 4100, "copy-on-write"); },
      [](Filesystem& fs) { must(fs.rename("/a/f2", "/b"), "rename"); },
      [](Filesystem& fs) { must(fs.truncate(ino_of(fs, "/a/f1"), 3000), "truncate"); },
      [](Filesystem& fs) { must(fs.link("/b", "/a/f3"), "link"); },
      [](Filesystem& fs) { must(fs.unlink("/a/f1"), "unlink"); },
      [](Filesystem& fs) { must(fs.punch_hole(ino_of(fs, "/b"), 4096, 4096), "punch"); },
      [](Filesystem& fs) { ASSERT_TRUE(fs.create("/c").has_value()); },
      [](Filesystem& fs) { must(fs.clone_range(ino_of(fs, "/b"), 0, ino_of(fs, "/c"), 8192, 8192), "clone"); },
      [](Filesystem& fs) { must(fs.fallocate(ino_of(fs, "/c"), 0, 65536, FallocateMode::ExtendSize), "fallocate"); },
      [](Filesystem& fs) { write_at(fs, "/c", 30000, std::string(100000, 'c')); },
      [](Filesystem& fs) { must(fs.rename("/a", "/d"), "rename dir"); },
      [](Filesystem& fs) { ASSERT_TRUE(fs.mkdir("/d/sub").has_value()); },
      [](Filesystem& fs) { must(fs.rename("/c", "/d/f3"), "rename over"); },
      [](Filesystem& fs) { must(fs.rmdir("/d/sub"), "rmdir"); },
      [](Filesystem& fs) { ASSERT_TRUE(fs.symlink("f3", "/d/ln").has_value()); },
      [](Filesystem& fs) {
        must(fs.rename_at(kRootInode, "b", ino_of(fs, "/d"), "f3", RenameFlags::Exchange), "exchange");
      },
      [](Filesystem& fs) { must(fs.set_xattr(ino_of(fs, "/d"), "user.k", std::string(3000, 'x')), "setxattr"); },
      [](Filesystem& fs) { must(fs.set_xattr(ino_of(fs, "/b"), acl::kAccessName, some_acl()), "set access ACL"); },
      [](Filesystem& fs) { must(fs.set_xattr(ino_of(fs, "/d"), acl::kDefaultName, some_acl()), "set default ACL"); },
      [](Filesystem& fs) { ASSERT_TRUE(fs.mkdir("/d/inherits").has_value()); },
      [](Filesystem& fs) { must(fs.remove_xattr(ino_of(fs, "/d"), "user.k"), "removexattr"); },
      [](Filesystem& fs) { must(fs.fsync(ino_of(fs, "/b")), "fsync"); },
  };
}

TEST(Crash, EveryFlushPointOfAMixedWorkload) {
  uint64_t seed = test_seed("Crash.EveryFlushPointOfAMixedWorkload");
  auto ops = mixed_workload();
  CrashDevice reference_device(kDeviceBytes);
  Trace reference = run(ops, reference_device, 0, seed);
  ASSERT_GT(reference.total_flush_points, reference.flush_points[0] + ops.size());
  uint64_t tested = 0;
  for (uint64_t point = reference.flush_points[0] + 1; point <= reference.total_flush_points; ++point) {
    for (int k = 0; k < kSeedsPerPoint && !::testing::Test::HasFailure(); ++k) {
      verify_crash_point(ops, reference, point, seed + point * kSeedsPerPoint + k);
      ++tested;
    }
    if (::testing::Test::HasFailure()) break;
  }
  std::fprintf(stderr, "verified %llu crash points\n", static_cast<unsigned long long>(tested));
}

TEST(Crash, AroundJournalWrapAndCheckpoint) {
  uint64_t seed = test_seed("Crash.AroundJournalWrapAndCheckpoint");
  // Creates, with a write to every 500th file as an operation of its own.
  auto name = [](size_t i) { return "/file-with-a-longer-name-" + std::to_string(i); };
  std::vector<std::pair<size_t, bool>> steps;  // (file, is_write)
  for (size_t i = 0; i < 5000; ++i) {
    steps.emplace_back(i, false);
    if (i % 500 == 0) steps.emplace_back(i, true);
  }
  std::vector<Op> ops;
  for (const auto& [file, is_write] : steps) {
    ops.push_back([file = file, is_write = is_write, name](Filesystem& fs) {
      if (is_write) {
        ASSERT_TRUE(fs.write(*fs.lookup(name(file)), 0, bytes(std::string(5000, 'x'))).has_value());
      } else {
        ASSERT_TRUE(fs.create(name(file)).has_value());
      }
    });
  }
  Expected expected = [&](size_t done) {
    State s;
    for (size_t k = 0; k < done; ++k) s[name(steps[k].first)] = steps[k].second ? std::string(5000, 'x') : "";
    return s;
  };
  CrashDevice reference_device(kDeviceBytes);
  Trace reference = run(ops, reference_device, 0, seed, expected);
  // The checkpoint forced by the full journal writes several flush points in a row
  // within one operation: find it, and crash at each of its points and around it.
  size_t busiest = 1;
  for (size_t i = 1; i < reference.flush_points.size(); ++i) {
    if (reference.flush_points[i] - reference.flush_points[i - 1] >
        reference.flush_points[busiest] - reference.flush_points[busiest - 1]) {
      busiest = i;
    }
  }
  ASSERT_GT(reference.flush_points[busiest] - reference.flush_points[busiest - 1], 2u) << "no checkpoint happened";
  Rng rng(seed);
  std::vector<uint64_t> points;
  for (uint64_t p = reference.flush_points[busiest - 1] - 3; p <= reference.flush_points[busiest] + 3; ++p) points.push_back(p);
  for (int i = 0; i < 12; ++i) points.push_back(reference.flush_points[0] + 1 + rng.below(reference.total_flush_points - reference.flush_points[0]));
  fallbacks_verified = 0;
  for (uint64_t p : points) {
    verify_crash_point(ops, reference, p, seed + p, expected);
    if (::testing::Test::HasFailure()) break;
  }
  std::fprintf(stderr, "the previous checkpoint stood in for the newest at %llu crash points\n",
               static_cast<unsigned long long>(fallbacks_verified));
  EXPECT_GT(fallbacks_verified, 0u) << "no crash image kept a previous checkpoint";
}

// --- In-place overwrites and fsync ---------------------------------------------

constexpr uint64_t kBlock = 4096;
constexpr int kOverwrites = 12;

// Op 0 writes kOverwrites blocks of '.' and fsyncs; op k overwrites block k-1 in
// place with 'A'+k and fsyncs.
std::vector<Op> overwrite_workload() {
  std::vector<Op> ops;
  ops.push_back([](Filesystem& fs) {
    ASSERT_TRUE(fs.create("/data").has_value());
    write_at(fs, "/data", 0, std::string(kOverwrites * kBlock, '.'));
    must(fs.fsync(ino_of(fs, "/data")), "fsync");
  });
  for (int k = 1; k <= kOverwrites; ++k) {
    ops.push_back([k](Filesystem& fs) {
      write_at(fs, "/data", (k - 1) * kBlock, std::string(kBlock, static_cast<char>('A' + k)));
      must(fs.fsync(ino_of(fs, "/data")), "fsync");
    });
  }
  return ops;
}

// Every block whose overwrite was fsync'd holds it; the others hold, in each
// `unit` (8-byte word, or page on the page-cache model), the old or the new bytes.
void verify_overwrites(CrashDevice::Model model, uint64_t point, uint64_t seed, const Trace& reference) {
  SCOPED_TRACE("crash at flush point " + std::to_string(point) + ", seed " + std::to_string(seed));
  auto ops = overwrite_workload();
  CrashDevice device(kDeviceBytes, model);
  run(ops, device, point, seed, [](size_t) { return State{}; });
  ASSERT_TRUE(device.crashed());
  auto image = device.crash_image();
  auto fs = mount_checked(*image);
  ASSERT_TRUE(fs != nullptr);
  size_t done = ops_done(reference, point);
  auto ino = fs->lookup("/data");
  if (done == 0 && !ino.has_value()) return;  // the first op (and its fsync) had not finished
  ASSERT_TRUE(ino.has_value()) << "the fsync'd file is gone";
  std::string content(kOverwrites * kBlock, '\0');
  auto n = fs->read(*ino, 0, {reinterpret_cast<std::byte*>(content.data()), content.size()});
  ASSERT_TRUE(n.has_value()) << n.error().message;
  if (done == 0) return;  // op 0 in flight: not yet promised
  ASSERT_EQ(*n, content.size());
  const uint64_t unit = model == CrashDevice::Model::PageCache ? kBlock : 8;
  for (int k = 1; k <= kOverwrites; ++k) {
    const char now = static_cast<char>('A' + k);
    const bool synced = static_cast<size_t>(k) < done;  // ops 0..done-1 finished, their fsync included
    for (uint64_t at = (k - 1) * kBlock; at < k * kBlock; at += unit) {
      std::string piece = content.substr(at, unit);
      const bool is_new = piece == std::string(unit, now);
      const bool is_old = piece == std::string(unit, '.');
      if (synced) {
        ASSERT_TRUE(is_new) << "block " << k - 1 << " was fsync'd (op " << k << " of " << done << " done) but byte "
                            << at << " holds '" << piece[0] << "'";
      } else {
        ASSERT_TRUE(is_new || is_old) << "byte " << at << " of block " << k - 1 << " is neither old nor new";
      }
    }
  }
}

void overwrite_crash_test(CrashDevice::Model model, const char* name) {
  uint64_t seed = test_seed(name);
  auto ops = overwrite_workload();
  CrashDevice reference_device(kDeviceBytes, model);
  Trace reference = run(ops, reference_device, 0, seed, [](size_t) { return State{}; });
  uint64_t tested = 0;
  for (uint64_t point = reference.flush_points[0] + 1; point <= reference.total_flush_points; ++point) {
    for (int k = 0; k < kSeedsPerPoint && !::testing::Test::HasFailure(); ++k) {
      verify_overwrites(model, point, seed + point * kSeedsPerPoint + k, reference);
      ++tested;
    }
    if (::testing::Test::HasFailure()) break;
  }
  std::fprintf(stderr, "verified %llu crash points\n", static_cast<unsigned long long>(tested));
}

TEST(Crash, InPlaceOverwritesAreDurableAfterFsync) {
  overwrite_crash_test(CrashDevice::Model::CacheLines, "Crash.InPlaceOverwritesAreDurableAfterFsync");
}

TEST(Crash, InPlaceOverwritesOnAnEmulatedDeviceAreDurableAfterFsync) {
  overwrite_crash_test(CrashDevice::Model::PageCache, "Crash.InPlaceOverwritesOnAnEmulatedDeviceAreDurableAfterFsync");
}

// --- An emulated device: what fsync promised survives a machine crash --------

// Runs `ops` on the page-cache model once for reference, then once per flush
// point and seed; each captured image, mounted and checked, goes to `verify`
// with the number of operations finished before the crash. Stops at the first
// failure; returns how many crash images were verified.
uint64_t for_each_page_cache_crash(const std::vector<Op>& ops, uint64_t seed, int seeds_per_point,
                                   const std::function<void(Filesystem&, size_t done)>& verify) {
  CrashDevice reference_device(kDeviceBytes, CrashDevice::Model::PageCache);
  Trace reference = run(ops, reference_device, 0, seed, [](size_t) { return State{}; });
  uint64_t tested = 0;
  for (uint64_t point = reference.flush_points[0] + 1; point <= reference.total_flush_points; ++point) {
    for (int k = 0; k < seeds_per_point; ++k) {
      uint64_t s = seed + point * 8 + k;
      SCOPED_TRACE("crash at flush point " + std::to_string(point) + ", seed " + std::to_string(s));
      CrashDevice device(kDeviceBytes, CrashDevice::Model::PageCache);
      run(ops, device, point, s, [](size_t) { return State{}; });
      EXPECT_TRUE(device.crashed());
      if (!device.crashed()) return tested;
      auto image = device.crash_image();
      auto fs = mount_checked(*image);
      if (fs == nullptr) return tested;
      verify(*fs, ops_done(reference, point));
      ++tested;
      if (::testing::Test::HasFailure()) return tested;
    }
  }
  return tested;
}

TEST(Crash, FsyncedFilesOnAnEmulatedDeviceSurviveAMachineCrash) {
  uint64_t seed = test_seed("Crash.FsyncedFilesOnAnEmulatedDeviceSurviveAMachineCrash");
  auto content = [](int k) { return std::string(3000 + 1000 * k, static_cast<char>('a' + k)); };
  std::vector<Op> ops;
  constexpr int kFiles = 6;
  for (int k = 0; k < kFiles; ++k) {
    ops.push_back([k, content](Filesystem& fs) {
      std::string dir = "/dir" + std::to_string(k % 2);
      if (k < 2) {
        ASSERT_TRUE(fs.mkdir(dir).has_value());
      }
      std::string path = dir + "/f" + std::to_string(k);
      ASSERT_TRUE(fs.create(path).has_value());
      write_at(fs, path, 0, content(k));
      if (k > 0) must(fs.rename("/dir" + std::to_string((k - 1) % 2) + "/f" + std::to_string(k - 1),
                                "/dir" + std::to_string((k - 1) % 2) + "/g" + std::to_string(k - 1)), "rename");
      must(fs.fsync(ino_of(fs, path)), "fsync");  // all metadata so far, and this file's data
    });
  }
  uint64_t tested = for_each_page_cache_crash(ops, seed, kSeedsPerPoint, [&](Filesystem& fs, size_t done) {
    for (size_t k = 0; k < done; ++k) {  // op k finished with its fsync: its file is there, whole
      std::string dir = "/dir" + std::to_string(k % 2);
      // Op k+1 renames f<k> to g<k>: either name, if that op had begun.
      auto ino = fs.lookup(dir + "/f" + std::to_string(k));
      if (!ino.has_value()) ino = fs.lookup(dir + "/g" + std::to_string(k));
      ASSERT_TRUE(ino.has_value()) << "fsync'd file " << k << " is gone";
      std::string got(content(k).size(), '\0');
      auto n = fs.read(*ino, 0, {reinterpret_cast<std::byte*>(got.data()), got.size()});
      ASSERT_TRUE(n.has_value()) << n.error().message;
      ASSERT_TRUE(got == content(k)) << "fsync'd file " << k << " lost its bytes";
    }
    auto ino = fs.create("/after-crash");
    ASSERT_TRUE(ino.has_value()) << ino.error().message;
    ASSERT_TRUE(fs.unmount().has_value());
  });
  std::fprintf(stderr, "verified %llu crash points\n", static_cast<unsigned long long>(tested));
}

// A block freed by an unsynced truncate and reused by another file: after a
// machine crash the fsync'd file is either truncated or whole, never showing the
// other file's bytes (the freeing transaction reaches the media before the block
// can be reused).
TEST(Crash, AFreedBlockIsNotReusedBeforeItsFreeingIsOnMedia) {
  uint64_t seed = test_seed("Crash.AFreedBlockIsNotReusedBeforeItsFreeingIsOnMedia");
  const std::string f_bytes(8 * kBlock, 'F');
  std::vector<Op> ops = {
      [&](Filesystem& fs) {
        ASSERT_TRUE(fs.create("/f").has_value());
        write_at(fs, "/f", 0, f_bytes);
        must(fs.fsync(ino_of(fs, "/f")), "fsync");
      },
      [](Filesystem& fs) { must(fs.truncate(ino_of(fs, "/f"), 0), "truncate"); },
      [](Filesystem& fs) {
        ASSERT_TRUE(fs.create("/g").has_value());
        write_at(fs, "/g", 0, std::string(8 * kBlock, 'G'));
      },
  };
  for_each_page_cache_crash(ops, seed, 4, [&](Filesystem& fs, size_t done) {
    if (done == 0) return;  // the fsync had not returned
    auto f = fs.lookup("/f");
    ASSERT_TRUE(f.has_value()) << "the fsync'd file is gone";
    auto st = fs.stat(*f);
    std::string got(st->size_bytes, '\0');
    ASSERT_TRUE(fs.read(*f, 0, {reinterpret_cast<std::byte*>(got.data()), got.size()}).has_value());
    ASSERT_TRUE(got.empty() || got == f_bytes) << "/f shows other bytes: " << got.substr(0, 8);
  });
}

// --- Two threads at once --------------------------------------------------------

TEST(Crash, TwoThreadsAtOnce) {
  uint64_t seed = test_seed("Crash.TwoThreadsAtOnce");
  constexpr int kThreads = 2;
  constexpr int kFilesEach = 40;
  auto content = [](int t, int i) { return std::string(100 + 50 * i, static_cast<char>('a' + t)); };
  auto workload = [&](Filesystem& fs) {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&fs, t, content] {
        std::string dir = "/t" + std::to_string(t);
        if (!fs.mkdir(dir).has_value()) return;
        for (int i = 0; i < kFilesEach; ++i) {
          std::string path = dir + "/f" + std::to_string(i);
          auto ino = fs.create(path);
          if (!ino.has_value()) return;
          std::string data = content(t, i);
          if (!fs.write(*ino, 0, bytes(data)).has_value()) return;
        }
      });
    }
    for (auto& th : threads) th.join();
  };
  uint64_t total = 0;
  {
    CrashDevice device(kDeviceBytes);
    ASSERT_TRUE(Filesystem::format(device).has_value());
    uint64_t before = device.flush_points();
    auto fs = Filesystem::mount(device);
    ASSERT_TRUE(fs.has_value());
    workload(**fs);
    total = device.flush_points() - before;
    ASSERT_TRUE((*fs)->unmount().has_value());
  }
  Rng rng(seed);
  constexpr int kPoints = 40;  // interleavings differ run to run: random points, each its own run
  for (int n = 0; n < kPoints; ++n) {
    uint64_t point = 1 + rng.below(total + 4);
    SCOPED_TRACE("crash at flush point " + std::to_string(point) + " after format");
    CrashDevice device(kDeviceBytes);
    ASSERT_TRUE(Filesystem::format(device).has_value());
    device.arm(device.flush_points() + point, seed + n);
    {
      auto fs = Filesystem::mount(device);
      ASSERT_TRUE(fs.has_value());
      workload(**fs);
      ASSERT_TRUE((*fs)->unmount().has_value());
    }
    if (!device.crashed()) continue;  // the run had fewer flush points this time
    auto image = device.crash_image();
    auto fs = mount_checked(*image);
    ASSERT_TRUE(fs != nullptr);
    // Each thread's files are a prefix of its sequence: every one whole, except
    // that the last may be empty (its write was in flight).
    for (int t = 0; t < kThreads; ++t) {
      int present = 0;
      for (int i = 0; i < kFilesEach; ++i) {
        auto ino = fs->lookup("/t" + std::to_string(t) + "/f" + std::to_string(i));
        if (!ino.has_value()) break;
        ++present;
        auto st = fs->stat(*ino);
        std::string got(st->size_bytes, '\0');
        ASSERT_TRUE(fs->read(*ino, 0, {reinterpret_cast<std::byte*>(got.data()), got.size()}).has_value());
        bool last = !fs->lookup("/t" + std::to_string(t) + "/f" + std::to_string(i + 1)).has_value();
        ASSERT_TRUE(got == content(t, i) || (last && got.empty())) << "thread " << t << " file " << i;
      }
      for (int i = present + 1; i < kFilesEach; ++i) {
        ASSERT_FALSE(fs->lookup("/t" + std::to_string(t) + "/f" + std::to_string(i)).has_value())
            << "thread " << t << " has file " << i << " without file " << present;
      }
    }
    if (::testing::Test::HasFailure()) return;
  }
}

}  // namespace
}  // namespace poise
