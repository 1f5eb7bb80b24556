// Direct mappings through the filesystem (DESIGN flows 1, 4; invariants I1,
// I3, I4, I7): zero copy, holes and copy-on-write on first store, layout
// breaking before memory is freed, pins, freeze before removal. Memory failure
// in mappings and machine checks: mapping_failure_test.cc.
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <mutex>
#include <thread>

#include "base/random.h"
#include "fs/mapping_test_util.h"
#include "fs/test_util.h"

namespace poise {
namespace {
using namespace poise::testing;

TEST_F(MappingTest, ShowsAFragmentedFileAsOneRangeWithoutCopying) {
  // Three extents far apart on the device: /a, /x, /a, /x, /a.
  for (char c : {'a', 'b', 'c'}) {
    auto st = fs_->stat("/a");
    write_file(*fs_, "/a", pattern(c), st.has_value() ? st->size_bytes : 0);
    write_file(*fs_, "/x" + std::string(1, c), pattern('x'));
  }
  EXPECT_NE(device_offset_of(*fs_, "/a", kPage), device_offset_of(*fs_, "/a", 0) + kPage);  // fragmented
  Mapping m = map("/a", 0, 3 * kPage, MapAccess::ReadWrite);
  ASSERT_EQ(m.size(), 3 * kPage);
  EXPECT_EQ(*load(m.data(), 3 * kPage), pattern('a') + pattern('b') + pattern('c'));
  // The same memory both ways: a store through the mapping is what the API reads.
  ASSERT_OK(store(m.data() + kPage + 10, "hello"));
  EXPECT_EQ(*read_range(*fs_, "/a", kPage + 8, 9), "bbhellobb");
  write_file(*fs_, "/a", "API", 2 * kPage);
  EXPECT_EQ(*load(m.data() + 2 * kPage, 4), "APIc");
  // No block was allocated or copied by mapping or storing in place.
  EXPECT_EQ(fs_->stat("/a")->blocks, 3u);
  expect_clean();
}

TEST_F(MappingTest, HolesReadAsZerosAndGetABlockOnFirstStore) {
  ASSERT_OK(fs_->create("/h"));
  ASSERT_OK(fs_->truncate(ino("/h"), 4 * kPage));
  Mapping m = map("/h", 0, 4 * kPage, MapAccess::ReadWrite);
  EXPECT_EQ(*load(m.data(), 4 * kPage), std::string(4 * kPage, '\0'));
  EXPECT_EQ(fs_->stat("/h")->blocks, 0u);
  ASSERT_OK(store(m.data() + 2 * kPage + 5, "xyz"));  // the first store faults once and allocates
  EXPECT_EQ(fs_->stat("/h")->blocks, 1u);
  EXPECT_EQ(*read_range(*fs_, "/h", 2 * kPage, 8), std::string("\0\0\0\0\0xyz", 8));
  ASSERT_OK(store(m.data() + 2 * kPage + 100, "more"));  // now in place: no new block
  EXPECT_EQ(fs_->stat("/h")->blocks, 1u);
  EXPECT_EQ(*load(m.data(), kPage), std::string(kPage, '\0'));
  // The block survives a remount: the allocation was committed.
  m.unmap();
  remount();
  EXPECT_EQ(*read_range(*fs_, "/h", 2 * kPage + 5, 3), "xyz");
  expect_clean();
}

TEST_F(MappingTest, StoreToAReflinkedBlockCopiesOnlyThatPage) {
  write_file(*fs_, "/a", pattern('0') + pattern('1') + pattern('2'));
  ASSERT_OK(fs_->create("/b"));
  ASSERT_OK(fs_->reflink(ino("/a"), ino("/b")));
  Mapping ma = map("/a", 0, 3 * kPage, MapAccess::Read);
  Mapping mb = map("/b", 0, 3 * kPage, MapAccess::ReadWrite);
  uint64_t shared1 = device_offset_of(*fs_, "/b", kPage);
  ASSERT_OK(store(mb.data() + kPage, "B!"));
  // B's page 1 has its own block now; pages 0 and 2 are still shared.
  EXPECT_NE(device_offset_of(*fs_, "/b", kPage), shared1);
  EXPECT_EQ(device_offset_of(*fs_, "/b", 0), device_offset_of(*fs_, "/a", 0));
  EXPECT_EQ(device_offset_of(*fs_, "/b", 2 * kPage), device_offset_of(*fs_, "/a", 2 * kPage));
  EXPECT_EQ(*load(mb.data() + kPage, 4), "B!11");
  EXPECT_EQ(*load(ma.data() + kPage, 4), "1111");  // A never saw B's store
  EXPECT_EQ(*read_range(*fs_, "/a", kPage, 4), "1111");
  // A Read mapping refuses stores as any read-only mapping does: SIGSEGV, which
  // poise passes on (under a sanitizer, to its report).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  EXPECT_DEATH({ std::memcpy(ma.data(), "no", 2); }, "SEGV");
#else
  EXPECT_EXIT({ std::memcpy(ma.data(), "no", 2); std::_Exit(0); }, ::testing::KilledBySignal(SIGSEGV), "")
      << "a store to a Read mapping must fault";
#endif
  expect_clean();
}

// A writable mapping made before a reflink must not write into the clone: the
// reflink write-protects the source's pages, the next store copies on write.
TEST_F(MappingTest, AWritableMappingOfTheSourceNeverWritesIntoAReflink) {
  write_file(*fs_, "/a", pattern('0') + pattern('1') + pattern('2'));
  Mapping ma = map("/a", 0, 3 * kPage, MapAccess::ReadWrite);
  ASSERT_OK(store(ma.data() + kPage, "before"));  // page 1 is now installed writable
  ASSERT_OK(store(ma.data() + 2 * kPage, "before"));
  ASSERT_OK(fs_->create("/b"));
  ASSERT_OK(fs_->reflink(ino("/a"), ino("/b")));
  ASSERT_OK(store(ma.data() + kPage, "AFTER!"));
  EXPECT_EQ(*read_range(*fs_, "/b", kPage, 6), "before") << "A's old mapping wrote into the reflink";
  EXPECT_EQ(*read_range(*fs_, "/a", kPage, 6), "AFTER!");
  EXPECT_NE(device_offset_of(*fs_, "/a", kPage), device_offset_of(*fs_, "/b", kPage)) << "page 1 was copied";
  EXPECT_EQ(device_offset_of(*fs_, "/a", 2 * kPage), device_offset_of(*fs_, "/b", 2 * kPage)) << "page 2 still shared";
  // The same for clone_range of one page into a third file.
  ASSERT_OK(fs_->create("/c"));
  ASSERT_OK(fs_->clone_range(ino("/a"), kPage, ino("/c"), 0, kPage));
  ASSERT_OK(store(ma.data() + kPage, "third!"));
  EXPECT_EQ(*read_range(*fs_, "/c", 0, 6), "AFTER!") << "A's mapping wrote into the clone";
  EXPECT_EQ(*read_range(*fs_, "/a", kPage, 6), "third!");
  expect_clean();
  ma.unmap();
  remount();
  EXPECT_EQ(*read_range(*fs_, "/b", kPage, 6), "before");
  EXPECT_EQ(*read_range(*fs_, "/c", 0, 6), "AFTER!");
  EXPECT_EQ(*read_range(*fs_, "/a", kPage, 6), "third!");
}

// A fork()ed child inherits no device memory: after the parent frees the block
// and another file reuses it, a store by the child through its copy of the
// mapping must not land there (it dies with SIGSEGV instead), and neither can a
// read show the other file's bytes.
TEST_F(MappingTest, AForkedChildCannotReachDeviceMemoryThroughAMapping) {
  write_file(*fs_, "/a", pattern('a'));
  Mapping m = map("/a", 0, kPage, MapAccess::ReadWrite);
  ASSERT_OK(store(m.data(), "parent"));  // installed writable in the parent
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    char c;
    if (::read(go[0], &c, 1) != 1) ::_exit(90);
    // The range is not mapped in a child (MADV_DONTFORK). A sanitizer's own
    // allocations in the child may have taken the free addresses since; then
    // they are the child's memory, not the device's: nothing to store into.
    if (::msync(m.data(), kPage, MS_ASYNC) == 0) ::_exit(92);
    std::memcpy(m.data(), "CHILD!", 6);  // must fault: no device memory here
    ::_exit(91);
  }
  ::close(go[0]);
  ASSERT_OK(fs_->truncate(ino("/a"), 0));  // frees the block ...
  write_file(*fs_, "/b", pattern('b', 64 * kPage));  // ... which another file may now hold
  ASSERT_EQ(::write(go[1], "x", 1), 1);
  ::close(go[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 91) << "the child's store went through";
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // The sanitizer reports the SEGV and ends the child its own way.
  EXPECT_TRUE(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0)) << "status " << status;
#else
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV) << "the child was not stopped: status " << status;
#endif
  std::string b = *read_range(*fs_, "/b", 0, 64 * kPage);
  EXPECT_TRUE(b == pattern('b', 64 * kPage)) << "the child wrote into /b: " << b.substr(0, 16);
  expect_clean();
}

