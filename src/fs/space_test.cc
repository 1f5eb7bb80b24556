// Running out of space: every ENOSPC leaves a filesystem that still mounts,
// still removes, and works again as soon as space is freed. The device is
// filled with data, then with metadata that only the next checkpoint must hold
// (long names by link and rename, extents by reflink), until ENOSPC.
#include <gtest/gtest.h>

#include "format/ondisk.h"
#include "format/superblock.h"
#include "fs/test_util.h"

namespace poise {
namespace {
using namespace poise::testing;

class SpaceTest : public FsTest {
 protected:
  SpaceTest() : FsTest(16ull << 20) {}

  // Fills the data space with one file, leaving a few hundred KiB.
  void fill_with_data(uint64_t leave_bytes = 600 << 10) {
    FsInfo info = fs_->info();
    write_file(*fs_, "/data", std::string(info.free_bytes - leave_bytes, 'd'));
  }
  std::string long_name(int i) { return "/" + std::string(240, 'n') + std::to_string(i); }
  // After any ENOSPC: the image unmounts, mounts, checks clean, and removing
  // the data file makes room for new work.
  void expect_recovers() {
    remount();
    expect_clean();
    ASSERT_OK(fs_->unlink("/data"));
    ASSERT_OK(fs_->mkdir("/works-again"));
    write_file(*fs_, "/works-again/file", std::string(1 << 20, 'w'));
    ASSERT_OK(fs_->checkpoint());
    remount();
    expect_clean();
    EXPECT_EQ(read_file(*fs_, "/works-again/file"), std::string(1 << 20, 'w'));
  }
};

TEST_F(SpaceTest, LinksWithLongNamesStopAtENOSPCAndRmStillWorks) {
  fill_with_data();
  int made = 0;
  for (;; ++made) {
    ASSERT_LT(made, 100000) << "never ran out of space";
    auto r = fs_->link("/data", long_name(made));
    if (!r.has_value()) {
      EXPECT_EQ(r.error().code, ENOSPC) << r.error().message;
      break;
    }
  }
  EXPECT_GT(made, 10);
  // The checkpoint that must hold all those names can always be written.
  ASSERT_OK(fs_->checkpoint());
  remount();
  for (int i = 0; i < made; i += 97) EXPECT_TRUE(fs_->stat(long_name(i)).has_value());
  for (int i = 0; i < made; ++i) ASSERT_OK(fs_->unlink(long_name(i)));
  expect_recovers();
}

TEST_F(SpaceTest, RenamesToLongerNamesStopAtENOSPC) {
  fill_with_data();
  int made = 0;
  for (;; ++made) {
    ASSERT_LT(made, 100000) << "never ran out of space";
    auto created = fs_->create("/s" + std::to_string(made));
    if (!created.has_value()) break;
    auto r = fs_->rename("/s" + std::to_string(made), long_name(made));
    if (!r.has_value()) {
      EXPECT_EQ(r.error().code, ENOSPC) << r.error().message;
      break;
    }
  }
  ASSERT_OK(fs_->checkpoint());
  expect_recovers();
}

TEST_F(SpaceTest, ReflinksOfAFragmentedFileStopAtENOSPC) {
  // A file of many one-block extents (every other block punched out).
  auto ino = *fs_->create("/frag");
  write_file(*fs_, "/frag", std::string(2000 * 4096, 'f'));
  for (uint64_t b = 0; b < 2000; b += 2) ASSERT_OK(fs_->punch_hole(ino, b * 4096, 4096));
  fill_with_data(2400 << 10);  // each reflink needs room in both checkpoint copies for 1000 more extents and refcounts
  int made = 0;
  for (;; ++made) {
    ASSERT_LT(made, 100000) << "never ran out of space";
    auto copy = fs_->create("/copy" + std::to_string(made));
    if (!copy.has_value()) break;
    auto r = fs_->reflink(ino, *copy);
    if (!r.has_value()) {
      EXPECT_EQ(r.error().code, ENOSPC) << r.error().message;
      break;
    }
  }
  EXPECT_GT(made, 2);
  // Free space is now in one-block pieces: the checkpoint's sections are
  // placed run by run (past the root's 48, in run-list blocks), so it fits.
  ASSERT_OK(fs_->checkpoint());
  remount();
  EXPECT_EQ(read_range(*fs_, "/copy0", 4096, 4096).value(), std::string(4096, 'f'));
  expect_recovers();
}

// Free space in one-block pieces only: a checkpoint whose sections need more
// runs than its root can list (48 each) continues the list in run-list blocks.
// Before them, every checkpoint failed with ENOSPC on such a device, the
// journal filled, and only operations that free space got through.
class FragmentedSpaceTest : public FsTest {
 protected:
  // A file filling the device, then every other block of it punched out: about
  // 8,000 one-block holes and as many extent records (64 section blocks a copy).
  void fragment() {
    auto ino = *fs_->create("/data");
    uint64_t blocks = 0;
    const std::string chunk(64 * 4096, 'd');
    while (fs_->write(ino, blocks * 4096, as_bytes(chunk)).has_value()) blocks += 64;
    while (fs_->write(ino, blocks * 4096, as_bytes(std::string(4096, 'd'))).has_value()) ++blocks;
    data_blocks_ = blocks;
    for (uint64_t b = 1; b < blocks; b += 2) ASSERT_OK(fs_->punch_hole(ino, b * 4096, 4096));
  }
  std::string expected_block(uint64_t b) const { return b % 2 == 1 ? std::string(4096, '\0') : std::string(4096, 'd'); }
  void expect_data() {
    for (uint64_t b = 0; b < data_blocks_; b += 101) {
      ASSERT_EQ(read_range(*fs_, "/data", b * 4096, 4096).value(), expected_block(b)) << "block " << b;
    }
  }
  bool feature_set() {
    auto sb = format::decode_superblock(device_->data() + format::primary_superblock_block() * kBlockSize,
                                        format::primary_superblock_block(), "primary");
    return sb.has_value() && (sb->feature_incompat & format::kIncompatRunLists) != 0;
  }
  // The device blocks holding the current checkpoint's run-list links.
  std::vector<uint64_t> run_list_blocks() {
    std::vector<uint64_t> found;
    for (const FsmapRecord& r : *fs_->fsmap(0, fs_->info().size_bytes)) {
      if (r.owner == OwnerKind::Metadata && r.metadata_kind == MetadataKind::CheckpointRoot) {
        for (uint64_t b = 0; b < r.length_bytes / kBlockSize; ++b) {
          const uint64_t at = r.device_offset_bytes / kBlockSize + b;
          format::BlockHeader h;
          std::memcpy(&h, device_->data() + at * kBlockSize, sizeof h);
          if (h.kind.get() == format::kBlockRunList) found.push_back(at);
        }
      }
    }
    return found;
  }
  uint64_t data_blocks_ = 0;
};

TEST_F(FragmentedSpaceTest, ACheckpointFitsInOneBlockPieces) {
  fragment();
  ASSERT_GT(data_blocks_, 8000u);
  ASSERT_OK(fs_->checkpoint());
  ASSERT_TRUE(feature_set()) << "the test did not fragment free space enough to need run lists";
  EXPECT_FALSE(run_list_blocks().empty());
  expect_clean();
  remount();  // the mount reads the runs back from the lists
  expect_clean();
  expect_data();
  // And the filesystem keeps working: the journal fills and checkpoints many times over.
  auto ino = *fs_->lookup("/data");
  for (uint64_t b = 1; b < data_blocks_; b += 16) {
    ASSERT_OK(fs_->write(ino, b * 4096, as_bytes(std::string(4096, '\0'))));
  }
  for (int i = 0; i < 3000; ++i) ASSERT_OK(fs_->mkdir("/d" + std::to_string(i)));
  crash_and_mount();
  expect_clean();
  expect_data();
}

TEST_F(FragmentedSpaceTest, ADamagedRunListIsReadFromTheOtherCopy) {
  fragment();
  ASSERT_OK(fs_->checkpoint());
  const std::vector<uint64_t> lists = run_list_blocks();
  ASSERT_FALSE(lists.empty());
  release_without_unmount();
  // One flipped byte in one link: that copy's root is unusable, the other copy serves.
  device_->data()[lists.front() * kBlockSize + 100] ^= std::byte{0x40};
  MountOptions ro;
  ro.clock = &clock_;
  ro.mode = MountMode::ReadOnly;
  {
    auto fs = Filesystem::mount(*device_, ro);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    fs_ = std::move(*fs);
    expect_data();
    CheckReport r = fs_->check();
    EXPECT_TRUE(r.problems.empty());
    bool noted = false;
    for (const auto& n : r.notes) noted = noted || n.find("run list") != std::string::npos;
    EXPECT_TRUE(noted) << "the damaged link was not reported";
    fs_.reset();
  }
  mount();  // read-write: a new checkpoint makes both copies whole again
  expect_data();
  remount();
  CheckReport r = fs_->check();
  EXPECT_TRUE(r.problems.empty());
  expect_data();
}

TEST_F(SpaceTest, AFullJournalOnAFullDeviceStillLetsRmThrough) {
  fill_with_data();
  // Small directories until creates fail: the journal fills and checkpoints on
  // the way, and at the end neither new metadata nor a checkpoint fits.
  int made = 0;
  for (;; ++made) {
    ASSERT_LT(made, 1000000) << "never ran out of space";
    if (!fs_->mkdir("/d" + std::to_string(made)).has_value()) break;
  }
  // Every directory can be removed again, whatever the journal holds.
  for (int i = 0; i < made; ++i) ASSERT_OK(fs_->rmdir("/d" + std::to_string(i)));
  expect_recovers();
}

// Memory lost in free space can take the room the next checkpoint needs. Then
// the journal's last eighth is for operations that free space; one that
// frees nothing (a size change, unlinking one of two names) is refused there,
// so that however many are tried, removing files still gets through.
TEST_F(SpaceTest, OnlyFreeingOperationsUseTheJournalsReserve) {
  write_file(*fs_, "/many-names", "x");
  constexpr int kNames = 300;
  for (int i = 0; i < kNames; ++i) ASSERT_OK(fs_->link("/many-names", "/name" + std::to_string(i)));
  auto sized = *fs_->create("/sized");
  fill_with_data();
  int made = 0;
  while (made < 1000000 && fs_->mkdir("/d" + std::to_string(made)).has_value()) ++made;
  // Every free block fails: nothing is left for a checkpoint.
  for (const FsmapRecord& r : *fs_->fsmap(0, fs_->info().size_bytes)) {
    if (r.owner == OwnerKind::Free) ASSERT_OK(device_->notify_failure(r.device_offset_bytes, r.length_bytes, FailureFlags::None));
  }
  auto checkpointed = fs_->checkpoint();
  ASSERT_FALSE(checkpointed.has_value()) << "the test left room for a checkpoint";
  EXPECT_EQ(checkpointed.error().code, ENOSPC) << checkpointed.error().message;
  // Size changes free nothing: once the journal is down to its reserve they stop.
  int resized = 0;
  for (; resized < 200000; ++resized) {
    auto r = fs_->truncate(sized, 4096 * uint64_t(resized + 1));
    if (!r.has_value()) {
      EXPECT_EQ(r.error().code, ENOSPC) << r.error().message;
      break;
    }
  }
  ASSERT_LT(resized, 200000) << "size changes never ran out of journal";
  // Unlinking one of many names frees nothing either (a namespace transaction
  // is smaller than a size change's: a few fit before the reserve).
  int unlinked = 0;
  for (; unlinked < kNames; ++unlinked) {
    auto r = fs_->unlink("/name" + std::to_string(unlinked));
    if (!r.has_value()) {
      EXPECT_EQ(r.error().code, ENOSPC) << r.error().message;
      break;
    }
  }
  ASSERT_LT(unlinked, kNames) << "unlinking names that free nothing used the reserve";
  // What frees space still runs, however many directories there are.
  for (int i = 0; i < made; ++i) ASSERT_OK(fs_->rmdir("/d" + std::to_string(i)));
  ASSERT_OK(fs_->unlink("/data"));
  ASSERT_OK(fs_->checkpoint());
  for (int i = unlinked; i < kNames; ++i) ASSERT_OK(fs_->unlink("/name" + std::to_string(i)));
  remount();
  expect_clean();
  EXPECT_EQ(read_file(*fs_, "/many-names"), "x");
  EXPECT_EQ(fs_->stat("/many-names")->nlink, 1u);
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {
using namespace poise::testing;

class SpaceLeakTest : public FsTest {
 protected:
  SpaceLeakTest() : FsTest(16ull << 20) {}
};

// A punch-hole that copies a shared first partial block and then finds no room
// for the last one fails with ENOSPC and gives the first copy's block back.
TEST_F(SpaceLeakTest, AFailedPunchHoleGivesItsBlocksBack) {
  write_file(*fs_, "/f", std::string(3 * 4096, 'f'));
  ASSERT_OK(fs_->create("/g"));
  ASSERT_OK(fs_->reflink(*fs_->lookup("/f"), *fs_->lookup("/g")));  // every block of /f is shared
  // Fill the device block by block until nothing is available, then free exactly one.
  auto filler = *fs_->create("/filler");
  uint64_t blocks = 0;
  while (fs_->write(filler, blocks * 4096, as_bytes(std::string(4096, 'x'))).has_value()) ++blocks;
  ASSERT_GT(blocks, 0u);
  ASSERT_OK(fs_->punch_hole(filler, 0, 4096));
  const uint64_t free_before = fs_->info().free_bytes;
  auto r = fs_->punch_hole(*fs_->lookup("/f"), 100, 2 * 4096);  // partial blocks 0 and 2, both shared
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ENOSPC);
  EXPECT_EQ(fs_->info().free_bytes, free_before) << "the copy of block 0 leaked";
  EXPECT_EQ(read_file(*fs_, "/f"), std::string(3 * 4096, 'f')) << "a failed punch changed the file";
  expect_clean();
}

}  // namespace
}  // namespace poise
