// Incremental checkpoints: a checkpoint keeps the sections of the last full one
// (its base) and appends the journal since to a delta, so it writes what
// changed, not what the filesystem holds. Each test checks what is on the device
// (which blocks moved, which kinds exist) and what a remount reads back.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <set>

#include "base/random.h"
#include "format/ondisk.h"
#include "format/superblock.h"
#include "fs/test_util.h"

namespace poise {
namespace {
using namespace poise::testing;

class IncrementalCheckpointTest : public FsTest {
 protected:
  // The device blocks each metadata kind holds now.
  std::map<MetadataKind, std::set<uint64_t>> metadata_blocks() {
    std::map<MetadataKind, std::set<uint64_t>> out;
    for (const FsmapRecord& r : *fs_->fsmap(0, fs_->info().size_bytes)) {
      if (r.owner != OwnerKind::Metadata) continue;
      for (uint64_t b = 0; b < r.length_bytes / kBlockSize; ++b) {
        out[r.metadata_kind].insert(r.device_offset_bytes / kBlockSize + b);
      }
    }
    return out;
  }
  format::SuperblockInfo superblock() {
    auto sb = format::decode_superblock(device_->data(), 0, "primary");
    EXPECT_TRUE(sb.has_value());
    return sb.has_value() ? *sb : format::SuperblockInfo{};
  }
  void make_files(const std::string& dir, int count) {
    ASSERT_OK(fs_->mkdir(dir));
    for (int i = 0; i < count; ++i) write_file(*fs_, dir + "/f" + std::to_string(i), "file " + std::to_string(i));
  }
};

TEST_F(IncrementalCheckpointTest, KeepsTheSectionsAndWritesOnlyTheJournal) {
  make_files("/many", 3000);
  ASSERT_OK(fs_->checkpoint(CheckpointMode::Full));
  auto before = metadata_blocks();
  ASSERT_EQ(before.count(MetadataKind::CheckpointDelta), 0u) << "a full checkpoint has no delta";
  ASSERT_GT(before[MetadataKind::InodeTable].size(), 90u);  // 3,000 inodes, two copies

  make_files("/new", 10);
  ASSERT_OK(fs_->unlink("/many/f7"));
  ASSERT_OK(fs_->checkpoint());
  auto after = metadata_blocks();
  for (MetadataKind kind : {MetadataKind::InodeTable, MetadataKind::Directory, MetadataKind::ExtentMap}) {
    EXPECT_EQ(after[kind], before[kind]) << to_string(kind) << " was rewritten";
  }
  const size_t delta = after[MetadataKind::CheckpointDelta].size();
  EXPECT_GE(delta, 2u);  // in both copies
  EXPECT_LE(delta, 8u) << "the delta is the journal of 13 operations";
  EXPECT_NE(superblock().feature_incompat & format::kIncompatDeltas, 0u);

  remount();
  expect_clean();
  EXPECT_EQ(read_file(*fs_, "/many/f2999"), "file 2999");
  EXPECT_EQ(read_file(*fs_, "/new/f9"), "file 9");
  EXPECT_FALSE(fs_->stat("/many/f7").has_value());
  // A full checkpoint folds the delta into new sections.
  ASSERT_OK(fs_->checkpoint(CheckpointMode::Full));
  EXPECT_EQ(metadata_blocks().count(MetadataKind::CheckpointDelta), 0u);
  remount();
  expect_clean();
  EXPECT_EQ(read_file(*fs_, "/new/f9"), "file 9");
}

// Blocks freed since the base (which still names their old owner) are reused
// by later files: base, delta and journal together say who owns them now.
TEST_F(IncrementalCheckpointTest, BlocksFreedInADeltaAreReusedSafely) {
  write_file(*fs_, "/old", std::string(64 * 4096, 'o'));
  ASSERT_OK(fs_->checkpoint(CheckpointMode::Full));
  ASSERT_OK(fs_->unlink("/old"));
  ASSERT_OK(fs_->checkpoint());
  write_file(*fs_, "/new", std::string(64 * 4096, 'n'));
  ASSERT_OK(fs_->reflink(*fs_->lookup("/new"), *fs_->create("/clone")));
  ASSERT_OK(fs_->checkpoint());
  write_file(*fs_, "/after", std::string(4096, 'a'));
  crash_and_mount();
  expect_clean();
  EXPECT_FALSE(fs_->stat("/old").has_value());
  EXPECT_EQ(read_file(*fs_, "/new"), std::string(64 * 4096, 'n'));
  EXPECT_EQ(read_file(*fs_, "/clone"), std::string(64 * 4096, 'n'));
  EXPECT_EQ(read_file(*fs_, "/after"), std::string(4096, 'a'));
  EXPECT_EQ(fs_->check().shared_blocks, 64u);
}

// A delta grows to a quarter of its base (at least 64 blocks); the checkpoint
// after that is a full one.
TEST_F(IncrementalCheckpointTest, ADeltaThatOutgrowsItsBaseBecomesAFullCheckpoint) {
  ASSERT_OK(fs_->checkpoint(CheckpointMode::Full));
  bool had_delta = false;
  int round = 0;
  for (; round < 100; ++round) {
    make_files("/r" + std::to_string(round), 200);
    ASSERT_OK(fs_->checkpoint());
    const bool delta = metadata_blocks().count(MetadataKind::CheckpointDelta) != 0;
    if (had_delta && !delta) break;  // folded into a full one
    had_delta = had_delta || delta;
  }
  ASSERT_TRUE(had_delta);
  ASSERT_LT(round, 100) << "the delta never became a full checkpoint";
  remount();
  expect_clean();
  for (int r = 0; r <= round; ++r) EXPECT_EQ(read_file(*fs_, "/r" + std::to_string(r) + "/f199"), "file 199");
}

// A journal transaction damaged in the region after it was committed (a bit
// flip in copy 1) must never be carried into a delta: that checkpoint is built
// from memory, in full, instead.
TEST_F(IncrementalCheckpointTest, ADamagedJournalIsNeverCopiedIntoADelta) {
  ASSERT_OK(fs_->checkpoint(CheckpointMode::Full));
  make_files("/d", 20);
  const format::SuperblockInfo sb = superblock();
  device_->data()[sb.journal_start_block * kBlockSize + 100] ^= std::byte{0x20};  // the first transaction, copy 1
  ASSERT_OK(fs_->checkpoint());
  EXPECT_EQ(metadata_blocks().count(MetadataKind::CheckpointDelta), 0u) << "a damaged journal went into a delta";
  remount();
  expect_clean();
  EXPECT_EQ(read_file(*fs_, "/d/f19"), "file 19");
}

// A copy whose root cannot be read at mount is known only by its root block:
// its sections are unknown, so no delta may be appended to it. The mount notes
// it and writes both copies anew, and every later delta extends whole copies.
TEST_F(IncrementalCheckpointTest, AnUnreadableSecondRootIsRewrittenNotExtended) {
  make_files("/base", 200);
  ASSERT_OK(fs_->checkpoint(CheckpointMode::Full));
  make_files("/delta", 20);
  ASSERT_OK(fs_->checkpoint());
  ASSERT_EQ(metadata_blocks().count(MetadataKind::CheckpointDelta), 1u);
  release_without_unmount();
  // Not a checksum error: a root overwritten by something else (bad magic).
  const format::SuperblockInfo damaged = superblock();
  std::memset(device_->data() + damaged.checkpoint_copy_root_block * kBlockSize, 0x5a, kBlockSize);
  mount();
  bool noted = false;
  for (const auto& n : fs_->check().notes) noted = noted || n.find("root copy 2") != std::string::npos;
  EXPECT_TRUE(noted) << "the unreadable second root was not reported";
  make_files("/after", 20);
  ASSERT_OK(fs_->checkpoint());
  make_files("/later", 20);
  ASSERT_OK(fs_->checkpoint());
  remount();
  expect_clean();
  // The second copy alone must now hold everything.
  release_without_unmount();
  const format::SuperblockInfo now = superblock();
  std::memset(device_->data() + now.checkpoint_root_block * kBlockSize, 0x5a, kBlockSize);
  mount();
  CheckReport r = fs_->check();
  for (const auto& p : r.problems) ADD_FAILURE() << "check: " << p;
  for (const std::string dir : {"/base", "/delta", "/after", "/later"}) {
    const int last = dir == "/base" ? 199 : 19;
    EXPECT_EQ(read_file(*fs_, dir + "/f" + std::to_string(last)), "file " + std::to_string(last)) << dir;
  }
  remount();
  expect_clean();
}

// Random operations with checkpoints of both kinds and crashes between them,
// against a map of what each file holds (seed printed; POISE_SEED replays).
TEST_F(IncrementalCheckpointTest, RandomWorkWithCheckpointsAndCrashesMatchesAModel) {
  const uint64_t seed = test_seed("IncrementalCheckpointTest.RandomWorkWithCheckpointsAndCrashesMatchesAModel");
  Rng rng(seed);
  std::map<std::string, std::string> model;
  auto name = [&] { return "/f" + std::to_string(rng.below(40)); };
  int deltas = 0;  // checkpoints that left a delta
  for (int step = 0; step < 1500; ++step) {
    SCOPED_TRACE("step " + std::to_string(step) + " seed " + std::to_string(seed));
    const uint64_t op = rng.below(100);
    const std::string path = name();
    const bool exists = model.count(path) != 0;
    if (op < 35) {  // write somewhere in the file
      const uint64_t offset = rng.below(6) * 3000;
      const std::string data(1 + rng.below(9000), static_cast<char>('a' + rng.below(26)));
      write_file(*fs_, path, data, offset);
      std::string& m = model[path];
      if (m.size() < offset + data.size()) m.resize(offset + data.size(), '\0');
      m.replace(offset, data.size(), data);
    } else if (op < 50 && exists) {
      ASSERT_OK(fs_->unlink(path));
      model.erase(path);
    } else if (op < 60 && exists) {
      const uint64_t size = rng.below(20000);
      ASSERT_OK(fs_->truncate(*fs_->lookup(path), size));
      model[path].resize(size, '\0');
    } else if (op < 70 && exists) {
      const std::string to = name();
      if (to == path) continue;
      ASSERT_OK(fs_->rename(path, to));
      model[to] = model[path];
      model.erase(path);
    } else if (op < 75 && exists) {
      const std::string to = name();
      if (to == path) continue;
      auto dst = fs_->lookup(to);
      InodeNumber ino = dst.has_value() ? *dst : *fs_->create(to);
      ASSERT_OK(fs_->reflink(*fs_->lookup(path), ino));
      model[to] = model[path];
    } else if (op < 80 && exists) {  // whole blocks of one file cloned into another
      const std::string to = name();
      const uint64_t blocks = model[path].size() / kBlockSize;
      if (to == path || blocks == 0) continue;
      const uint64_t from = rng.below(blocks);
      const uint64_t count = 1 + rng.below(blocks - from);
      const uint64_t at = rng.below(4);
      auto dst = fs_->lookup(to);
      InodeNumber ino = dst.has_value() ? *dst : *fs_->create(to);
      ASSERT_OK(fs_->clone_range(*fs_->lookup(path), from * kBlockSize, ino, at * kBlockSize, count * kBlockSize));
      std::string& m = model[to];
      if (m.size() < (at + count) * kBlockSize) m.resize((at + count) * kBlockSize, '\0');
      m.replace(at * kBlockSize, count * kBlockSize, model[path].substr(from * kBlockSize, count * kBlockSize));
    } else if (op < 90) {
      ASSERT_OK(fs_->checkpoint(rng.chance(5) ? CheckpointMode::Full : CheckpointMode::Auto));
      deltas += metadata_blocks().count(MetadataKind::CheckpointDelta);
    } else if (op < 95) {
      crash_and_mount();
    } else {
      remount();
    }
    if (step % 100 == 99) {
      crash_and_mount();
      expect_clean();
      for (const auto& [p, content] : model) ASSERT_EQ(read_file(*fs_, p), content) << p;
      auto entries = *fs_->readdir("/");
      ASSERT_EQ(entries.size(), model.size());
    }
  }
  EXPECT_GT(deltas, 20) << "the workload never kept a delta";
}

}  // namespace
}  // namespace poise
