// Memory failure without mappings yet (DESIGN flows 1, 2, 5; invariants I3, I5,
// I6): exactly the owners of a failed block lose exactly those bytes, the loss
// is recorded persistently, lost blocks are never allocated again, metadata on a
// failed block is rewritten from memory, and a failed journal shuts down.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "fs/test_util.h"
#include "device/crash_device.h"

namespace poise {
namespace {
using namespace poise::testing;

std::vector<FsmapRecord> records_at(Filesystem& fs, uint64_t device_offset) {
  return *fs.fsmap(device_offset, kBlockSize);
}

class FailureTest : public FsTest {
 protected:
  void SetUp() override {
    FsTest::SetUp();
    write_file(*fs_, "/a", std::string(4096, '0') + std::string(4096, '1') + std::string(4096, '2'));
    ASSERT_OK(fs_->create("/b"));
    ASSERT_OK(fs_->reflink(*fs_->lookup("/a"), *fs_->lookup("/b")));
    write_file(*fs_, "/c", std::string(8192, 'c'));
    lost_ = device_offset_of(*fs_, "/a", 4096);
  }
  uint64_t lost_ = 0;  // the device offset of the middle block of /a and /b
};

TEST_F(FailureTest, ConsumedPoisonCostsExactlyTheOwnersExactlyThoseBytes) {
  ASSERT_OK(device_->inject_poison(lost_ + 100, 64));  // one cache line of the block
  auto consumed = read_range(*fs_, "/a", 4096, 4096);
  ASSERT_FALSE(consumed.has_value());
  EXPECT_EQ(consumed.error().code, EIO);
  // The reflink sharer loses the same bytes, recorded now for everyone.
  auto shared = read_range(*fs_, "/b", 0, 3 * 4096);
  ASSERT_FALSE(shared.has_value());
  EXPECT_NE(shared.error().message.find("file bytes 4096..8192 are lost"), std::string::npos) << shared.error().message;
  // Everything else reads.
  EXPECT_EQ(*read_range(*fs_, "/a", 0, 4096), std::string(4096, '0'));
  EXPECT_EQ(*read_range(*fs_, "/b", 8192, 4096), std::string(4096, '2'));
  EXPECT_EQ(read_file(*fs_, "/c"), std::string(8192, 'c'));
  // The reverse map shows the loss and who owned it.
  auto at = records_at(*fs_, lost_);
  int bad = 0, files = 0;
  for (const auto& r : at) (r.owner == OwnerKind::Bad ? bad : files) += r.owner == OwnerKind::Bad || r.owner == OwnerKind::File;
  EXPECT_EQ(bad, 1);
  EXPECT_EQ(files, 2);
  for (const auto& r : at) {  // the bad marker is no reference: two sharers, not three
    if (r.owner == OwnerKind::File) {
      EXPECT_EQ(r.refcount, 2u);
    }
  }
  // A lost block of an unshared file is not "shared".
  for (const auto& r : records_at(*fs_, device_offset_of(*fs_, "/c", 0))) EXPECT_FALSE(r.shared());
  ASSERT_OK(device_->notify_failure(device_offset_of(*fs_, "/c", 0), 4096, FailureFlags::None));
  for (const auto& r : records_at(*fs_, device_offset_of(*fs_, "/c", 0))) {
    if (r.owner == OwnerKind::File) {
      EXPECT_FALSE(r.shared()) << "a failed block counted as a second reference";
      EXPECT_EQ(r.refcount, 1u);
    }
  }
  CheckReport report = fs_->check();
  EXPECT_TRUE(report.clean());
  EXPECT_EQ(report.bad_blocks, 2u);
  // Known bad stays bad (I5): across remount, and even if the device forgets it.
  ASSERT_OK(device_->clear_poison(lost_, 4096));
  remount();
  EXPECT_EQ(read_range(*fs_, "/a", 4096, 10).error().code, EIO);
  EXPECT_EQ(fs_->check().bad_blocks, 2u);
}

TEST_F(FailureTest, RewritingTheWholeBlockRelocatesItAndTheBlockIsNeverReused) {
  ASSERT_OK(device_->notify_failure(lost_, 4096, FailureFlags::MustKill));  // the device tells its holder
  EXPECT_ERRNO(fs_->write(*fs_->lookup("/a"), 4096 + 10, as_bytes("partial")), EIO);
  ASSERT_OK(fs_->write(*fs_->lookup("/a"), 4096, as_bytes(std::string(4096, 'R'))));
  EXPECT_EQ(read_file(*fs_, "/a"), std::string(4096, '0') + std::string(4096, 'R') + std::string(4096, '2'));
  EXPECT_NE(device_offset_of(*fs_, "/a", 4096), lost_) << "relocated to a good block";
  EXPECT_EQ(read_range(*fs_, "/b", 4096, 1).error().code, EIO) << "the sharer still lost its copy";
  ASSERT_OK(fs_->unlink("/b"));
  // Nobody owns the block now, and it is still not free: fill the device and look.
  for (int i = 0;; ++i) {
    auto ino = fs_->create("/fill" + std::to_string(i));
    if (!ino || !fs_->write(*ino, 0, as_bytes(std::string(1 << 20, 'f')))) break;
  }
  auto at = records_at(*fs_, lost_);
  ASSERT_EQ(at.size(), 1u);
  EXPECT_EQ(at[0].owner, OwnerKind::Bad);
  expect_clean();
}

TEST_F(FailureTest, ALostBlockIsRestoredFromAVouchedCopyOnlyWhileItIsLost) {
  const InodeNumber a = *fs_->lookup("/a"), b = *fs_->lookup("/b");
  std::vector<FsEvent> events;
  fs_->set_event_listener([&](const FsEvent& e) { events.push_back(e); });
  const Stat before = *fs_->stat(a);
  ASSERT_OK(device_->notify_failure(lost_, 4096, FailureFlags::MustKill));
  // A copy of part of a whole block, an unaligned one, a block that is not lost.
  EXPECT_ERRNO(fs_->restore_lost_block(a, 4096, as_bytes(std::string(100, '1')), "test"), EINVAL);
  EXPECT_ERRNO(fs_->restore_lost_block(a, 4095, as_bytes(std::string(4096, '1')), "test"), EINVAL);
  EXPECT_ERRNO(fs_->restore_lost_block(a, 0, as_bytes(std::string(4096, '0')), "test"), ESTALE);
  events.clear();
  ASSERT_OK(fs_->restore_lost_block(a, 4096, as_bytes(std::string(4096, '1')), "the test's copy"));
  EXPECT_EQ(read_file(*fs_, "/a"), std::string(4096, '0') + std::string(4096, '1') + std::string(4096, '2'));
  EXPECT_NE(device_offset_of(*fs_, "/a", 4096), lost_) << "on good memory now";
  EXPECT_EQ(fs_->stat(a)->mtime_ns, before.mtime_ns) << "a restore is not a modification";
  EXPECT_EQ(fs_->stat(a)->size_bytes, before.size_bytes);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, FsEvent::Kind::Repaired);
  EXPECT_EQ(events[0].device_offset, lost_);
  ASSERT_EQ(events[0].files.size(), 2u) << "the reflink sharer held the same bytes: restored too";
  EXPECT_EQ(events[0].files[0].ino, a);
  EXPECT_EQ(events[0].files[0].file_offset, 4096u);
  EXPECT_EQ(events[0].files[1].ino, b);
  EXPECT_NE(events[0].action.find("the test's copy"), std::string::npos);
  EXPECT_EQ(read_file(*fs_, "/b"), read_file(*fs_, "/a"));
  EXPECT_NE(device_offset_of(*fs_, "/b", 4096), lost_);
  // Restored already: a second copy must never overwrite it.
  EXPECT_ERRNO(fs_->restore_lost_block(a, 4096, as_bytes(std::string(4096, 'x')), "test"), ESTALE);
  EXPECT_ERRNO(fs_->restore_lost_block(b, 4096, as_bytes(std::string(4096, 'x')), "test"), ESTALE);
  // The last block of a file: the copy holds the bytes up to the end.
  write_file(*fs_, "/t", std::string(4096 + 10, 't'));
  const uint64_t tail = device_offset_of(*fs_, "/t", 4096);
  ASSERT_OK(device_->notify_failure(tail, 4096, FailureFlags::MustKill));
  EXPECT_ERRNO(fs_->restore_lost_block(*fs_->lookup("/t"), 4096, as_bytes(std::string(4096, 't')), "test"), EINVAL);
  ASSERT_OK(fs_->restore_lost_block(*fs_->lookup("/t"), 4096, as_bytes(std::string(10, 't')), "test"));
  EXPECT_EQ(read_file(*fs_, "/t"), std::string(4096 + 10, 't'));
  // A change after the failure (a punch inside the lost block changes what it
  // should hold without moving it) makes any earlier copy stale: refused.
  write_file(*fs_, "/u", std::string(3 * 4096, 'u'));
  const uint64_t u_lost = device_offset_of(*fs_, "/u", 4096);
  ASSERT_OK(device_->notify_failure(u_lost, 4096, FailureFlags::MustKill));
  ASSERT_OK(fs_->punch_hole(*fs_->lookup("/u"), 4096 + 100, 100));
  EXPECT_ERRNO(fs_->restore_lost_block(*fs_->lookup("/u"), 4096, as_bytes(std::string(4096, 'u')), "test"), ESTALE);
  EXPECT_EQ(read_range(*fs_, "/u", 4096, 1).error().code, EIO);
  crash_and_mount();
  EXPECT_EQ(read_file(*fs_, "/a"), std::string(4096, '0') + std::string(4096, '1') + std::string(4096, '2'));
  EXPECT_EQ(read_file(*fs_, "/t"), std::string(4096 + 10, 't'));
  // Blocks lost before this mount have no copy anyone could have kept since.
  EXPECT_ERRNO(fs_->restore_lost_block(*fs_->lookup("/u"), 4096, as_bytes(std::string(4096, 'u')), "test"), ESTALE);
  expect_clean();
}

TEST_F(FailureTest, BadBlocksKnownAtMountAreFencedBeforeAnyoneReads) {
  ASSERT_OK(fs_->unmount());
  fs_.reset();
  uint64_t free_area = 40ull << 20;  // well inside the free data area
  ASSERT_OK(device_->inject_poison(lost_, 1));
  ASSERT_OK(device_->inject_poison(free_area, 3 * 4096));
  mount();
  int bad_records = 0;
  for (const auto& r : *fs_->fsmap(0, fs_->info().size_bytes)) bad_records += r.owner == OwnerKind::Bad;
  EXPECT_EQ(bad_records, 2) << "both ranges known before the first read";
  EXPECT_EQ(fs_->check().bad_blocks, 4u);
  EXPECT_EQ(read_range(*fs_, "/b", 4096, 1).error().code, EIO);
  expect_clean();
}

TEST_F(FailureTest, CheckpointMetadataOnAFailedBlockIsRewrittenFromMemory) {
  uint64_t table = 0;
  for (const auto& r : *fs_->fsmap(0, fs_->info().size_bytes)) {
    if (r.owner == OwnerKind::Metadata && r.metadata_kind == MetadataKind::InodeTable) table = r.device_offset_bytes;
  }
  ASSERT_NE(table, 0u);
  ASSERT_OK(device_->inject_poison(table, 4096));
  ASSERT_OK(device_->notify_failure(table, 4096, FailureFlags::None));
  for (const auto& r : records_at(*fs_, table)) EXPECT_EQ(r.owner, OwnerKind::Bad) << "the inode table moved away";
  expect_clean();
  remount();  // reads the rewritten checkpoint, not the failed block
  EXPECT_EQ(read_file(*fs_, "/c"), std::string(8192, 'c'));
  expect_clean();
}

// The journal offsets of its two copies, from fsmap.
std::vector<uint64_t> journal_copies(Filesystem& fs) {
  std::vector<uint64_t> out;
  for (const auto& r : *fs.fsmap(0, fs.info().size_bytes)) {
    if (r.owner == OwnerKind::Metadata && r.metadata_kind == MetadataKind::Journal) out.push_back(r.device_offset_bytes);
  }
  return out;
}

TEST_F(FailureTest, AFailedJournalCopyIsSurvivedAndBothCopiesShutDown) {
  const std::vector<uint64_t> copies = journal_copies(*fs_);
  ASSERT_EQ(copies.size(), 2u) << "format version 2 keeps two journal copies";
  // Enough transactions that the journal's third block holds committed ones.
  for (int i = 0; i < 200; ++i) ASSERT_OK(fs_->create("/f" + std::to_string(i)));
  ASSERT_OK(device_->inject_poison(copies[0] + 8192, 64));
  ASSERT_OK(device_->notify_failure(copies[0] + 8192, 64, FailureFlags::None));
  ASSERT_OK(fs_->create("/after-one"));  // the other copy carries on
  CheckReport report = fs_->check();
  EXPECT_TRUE(report.clean()) << report.problems.front();
  bool noted = false;
  for (const auto& n : report.notes) noted |= n.find("journal copy 1") != std::string::npos;
  EXPECT_TRUE(noted) << "check names the failed copy";
  // A remount replays the transactions of the failed block from copy 2.
  fs_.reset();
  {
    auto rw = Filesystem::mount(*device_);
    ASSERT_OK(rw);
    for (int i = 0; i < 200; ++i) ASSERT_OK((*rw)->lookup("/f" + std::to_string(i)));
    ASSERT_OK((*rw)->lookup("/after-one"));
    fs_ = std::move(*rw);
  }
  for (int i = 0; i < 200; ++i) ASSERT_OK(fs_->unlink("/f" + std::to_string(i)));
  // Memory fails under the other copy too, elsewhere: nothing can be journaled.
  ASSERT_OK(device_->inject_poison(copies[1] + 4096, 64));
  auto r = device_->notify_failure(copies[1] + 4096, 64, FailureFlags::None);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("shut down"), std::string::npos);
  EXPECT_ERRNO(fs_->create("/after"), EIO);
  fs_.reset();
  auto rw = Filesystem::mount(*device_);
  ASSERT_FALSE(rw.has_value()) << "a read-write mount on a journal failed in both copies is refused";
  MountOptions ro;
  ro.mode = MountMode::ReadOnly;
  auto fs = Filesystem::mount(*device_, ro);
  ASSERT_OK(fs);
  EXPECT_EQ(read_file(**fs, "/c"), std::string(8192, 'c')) << "everything committed is still there";
  EXPECT_ERRNO((*fs)->lookup("/f7"), ENOENT);  // the unlinks replay past both failed blocks
}

