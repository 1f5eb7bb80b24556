// Running out of space: every ENOSPC leaves a filesystem that still mounts,
// still removes, and works again as soon as space is freed. The device is
// filled with data, then with metadata that only the next checkpoint must hold
// (long names by link and rename, extents by reflink), until ENOSPC.
#include <gtest/gtest.h>

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
  // Free space is now in one-block pieces, and a checkpoint section holds at
  // most 48 runs (a limit of the format, see docs/format.md): the checkpoint may
  // not fit. That must never wedge the filesystem: the journal holds everything,
  // a remount needs no checkpoint, and removing a file makes room.
  auto checkpointed = fs_->checkpoint();
  if (!checkpointed.has_value()) {
    EXPECT_EQ(checkpointed.error().code, ENOSPC) << checkpointed.error().message;
  }
  remount();
  EXPECT_EQ(read_range(*fs_, "/copy0", 4096, 4096).value(), std::string(4096, 'f'));
  expect_recovers();
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