// Waits until the thread `tid` of this process sleeps in the kernel (state S in
// /proc): after it said it was about to make a call, that call is blocked — a
// synchronization, not a guess that a sleep was long enough. False after 10 s.
bool wait_until_blocked(pid_t tid) {
  std::string path = "/proc/self/task/" + std::to_string(tid) + "/stat";
  for (int i = 0; i < 10000; ++i) {
    std::ifstream in(path);
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t paren = stat.rfind(')');
    if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'S') return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

// Runs fn on another thread and fails the whole test binary (instead of hanging
// CI) if it has not returned in time: for calls that used to deadlock.
template <class Fn>
void within_seconds(int seconds, Fn fn) {
  std::atomic<bool> done{false};
  std::thread worker([&] {
    fn();
    done = true;
  });
  for (int i = 0; i < seconds * 100 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (!done) {
    ADD_FAILURE() << "deadlocked";
    std::fprintf(stderr, "deadlock: aborting the test binary\n");
    std::abort();
  }
  worker.join();
}

// poise's own read() into (and write() from) a buffer that lies in a mapping of
// the same file, on pages that fault into the filesystem: a hole (its first
// store allocates under the inode lock) and revoked pages (re-installed under
// it). Copying under the lock deadlocked; the bounce buffer does not.
TEST_F(MappingTest, ReadAndWriteWithABufferInAMappingOfTheSameFileNeverDeadlock) {
  write_file(*fs_, "/m", pattern('a'));
  ASSERT_OK(fs_->truncate(ino("/m"), 4 * kPage));  // pages 1..3: holes
  write_file(*fs_, "/m", pattern('c'), 2 * kPage);
  Mapping m = map("/m", 0, 4 * kPage, MapAccess::ReadWrite);
  within_seconds(10, [&] {
    // Into page 1 (a hole) from page 0 of the same file.
    auto n = fs_->read(ino("/m"), 0, {m.data() + kPage, kPage});
    ASSERT_OK(n);
    EXPECT_EQ(*n, kPage);
  });
  EXPECT_EQ(*read_range(*fs_, "/m", kPage, kPage), pattern('a'));
  ASSERT_OK(fs_->truncate(ino("/m"), 4 * kPage));  // revokes nothing in range, but...
  ASSERT_OK(fs_->punch_hole(ino("/m"), 2 * kPage, kPage));  // page 2 is revoked and a hole again
  within_seconds(10, [&] {
    // From page 1 (installed) into page 3 (a hole), and from page 2 (revoked) as a source.
    ASSERT_OK(fs_->write(ino("/m"), 3 * kPage, {m.data() + kPage, kPage}));
    auto from_hole = fs_->write(ino("/m"), 0, {m.data() + 2 * kPage, kPage});
    ASSERT_OK(from_hole);
  });
  EXPECT_EQ(*read_range(*fs_, "/m", 3 * kPage, kPage), pattern('a'));
  EXPECT_EQ(*read_range(*fs_, "/m", 0, kPage), std::string(kPage, '\0')) << "page 0 now holds page 2's zeros";
  // A buffer on lost memory is an error, not a signal and not a hang.
  ASSERT_OK(device_->notify_failure(device_offset_of(*fs_, "/m", 3 * kPage), kPage, FailureFlags::None));
  within_seconds(10, [&] {
    auto lost = fs_->write(ino("/m"), 0, {m.data() + 3 * kPage, kPage});
    ASSERT_FALSE(lost.has_value());
  });
  expect_clean();
}

TEST_F(MappingTest, TruncateRevokesPagesPastTheEndBeforeTheirMemoryIsReused) {
  write_file(*fs_, "/t", pattern('t', 4 * kPage));
  Mapping m = map("/t", 0, 4 * kPage, MapAccess::Read);
  ASSERT_EQ(*load(m.data() + 3 * kPage, 2), "tt");
  uint64_t freed = device_offset_of(*fs_, "/t", 3 * kPage);
  ASSERT_OK(fs_->truncate(ino("/t"), kPage + 100));
  // The freed blocks go to the next allocation...
  write_file(*fs_, "/reuse", pattern('R', 8 * kPage));
  bool reused = false;
  for (uint64_t off = 0; off < 8 * kPage; off += kPage) reused |= device_offset_of(*fs_, "/reuse", off) == freed;
  EXPECT_TRUE(reused) << "the test wants the freed block reused";
  // ...and the old mapping can never see them: past the end it faults.
  auto past = load(m.data() + 3 * kPage, 2);
  ASSERT_FALSE(past.has_value());
  EXPECT_EQ(past.error().code, EFAULT);
  EXPECT_EQ(*load(m.data() + kPage + 98, 4), std::string("tt\0\0", 4));  // the cut block reads zeros after the end
  // Growing the file again shows a hole there, not the old or the reused data.
  ASSERT_OK(fs_->truncate(ino("/t"), 4 * kPage));
  EXPECT_EQ(*load(m.data() + 3 * kPage, 4), std::string(4, '\0'));
  expect_clean();
}

TEST_F(MappingTest, PunchHoleShowsZerosAndNeverTheFreedBlock) {
  write_file(*fs_, "/p", pattern('p', 3 * kPage));
  Mapping m = map("/p", 0, 3 * kPage, MapAccess::ReadWrite);
  ASSERT_OK(fs_->punch_hole(ino("/p"), kPage, kPage));
  write_file(*fs_, "/reuse", pattern('R', 4 * kPage));
  EXPECT_EQ(*load(m.data() + kPage, 4), std::string(4, '\0'));
  EXPECT_EQ(*load(m.data(), 2), "pp");
  ASSERT_OK(store(m.data() + kPage, "new"));  // refills the hole with a fresh block
  EXPECT_EQ(*read_range(*fs_, "/p", kPage, 3), "new");
  EXPECT_EQ(read_file(*fs_, "/reuse"), pattern('R', 4 * kPage));
  expect_clean();
}

TEST_F(MappingTest, PreRemoveFreezesThenRemovalFailsTheBlockedWriters) {
  constexpr int kWriters = 2;
  for (int i = 0; i < kWriters; ++i) write_file(*fs_, "/w" + std::to_string(i), pattern('0', 16 * kPage));
  write_file(*fs_, "/durable", "acknowledged before the removal");
  ASSERT_OK(fs_->fsync(ino("/durable")));
  Inbox inbox;
  std::vector<Mapping> maps;
  for (int i = 0; i < kWriters; ++i) {
    maps.push_back(map("/w" + std::to_string(i), 0, 16 * kPage, MapAccess::ReadWrite, inbox.owner("m" + std::to_string(i))));
  }
  std::atomic<bool> stop{false};
  std::atomic<int> api_errors{0}, mapped_errors{0}, api_writes{0}, mapped_writes{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kWriters; ++i) {
    threads.emplace_back([&, i] {  // through the API
      InodeNumber f = ino("/w" + std::to_string(i));
      for (uint64_t n = 0; !stop; ++n) {
        std::string s = pattern(static_cast<char>('a' + n % 26), 512);
        if (!fs_->write(f, (n % 16) * kPage, as_bytes(s)).has_value()) {
          ++api_errors;
          return;
        }
        ++api_writes;
      }
    });
    threads.emplace_back([&, i] {  // through the mapping
      for (uint64_t n = 0; !stop; ++n) {
        if (!store(maps[i].data() + (n % 16) * kPage + 1024, pattern(static_cast<char>('A' + n % 26), 512)).has_value()) {
          ++mapped_errors;
          return;
        }
        ++mapped_writes;
      }
    });
  }
  while (api_writes < 50 || mapped_writes < 50) std::this_thread::yield();
  ASSERT_OK(device_->pre_remove());
  const std::vector<std::byte> at_freeze(device_->data(), device_->data() + device_->size_bytes());
  int api_before = api_writes, mapped_before = mapped_writes;
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // writers are blocked, not writing
  EXPECT_LE(api_writes - api_before, kWriters);  // at most the one each had in hand
  EXPECT_LE(mapped_writes - mapped_before, kWriters);
  for (int i = 0; i < kWriters; ++i) {
    auto got = inbox.of("m" + std::to_string(i));
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].cause, MappingCause::DeviceRemoval);
  }
  ASSERT_OK(device_->remove());
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(api_errors, kWriters);  // every blocked writer got an error...
  EXPECT_EQ(mapped_errors, kWriters);
  EXPECT_EQ(std::memcmp(at_freeze.data(), device_->data(), at_freeze.size()), 0)  // ...and wrote nothing
      << "the device changed after pre-remove froze the filesystem";
  EXPECT_EQ(device_->state(), DeviceState::Dead);
  EXPECT_EQ(fs_->create("/after").error().code, EIO);
  // The image as it was at the freeze mounts, checks clean, and holds what was acknowledged.
  maps.clear();
  fs_.reset();
  auto copy = MemoryDevice::copy_of(at_freeze.data(), at_freeze.size());
  auto again = Filesystem::mount(*copy);
  ASSERT_TRUE(again.has_value()) << again.error().message;
  EXPECT_EQ(read_file(**again, "/durable"), "acknowledged before the removal");
  EXPECT_TRUE((*again)->check().clean());
}