TEST_F(FailureTest, OneRangedCallCoversAnyLength) {
  // A failure of 28 MiB of free space (between the checkpoint's second copy in
  // the middle and the journal's at the end): one call, one record.
  uint64_t start = 34ull << 20;
  for (const auto& r : *fs_->fsmap(start, 28ull << 20)) ASSERT_EQ(r.owner, OwnerKind::Free);
  ASSERT_OK(device_->notify_failure(start, 28ull << 20, FailureFlags::None));
  EXPECT_EQ(fs_->check().bad_blocks, (28ull << 20) / 4096);
  int bad_records = 0;
  for (const auto& r : *fs_->fsmap(start, 28ull << 20)) bad_records += r.owner == OwnerKind::Bad;
  EXPECT_EQ(bad_records, 1);
  expect_clean();
}

// Every metadata kind on a failed block (I6): rewritten from memory (the
// superblock and journal copies, which have fixed places: the other copy carries
// on), checker clean, no file data lost.
TEST(MetadataFailure, EveryKindIsRewrittenOrShutsDownCleanly) {
  for (MetadataKind kind : {MetadataKind::Superblock, MetadataKind::CheckpointRoot, MetadataKind::InodeTable,
                            MetadataKind::Directory, MetadataKind::ExtentMap, MetadataKind::BadRangeList,
                            MetadataKind::CheckpointDelta, MetadataKind::Journal}) {
    SCOPED_TRACE(static_cast<int>(kind));
    MemoryDevice device(64ull << 20);
    ASSERT_OK(Filesystem::format(device));
    {
      auto fs = *Filesystem::mount(device);
      ASSERT_OK(fs->mkdir("/d"));
      write_file(*fs, "/d/a", std::string(3 * 4096, 'a'));
      write_file(*fs, "/b", std::string(4096, 'b'));
      write_file(*fs, "/gone", std::string(4096, 'g'));
      // A recorded bad range, so that the checkpoint has a bad-range section.
      ASSERT_OK(device.notify_failure(device_offset_of(*fs, "/gone", 0), 4096, FailureFlags::None));
      ASSERT_OK(fs->checkpoint(CheckpointMode::Full));  // a checkpoint holding every section
      write_file(*fs, "/later", std::string(4096, 'l'));
      ASSERT_OK(fs->checkpoint());  // and an incremental one on it: a delta
      ASSERT_OK(fs->unmount());
    }
    auto fs = *Filesystem::mount(device);
    uint64_t at = UINT64_MAX;
    for (const auto& r : *fs->fsmap(0, fs->info().size_bytes)) {
      if (r.owner == OwnerKind::Metadata && r.metadata_kind == kind && at == UINT64_MAX) at = r.device_offset_bytes;
    }
    ASSERT_NE(at, UINT64_MAX) << "no block of this kind to fail";
    ASSERT_OK(device.notify_failure(at, 4096, FailureFlags::None));
    ASSERT_OK(fs->mkdir("/after"));
    bool recorded = false;
    for (const auto& r : *fs->fsmap(at, 4096)) {
      recorded |= r.owner == OwnerKind::Bad;
      // A superblock copy has a fixed place: the other copy carries on. Every
      // other structure is rewritten elsewhere.
      const bool fixed = kind == MetadataKind::Superblock || kind == MetadataKind::Journal;
      if (!fixed) {
        EXPECT_EQ(r.owner, OwnerKind::Bad) << "the structure moved away";
      }
    }
    EXPECT_TRUE(recorded);
    EXPECT_TRUE(fs->check().clean());
    ASSERT_OK(fs->unmount());
    fs = *Filesystem::mount(device);
    EXPECT_EQ(read_file(*fs, "/d/a"), std::string(3 * 4096, 'a'));
    EXPECT_EQ(read_file(*fs, "/b"), std::string(4096, 'b'));
    EXPECT_EQ(read_file(*fs, "/later"), std::string(4096, 'l'));
    ASSERT_OK(fs->lookup("/after"));
    CheckReport report = fs->check();
    for (const auto& p : report.problems) ADD_FAILURE() << p;
  }
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {

// Maps an empty memfd over the device page at `offset`: any load there raises
// SIGBUS from then on, as failed memory does.
void make_page_vanish(MemoryDevice& device, uint64_t offset) {
  int empty = ::memfd_create("poise-test-gone", MFD_CLOEXEC);
  ASSERT_GE(empty, 0);
  ASSERT_NE(::mmap(device.data() + offset, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, empty, 0),
            MAP_FAILED);
  ::close(empty);
}

// Memory that fails under poise's own copy out of the device (a machine check
// in a real machine; here a page whose backing is gone, which raises SIGBUS the
// same way): the read fails with EIO for exactly that block, the process lives,
// the block is recorded bad and the rest of the file still reads (defect 3).
TEST(MachineCheckSafeCopy, AFaultUnderAReadIsEioForThatBlockAndTheProcessLives) {
  MemoryDevice device(64ull << 20);
  ASSERT_OK(Filesystem::format(device));
  auto fs = *Filesystem::mount(device);
  write_file(*fs, "/f", std::string(4096, 'a') + std::string(4096, 'b') + std::string(4096, 'c'));
  const uint64_t lost = device_offset_of(*fs, "/f", 4096);
  make_page_vanish(device, lost);  // the page behind file block 1
  auto whole = read_range(*fs, "/f", 0, 3 * 4096);
  ASSERT_FALSE(whole.has_value());
  EXPECT_EQ(whole.error().code, EIO);
  EXPECT_NE(whole.error().message.find("file bytes 4096..8192 are lost (device block " + std::to_string(lost / 4096)),
            std::string::npos)
      << whole.error().message;
  EXPECT_EQ(*read_range(*fs, "/f", 0, 4096), std::string(4096, 'a'));
  EXPECT_EQ(*read_range(*fs, "/f", 8192, 4096), std::string(4096, 'c'));
  // The failure flow ran once the locks were gone: the block is recorded bad.
  bool bad = false;
  for (const auto& r : *fs->fsmap(lost, 4096)) bad |= r.owner == OwnerKind::Bad;
  EXPECT_TRUE(bad) << "the failed block is fenced off";
  auto again = read_range(*fs, "/f", 4096, 10);
  ASSERT_FALSE(again.has_value());
  EXPECT_NE(again.error().message.find("are lost"), std::string::npos) << again.error().message;
  EXPECT_TRUE(fs->check().clean());
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {

// Journal replay copies each transaction out machine-check safe: memory that
// fails under it in one copy is read from the other, recorded, and the mount
// (read-only here: a store to that page would fault too) shows every file.
TEST(MachineCheckSafeCopy, AFaultUnderJournalReplayIsReadFromTheOtherCopy) {
  MemoryDevice device(64ull << 20);
  ASSERT_OK(Filesystem::format(device));
  uint64_t journal = UINT64_MAX;
  {
    auto fs = *Filesystem::mount(device);
    for (const auto& r : *fs->fsmap(0, fs->info().size_bytes)) {
      if (r.owner == OwnerKind::Metadata && r.metadata_kind == MetadataKind::Journal) {
        journal = std::min(journal, r.device_offset_bytes);
      }
    }
    for (int i = 0; i < 100; ++i) ASSERT_OK(fs->mkdir("/d" + std::to_string(i)));
    fs->shutdown();  // everything is in the journal only
  }
  make_page_vanish(device, journal);
  MountOptions ro;
  ro.mode = MountMode::ReadOnly;
  auto fs = Filesystem::mount(device, ro);
  ASSERT_OK(fs);
  for (int i = 0; i < 100; ++i) ASSERT_OK((*fs)->stat("/d" + std::to_string(i)));
  bool bad = false;
  for (const auto& r : *(*fs)->fsmap(journal, 4096)) bad |= r.owner == OwnerKind::Bad;
  EXPECT_TRUE(bad) << "the journal page that failed under the read is recorded";
  CheckReport report = (*fs)->check();
  bool noted = false;
  for (const auto& n : report.notes) noted |= n.find("machine check") != std::string::npos;
  EXPECT_TRUE(noted);
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {
using namespace poise::testing;

// Pre-remove promises that nothing acknowledged is lost: after it returns, what
// a power cut would keep holds every write that returned before it. Checked on
// a device that drops exactly what was not made durable (the page-cache model:
// nothing survives a machine crash until synced), while writers keep writing.
// On a device whose flush does nothing this could not fail (defect 9).
TEST(PreRemoveDurability, NothingAcknowledgedBeforeThePreRemoveIsLostOnADeviceThatDropsUnsyncedStores) {
  for (auto model : {CrashDevice::Model::PageCache, CrashDevice::Model::CacheLines}) {
    SCOPED_TRACE(model == CrashDevice::Model::PageCache ? "page cache" : "cache lines");
    CrashDevice device(64ull << 20, model);
    ASSERT_OK(Filesystem::format(device));
    auto mounted = Filesystem::mount(device);
    ASSERT_TRUE(mounted.has_value()) << mounted.error().message;
    Filesystem& fs = **mounted;
    constexpr int kWriters = 3;
    std::mutex mu;
    std::vector<std::pair<std::string, std::string>> acknowledged;  // path, content
    std::atomic<int> errors{0};
    std::vector<std::thread> writers;
    for (int w = 0; w < kWriters; ++w) {
      // Each writes until a call fails: after the removal every call does, so
      // each ends with exactly one error however the threads were scheduled.
      writers.emplace_back([&, w] {
        for (int i = 0;; ++i) {
          const std::string path = "/w" + std::to_string(w) + "_" + std::to_string(i);
          const std::string content(100 + 37 * (i % 50), static_cast<char>('a' + (w * 7 + i) % 26));
          auto ino = fs.create(path);
          if (!ino) {
            ++errors;
            return;
          }
          auto n = fs.write(*ino, 0, as_bytes(content));
          if (!n || *n != content.size()) {
            ++errors;
            return;
          }
          std::lock_guard lock(mu);
          acknowledged.emplace_back(path, content);
        }
      });
    }
    for (;;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      std::lock_guard lock(mu);
      if (acknowledged.size() >= 60) break;
    }
    ASSERT_OK(device.pre_remove());
    auto image = device.durable_image();  // what a power cut now would keep
    ASSERT_OK(device.remove());
    for (auto& t : writers) t.join();
    EXPECT_EQ(errors, kWriters) << "every writer gets an error once the device is removed";
    // Every write that returned: before the pre-remove (a writer may list it a
    // moment later), since after it none can. Each must be in the image.
    const std::vector<std::pair<std::string, std::string>> before = acknowledged;
    mounted->reset();
    auto again = Filesystem::mount(*image);
    ASSERT_TRUE(again.has_value()) << again.error().message;
    size_t lost = 0;
    for (const auto& [path, content] : before) {
      auto st = (*again)->stat(path);
      if (!st || read_file(**again, path) != content) ++lost;
    }
    EXPECT_EQ(lost, 0u) << "of " << before.size() << " acknowledged writes";
    EXPECT_TRUE((*again)->check().clean());
  }
}

}  // namespace
}  // namespace poise
