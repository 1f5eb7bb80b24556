// Crash consistency (invariant I8): each workload runs on the crash-simulating
// device; then, for every flush point, it runs again, the device captures what a
// power cut at that point could leave, and the captured image must
//   - pass the offline checker,
//   - mount (replaying the journal), and pass the online checker,
//   - hold exactly the state after the last completed operation, or after the
//     one in flight (every operation is atomic and durable when it returns),
//   - accept new writes and remount.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>

#include "base/random.h"
#include "device/crash_device.h"
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
    if (e.type == FileType::Directory) {
      (*out)[path] = "<dir>";
      collect(fs, path, out);
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

void verify_crash_point(const std::vector<Op>& ops, const Trace& reference, uint64_t point, uint64_t seed,
                        const Expected& expected = nullptr) {
  SCOPED_TRACE("crash at flush point " + std::to_string(point));
  CrashDevice device(kDeviceBytes);
  run(ops, device, point, seed, expected);
  ASSERT_TRUE(device.crashed());
  auto image = device.crash_image();
  auto offline = Filesystem::check_device(*image);
  ASSERT_TRUE(offline.has_value()) << offline.error().message;
  for (const auto& p : offline->problems) ADD_FAILURE() << "offline check: " << p;
  auto fs = Filesystem::mount(*image);
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  CheckReport online = (*fs)->check();
  for (const auto& p : online.problems) ADD_FAILURE() << "online check: " << p;
  State recovered = state_of(**fs);
  size_t done = 0;  // operations whose every flush point precedes the crash
  while (done + 1 < reference.flush_points.size() && reference.flush_points[done + 1] < point) ++done;
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
  auto ino = (*fs)->create("/after-crash");
  ASSERT_TRUE(ino.has_value()) << ino.error().message;
  ASSERT_TRUE((*fs)->write(*ino, 0, bytes("still works")).has_value());
  ASSERT_TRUE((*fs)->unmount().has_value());
  auto again = Filesystem::mount(*image);
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE((*again)->check().clean());
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
    verify_crash_point(ops, reference, point, seed + point);
    ++tested;
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
  for (uint64_t p : points) {
    verify_crash_point(ops, reference, p, seed + p, expected);
    if (::testing::Test::HasFailure()) break;
  }
}

}  // namespace
}  // namespace poise