TEST_F(MappingTest, CancelledRemovalThawsAndBlockedWritersResume) {
  write_file(*fs_, "/w", pattern('0', 4 * kPage));
  Mapping m = map("/w", 0, 4 * kPage, MapAccess::ReadWrite);
  ASSERT_OK(device_->pre_remove());
  std::atomic<bool> api_done{false}, mapped_done{false};
  std::atomic<pid_t> api_tid{0}, mapped_tid{0};
  InodeNumber w = ino("/w");
  std::thread api([&] {
    api_tid = static_cast<pid_t>(::syscall(SYS_gettid));
    EXPECT_TRUE(fs_->write(w, 0, as_bytes("api")).has_value());
    api_done = true;
  });
  std::thread mapped([&] {
    mapped_tid = static_cast<pid_t>(::syscall(SYS_gettid));
    EXPECT_TRUE(store(m.data() + kPage, "map").has_value());
    mapped_done = true;
  });
  std::atomic<bool> checkpoint_done{false};
  std::atomic<pid_t> checkpoint_tid{0};
  std::thread checkpointer([&] {  // a checkpoint writes metadata: it waits for the thaw too (I4)
    checkpoint_tid = static_cast<pid_t>(::syscall(SYS_gettid));
    EXPECT_TRUE(fs_->checkpoint().has_value());
    checkpoint_done = true;
  });
  while (api_tid == 0 || mapped_tid == 0 || checkpoint_tid == 0) std::this_thread::yield();
  ASSERT_TRUE(wait_until_blocked(api_tid)) << "the API writer never blocked";
  ASSERT_TRUE(wait_until_blocked(mapped_tid)) << "the mapped writer never blocked";
  ASSERT_TRUE(wait_until_blocked(checkpoint_tid)) << "the checkpoint never blocked";
  EXPECT_FALSE(api_done);  // frozen: all three are waiting for the thaw
  EXPECT_FALSE(mapped_done);
  EXPECT_FALSE(checkpoint_done);
  device_->cancel_removal();
  api.join();
  mapped.join();
  checkpointer.join();
  EXPECT_EQ(*read_range(*fs_, "/w", 0, 3), "api");
  EXPECT_EQ(*read_range(*fs_, "/w", kPage, 3), "map");
  EXPECT_EQ(device_->state(), DeviceState::Alive);
  expect_clean();
}

// The last pin of an unlinked file, let go while a removal is pending, never
// waits for the thaw (the thread letting it go may be the one that removes
// the device next); the file is freed at the thaw.
TEST_F(MappingTest, APinLetGoDuringAPendingRemovalDoesNotWaitAndFreesAtTheThaw) {
  write_file(*fs_, "/gone", pattern('g', 8 * kPage));
  const uint64_t free_before_unlink = fs_->info().free_bytes;
  auto pin = fs_->pin(ino("/gone"), 0, 8 * kPage);
  ASSERT_OK(pin);
  ASSERT_OK(fs_->unlink("/gone"));  // the pin keeps it
  ASSERT_OK(device_->pre_remove());
  std::atomic<bool> released{false};
  std::thread t([&] {
    pin->release();
    released = true;
  });
  for (int i = 0; i < 500 && !released.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(released.load()) << "letting a pin go waited for the thaw";
  if (!released.load()) device_->cancel_removal();  // let it end
  t.join();
  EXPECT_LT(fs_->info().free_bytes, free_before_unlink + 8 * kPage) << "freed while frozen";
  device_->cancel_removal();
  EXPECT_GE(fs_->info().free_bytes, free_before_unlink + 8 * kPage) << "the released file was not freed at the thaw";
  expect_clean();
}

// I1 under races: readers through a mapping and a pinned zero-copy reader while
// another thread truncates, punches, reuses the freed blocks and regrows the
// file. No reader may ever see the reuse pattern. Run under ASan and TSan too.
TEST_F(MappingTest, TruncateAndPunchRacingMappedReadersAndPinsNeverExposeReusedMemory) {
  constexpr uint64_t kPages = 16;
  write_file(*fs_, "/race", pattern('o', kPages * kPage));
  Mapping m = map("/race", 0, kPages * kPage, MapAccess::Read);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0}, faults{0}, pinned_reads{0};
  std::atomic<bool> bad{false};
  auto valid = [](const std::string& s) {
    for (char c : s) {
      if (c != 'o' && c != '\0') return false;
    }
    return true;
  };
  std::thread reader([&] {
    Rng rng(test_seed("MappingRace.reader"));
    while (!stop) {
      uint64_t page = rng.below(kPages);
      auto got = load(m.data() + page * kPage, 256);
      if (!got.has_value()) {
        ++faults;
        continue;
      }
      if (!valid(*got)) bad = true;
      ++reads;
    }
  });
  std::thread pinner([&] {
    Rng rng(test_seed("MappingRace.pinner"));
    while (!stop) {
      uint64_t page = rng.below(kPages);
      auto pin = fs_->pin(ino("/race"), page * kPage, kPage);
      if (!pin.has_value()) continue;  // past the end right now
      for (const auto& seg : pin->segments()) {
        std::string s(reinterpret_cast<const char*>(seg.data()), seg.size());
        if (!valid(s)) bad = true;
      }
      ++pinned_reads;
    }
  });
  Rng rng(test_seed("MappingRace.writer"));
  // At least 60 rounds, and on until both readers have run alongside (a loaded
  // machine may start them late).
  for (int round = 0; round < 60 || ((reads + faults < 100 || pinned_reads < 50) && round < 20000); ++round) {
    InodeNumber f = ino("/race");
    if (rng.chance(2)) {
      ASSERT_OK(fs_->truncate(f, rng.below(kPages) * kPage));
    } else {
      ASSERT_OK(fs_->punch_hole(f, rng.below(kPages) * kPage, kPage * (1 + rng.below(4))));
    }
    write_file(*fs_, "/reuse", pattern('R', kPages * kPage));  // takes the freed blocks
    ASSERT_OK(fs_->unlink("/reuse"));
    write_file(*fs_, "/race", pattern('o', kPages * kPage));  // regrow
  }
  stop = true;
  reader.join();
  pinner.join();
  EXPECT_FALSE(bad) << "a reader saw memory that belonged to another file";
  EXPECT_GT(reads + faults, 0u);
  EXPECT_GT(pinned_reads, 0u);
  std::printf("[race] %lu mapped reads, %lu faults, %lu pinned reads\n", static_cast<unsigned long>(reads.load()),
              static_cast<unsigned long>(faults.load()), static_cast<unsigned long>(pinned_reads.load()));
  expect_clean();
}

TEST_F(MappingTest, APinHoldsOffTruncateUntilReleased) {
  write_file(*fs_, "/pinned", pattern('k', 2 * kPage));
  auto pin = fs_->pin(ino("/pinned"), 0, 2 * kPage);
  ASSERT_OK(pin);
  std::atomic<bool> truncated{false};
  std::atomic<pid_t> tid{0};
  InodeNumber pinned = ino("/pinned");
  std::thread t([&] {
    tid = static_cast<pid_t>(::syscall(SYS_gettid));
    EXPECT_TRUE(fs_->truncate(pinned, 0).has_value());
    truncated = true;
  });
  while (tid == 0) std::this_thread::yield();
  ASSERT_TRUE(wait_until_blocked(tid)) << "truncate never blocked";
  EXPECT_FALSE(truncated) << "truncate freed memory a pin still holds";
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(pin->segments()[0].data()), 4), "kkkk");
  // The pin's own thread may not modify the file: that would wait for itself.
  EXPECT_ERRNO(fs_->write(ino("/pinned"), 0, as_bytes("x")), EDEADLK);
  pin->release();
  t.join();
  EXPECT_TRUE(truncated);
}

// A pin reads device memory directly, so removal waits until every pin has
// been released (defect 5), no new pin is given out once removal is announced,
// and the pin's own thread cannot remove the device (it would wait for itself).
TEST_F(MappingTest, RemovalWaitsForPinsAndRefusesNewOnes) {
  write_file(*fs_, "/held", pattern('h', 2 * kPage));
  InodeNumber held = ino("/held");
  auto pin = fs_->pin(held, 0, 2 * kPage);
  ASSERT_OK(pin);
  ASSERT_OK(device_->pre_remove());
  EXPECT_ERRNO(fs_->pin(held, 0, kPage), EAGAIN);
  EXPECT_ERRNO(device_->remove(), EDEADLK);
  EXPECT_EQ(device_->state(), DeviceState::Alive) << "a refused removal changed the device";
  std::atomic<bool> removed{false};
  std::atomic<pid_t> tid{0};
  std::thread t([&] {
    tid = static_cast<pid_t>(::syscall(SYS_gettid));
    EXPECT_TRUE(device_->remove().has_value());
    removed = true;
  });
  while (tid == 0) std::this_thread::yield();
  ASSERT_TRUE(wait_until_blocked(tid)) << "removal never waited";
  EXPECT_FALSE(removed) << "the device was removed while a pin still reads its memory";
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(pin->segments()[0].data()), 4), "hhhh");
  pin->release();
  t.join();
  EXPECT_TRUE(removed);
  EXPECT_EQ(device_->state(), DeviceState::Dead);
}

TEST_F(MappingTest, ShutdownMakesEveryMappedAccessFail) {
  write_file(*fs_, "/s", pattern('s'));
  Inbox inbox;
  Mapping m = map("/s", 0, kPage, MapAccess::ReadWrite, inbox.owner("s"));
  ASSERT_EQ(*load(m.data(), 1), "s");
  fs_->shutdown();
  auto r = load(m.data(), 1);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ESHUTDOWN);
  auto got = inbox.of("s");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].cause, MappingCause::Shutdown);
}

TEST_F(MappingTest, BadArgumentsAreRefused) {
  write_file(*fs_, "/f", "x");
  EXPECT_ERRNO(fs_->map(ino("/f"), 0, 0, MapAccess::Read), EINVAL);
  EXPECT_ERRNO(fs_->map(InodeNumber(999), 0, kPage, MapAccess::Read), ENOENT);
  ASSERT_OK(fs_->mkdir("/d"));
  EXPECT_ERRNO(fs_->map(ino("/d"), 0, kPage, MapAccess::Read), EISDIR);
  EXPECT_ERRNO(fs_->pin(ino("/f"), 0, 2 * kPage), EINVAL);  // past the end
}

TEST(MappingPrivateMemory, DevicesWithoutShareableMemoryRefuseToMap) {
  MemoryDevice device(64ull << 20);
  ASSERT_OK(Filesystem::format(device));
  auto fs = *Filesystem::mount(device);
  auto ino = *fs->create("/f");
  EXPECT_ERRNO(fs->map(ino, 0, 4096, MapAccess::Read), ENOTSUP);
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {

// Bytes a mapping stores past the end of the file (in its last page) are not
// file data: when the file grows, by truncate, a write past the end,
// fallocate or clone_range, they read as zeros (defect 7).
TEST_F(MappingTest, StoresPastTheEndNeverBecomeFileDataWhenTheFileGrows) {
  write_file(*fs_, "/clone-source", std::string(4096, 's'));
  for (int how = 0; how < 4; ++how) {
    SCOPED_TRACE(how);
    const std::string path = "/tail" + std::to_string(how);
    write_file(*fs_, path, std::string(100, 'd'));
    {
      Mapping m = map(path, 0, kPage, MapAccess::ReadWrite);
      ASSERT_OK(store(m.data() + 200, "JUNK"));
      ASSERT_OK(store(m.data() + kPage - 4, "JUNK"));
    }
    if (how == 0) ASSERT_OK(fs_->truncate(ino(path), 2 * kPage));
    if (how == 1) write_file(*fs_, path, "end", 3000);
    if (how == 2) ASSERT_OK(fs_->fallocate(ino(path), 0, 2 * kPage, FallocateMode::ExtendSize));
    if (how == 3) ASSERT_OK(fs_->clone_range(ino("/clone-source"), 0, ino(path), kPage, kPage));
    std::string got = *read_range(*fs_, path, 0, how == 1 ? 3003 : 2 * kPage);
    std::string want = std::string(100, 'd') + std::string(got.size() - 100, '\0');
    if (how == 1) want.replace(3000, 3, "end");
    if (how == 3) want.replace(kPage, kPage, std::string(kPage, 's'));
    EXPECT_EQ(got, want) << "bytes stored past the end became file data";
  }
  expect_clean();
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {

// Unmounting (or destroying) a filesystem waits for pins to go; a pin of the
// calling thread never would. unmount() says so (EBUSY); destroying it anyway
// stops the process with a message instead of hanging for ever (defect 5).
TEST_F(MappingTest, AThreadHoldingAPinCannotUnmountAndNeverHangs) {
  write_file(*fs_, "/p", pattern('p'));
  {
    auto pin = fs_->pin(ino("/p"), 0, kPage);
    ASSERT_OK(pin);
    auto refused = fs_->unmount();
    ASSERT_FALSE(refused.has_value());
    EXPECT_EQ(refused.error().code, EBUSY) << refused.error().message;
    EXPECT_EQ(*read_range(*fs_, "/p", 0, 1), "p") << "still mounted";
  }
  ASSERT_OK(fs_->unmount());  // the pin is gone
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        MemoryDevice device(64ull << 20, MemoryDevice::Backing::Shared);
        (void)Filesystem::format(device);
        auto fs = *Filesystem::mount(device);
        write_file(*fs, "/q", "q");
        auto pin = fs->pin(*fs->lookup("/q"), 0, 1);
        fs.reset();  // would wait for `pin` for ever
      },
      "still holds one of its pins");
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {

// map() racing a shutdown: whatever map() returns, no page of it may read
// device memory once the shutdown is done (defect 5). Run many times: the
// window is a few microseconds wide.
TEST(MappingRace, AMappingMadeDuringAShutdownNeverShowsDeviceMemory) {
  for (int round = 0; round < 40; ++round) {
    MemoryDevice device(64ull << 20, MemoryDevice::Backing::Shared);
    ASSERT_OK(Filesystem::format(device));
    auto fs = *Filesystem::mount(device);
    write_file(*fs, "/r", std::string(4096, 'r'));
    const InodeNumber ino = *fs->lookup("/r");
    std::atomic<bool> go{false};
    std::vector<Mapping> made;
    std::thread mapper([&] {
      while (!go.load()) {
      }
      for (int i = 0; i < 200; ++i) {
        auto m = fs->map(ino, 0, 4096, MapAccess::Read, nullptr);
        if (!m.has_value()) break;
        made.push_back(std::move(*m));
      }
    });
    go = true;
    std::this_thread::sleep_for(std::chrono::microseconds(50 * (round % 5)));
    fs->shutdown();
    mapper.join();
    for (Mapping& m : made) {
      char c = 0;
      auto read = guarded([&] { c = static_cast<char>(m.data()[0]); });
      ASSERT_FALSE(read.has_value()) << "round " << round << ": a mapping read device memory after the shutdown";
    }
    made.clear();
  }
}

}  // namespace
}  // namespace poise
