// The previous checkpoint as a fallback. Two copies survive any one bad block;
// where the same block of the newest checkpoint is lost in both (its roots, a
// section of a full checkpoint), the previous checkpoint, kept one more
// generation, and the journal carried with the newest stand in, and the
// journal replays on top: the same files, nothing lost. Its blocks give way to
// data when space is short, and a second loss there fails the mount cleanly.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "base/random.h"
#include "device/crash_device.h"
#include "image_surgery.h"
#include "poise/filesystem.h"

namespace poise {
namespace {
using namespace surgery;  // NOLINT(google-build-using-namespace)

// The reference: every file's path and content, and the directories.
struct Model {
  std::map<std::string, std::string> files;
  std::set<std::string> dirs{"/"};
};

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::string content_of(Filesystem& fs, const std::string& path) {
  auto ino = fs.lookup(path);
  if (!ino.has_value()) return "(missing: " + ino.error().message + ")";
  auto st = fs.stat(*ino);
  std::string out(st->size_bytes, '\0');
  auto n = fs.read(*ino, 0, {reinterpret_cast<std::byte*>(out.data()), out.size()});
  if (!n.has_value()) return "(unreadable: " + n.error().message + ")";
  out.resize(*n);
  return out;
}

// The filesystem holds exactly the model: each file's bytes, each directory's names.
void expect_model(Filesystem& fs, const Model& m) {
  std::map<std::string, size_t> names;
  for (const auto& [path, data] : m.files) {
    EXPECT_EQ(content_of(fs, path), data) << path;
    ++names[path.substr(0, std::max<size_t>(1, path.rfind('/')))];
  }
  for (const std::string& d : m.dirs) {
    if (d != "/") ++names[d.substr(0, std::max<size_t>(1, d.rfind('/')))];
  }
  for (const std::string& d : m.dirs) {
    auto entries = fs.readdir(d);
    ASSERT_TRUE(entries.has_value()) << d << ": " << entries.error().message;
    EXPECT_EQ(entries->size(), names[d]) << "names in " << d;
  }
}

// One random operation, on the filesystem and on the model.
void random_op(Filesystem& fs, Model* m, Rng& rng, uint64_t* serial) {
  std::vector<std::string> files;
  for (const auto& [path, data] : m->files) files.push_back(path);
  std::vector<std::string> dirs(m->dirs.begin(), m->dirs.end());
  const std::string dir = dirs[rng.below(dirs.size())];
  const std::string fresh = (dir == "/" ? "" : dir) + "/n" + std::to_string((*serial)++);
  switch (files.empty() ? 0 : rng.below(7)) {
    case 0: {  // a new file with a few blocks
      std::string data(1 + rng.below(3 * kBlockSize), static_cast<char>('a' + rng.below(26)));
      auto ino = fs.create(fresh);
      ASSERT_TRUE(ino.has_value()) << ino.error().message;
      ASSERT_TRUE(fs.write(*ino, 0, bytes_of(data)).has_value());
      m->files[fresh] = data;
      break;
    }
    case 1: {  // overwrite inside a file, or append to it
      const std::string& path = files[rng.below(files.size())];
      std::string& data = m->files[path];
      const uint64_t at = rng.below(data.size() + 1);
      std::string more(1 + rng.below(5000), static_cast<char>('A' + rng.below(26)));
      ASSERT_TRUE(fs.write(*fs.lookup(path), at, bytes_of(more)).has_value());
      if (data.size() < at + more.size()) data.resize(at + more.size());
      data.replace(at, more.size(), more);
      break;
    }
    case 2: {
      const std::string& path = files[rng.below(files.size())];
      ASSERT_TRUE(fs.unlink(path).has_value());
      m->files.erase(path);
      break;
    }
    case 3: {
      const std::string path = files[rng.below(files.size())];
      ASSERT_TRUE(fs.rename(path, fresh).has_value());
      m->files[fresh] = m->files[path];
      m->files.erase(path);
      break;
    }
    case 4: {  // a reflink copy: sharing the previous checkpoint must carry
      const std::string& path = files[rng.below(files.size())];
      auto to = fs.create(fresh);
      ASSERT_TRUE(to.has_value());
      ASSERT_TRUE(fs.reflink(*fs.lookup(path), *to).has_value());
      m->files[fresh] = m->files[path];
      break;
    }
    case 5: {
      const std::string& path = files[rng.below(files.size())];
      std::string& data = m->files[path];
      const uint64_t size = rng.below(data.size() + 1);
      ASSERT_TRUE(fs.truncate(*fs.lookup(path), size).has_value());
      data.resize(size);
      break;
    }
    default:
      ASSERT_TRUE(fs.mkdir(fresh).has_value());
      m->dirs.insert(fresh);
      break;
  }
}

// One byte of the block flipped: its checksum no longer verifies.
void damage_block(MemoryDevice& device, uint64_t block) { device.data()[block * kBlockSize + 100] ^= std::byte{0x40}; }

void damage_newest_roots(MemoryDevice& device) {
  const format::SuperblockInfo sb = superblock_of(device);
  damage_block(device, sb.checkpoint_root_block);
  damage_block(device, sb.checkpoint_copy_root_block);
}

// check finds no problem and notes `note` (when given); a read-write mount
// then holds exactly the model. Returns that mount.
std::unique_ptr<Filesystem> expect_clean_holding(MemoryDevice& device, const Model& m, const std::string& note = "") {
  auto report = Filesystem::check_device(device);
  EXPECT_TRUE(report.has_value()) << report.error().message;
  if (!report.has_value()) return nullptr;
  EXPECT_TRUE(report->clean()) << report->problems.front();
  if (!note.empty()) {
    EXPECT_TRUE(mentions(report->notes, note)) << "no note says: " << note;
  }
  auto fs = Filesystem::mount(device);
  EXPECT_TRUE(fs.has_value()) << fs.error().message;
  if (!fs.has_value()) return nullptr;
  expect_model(**fs, m);
  return std::move(*fs);
}

// format, a workload, a checkpoint of `older`, more, the newest checkpoint of
// `newest`, more still in the journal, unmount.
std::unique_ptr<MemoryDevice> three_generations(CheckpointMode older, CheckpointMode newest, Model* m, uint64_t seed) {
  auto device = std::make_unique<MemoryDevice>(kBytes);
  EXPECT_TRUE(Filesystem::format(*device).has_value());
  auto fs = Filesystem::mount(*device);
  EXPECT_TRUE(fs.has_value());
  Rng rng(seed);
  uint64_t serial = 0;
  for (CheckpointMode mode : {older, newest}) {
    for (int i = 0; i < 40; ++i) random_op(**fs, m, rng, &serial);
    EXPECT_TRUE((*fs)->checkpoint(mode).has_value());
  }
  for (int i = 0; i < 40; ++i) random_op(**fs, m, rng, &serial);
  EXPECT_TRUE((*fs)->unmount().has_value());
  EXPECT_TRUE(superblock_of(*device).has_previous()) << "the older checkpoint is kept";
  return device;
}

class Fallback : public ::testing::TestWithParam<CheckpointMode> {};

TEST_P(Fallback, TheNewestRootsLostInBothCopiesLoseNothing) {
  const uint64_t seed = test_seed("Fallback.TheNewestRootsLostInBothCopiesLoseNothing");
  Model m;
  auto device = three_generations(CheckpointMode::Full, GetParam(), &m, seed);
  damage_newest_roots(*device);

  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value()) << report.error().message;
  EXPECT_TRUE(report->clean()) << report->problems.front();
  EXPECT_TRUE(mentions(report->notes, "stand in")) << "check says which checkpoint stood in";
  {
    MountOptions ro;
    ro.mode = MountMode::ReadOnly;
    auto fs = Filesystem::mount(*device, ro);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    expect_model(**fs, m);
  }
  {
    // Read-write: a new full checkpoint at once, keeping nothing of the lost one.
    auto fs = Filesystem::mount(*device);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    expect_model(**fs, m);
    EXPECT_FALSE(superblock_of(*device).has_previous()) << "no fallback to a checkpoint the newest was not built on";
    EXPECT_EQ((*fs)->info().previous_generation, 0u);
    Rng rng(seed + 1);
    uint64_t serial = 1000;
    for (int i = 0; i < 20; ++i) random_op(**fs, &m, rng, &serial);
    ASSERT_TRUE((*fs)->checkpoint().has_value());
    EXPECT_TRUE(superblock_of(*device).has_previous()) << "the next checkpoint keeps one again";
    const FsInfo info = (*fs)->info();
    EXPECT_EQ(info.previous_generation, info.checkpoint_generation - 1);
    EXPECT_GT(info.previous_bytes, 0u);
    ASSERT_TRUE((*fs)->unmount().has_value());
  }
  auto after = Filesystem::check_device(*device);
  ASSERT_TRUE(after.has_value());
  EXPECT_TRUE(after->clean()) << after->problems.front();
  EXPECT_TRUE(after->notes.empty()) << after->notes.front();
  auto fs = Filesystem::mount(*device);
  ASSERT_TRUE(fs.has_value());
  expect_model(**fs, m);
}

INSTANTIATE_TEST_SUITE_P(NewestFullOrIncremental, Fallback,
                         ::testing::Values(CheckpointMode::Full, CheckpointMode::Auto),
                         [](const auto& info) { return info.param == CheckpointMode::Full ? "Full" : "Incremental"; });

std::vector<uint64_t> blocks_of(Filesystem& fs, MetadataKind kind) {
  std::vector<uint64_t> out;
  for (const auto& r : *fs.fsmap(0, kBytes)) {
    if (r.owner != OwnerKind::Metadata || r.metadata_kind != kind) continue;
    for (uint64_t b = 0; b < r.length_bytes / kBlockSize; ++b) out.push_back(r.device_offset_bytes / kBlockSize + b);
  }
  return out;
}

// A full checkpoint shares nothing with the one before: the same inode-table
// block lost in both copies is survived too.
TEST(FallbackSections, AnInodeTableBlockLostInBothCopiesLosesNothing) {
  const uint64_t seed = test_seed("FallbackSections.AnInodeTableBlockLostInBothCopiesLosesNothing");
  Model m;
  auto device = three_generations(CheckpointMode::Full, CheckpointMode::Full, &m, seed);
  std::vector<uint64_t> inode_blocks;
  {
    MountOptions ro;
    ro.mode = MountMode::ReadOnly;
    auto fs = Filesystem::mount(*device, ro);
    ASSERT_TRUE(fs.has_value());
    inode_blocks = blocks_of(**fs, MetadataKind::InodeTable);
    EXPECT_FALSE(blocks_of(**fs, MetadataKind::PreviousCheckpoint).empty()) << "fsmap shows the kept checkpoint";
    EXPECT_FALSE(blocks_of(**fs, MetadataKind::CarriedJournal).empty()) << "and the carried journal";
  }
  ASSERT_EQ(inode_blocks.size(), 2u) << "one inode-table block per copy";
  for (uint64_t b : inode_blocks) damage_block(*device, b);
  expect_clean_holding(*device, m, "inode table");  // the note says what was lost
}

// Failed memory (poison) under both roots of the newest: check works, the
// mount falls back, and a read-write mount fences both blocks for good.
TEST(FallbackSections, PoisonUnderBothNewestRootsIsSurvived) {
  const uint64_t seed = test_seed("FallbackSections.PoisonUnderBothNewestRootsIsSurvived");
  Model m;
  auto device = three_generations(CheckpointMode::Full, CheckpointMode::Auto, &m, seed);
  const format::SuperblockInfo sb = superblock_of(*device);
  for (uint64_t root : {sb.checkpoint_root_block, sb.checkpoint_copy_root_block}) {
    ASSERT_TRUE(device->inject_poison(root * kBlockSize, kBlockSize).has_value());
  }
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value()) << report.error().message;
  EXPECT_TRUE(report->clean()) << report->problems.front();
  {
    auto fs = Filesystem::mount(*device);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    expect_model(**fs, m);
    uint64_t bad = 0;
    for (const auto& r : *(*fs)->fsmap(0, kBytes)) {
      if (r.owner == OwnerKind::Bad) bad += r.length_bytes / kBlockSize;
    }
    EXPECT_EQ(bad, 2u) << "both roots' blocks are fenced off";
    ASSERT_TRUE((*fs)->unmount().has_value());
  }
  auto fs = Filesystem::mount(*device);
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  expect_model(**fs, m);
  EXPECT_TRUE((*fs)->check().clean());
}

// The previous checkpoint damaged as well: the mount fails, naming both.
TEST(FallbackSections, BothCheckpointsLostFailTheMountCleanly) {
  Model m;
  auto device = three_generations(CheckpointMode::Full, CheckpointMode::Full, &m, 7);
  const format::SuperblockInfo sb = superblock_of(*device);
  damage_newest_roots(*device);
  damage_block(*device, sb.previous_root_block);
  damage_block(*device, sb.previous_copy_root_block);
  int code = 0;
  const std::string message = mount_error(*device, &code);
  EXPECT_EQ(code, EBADMSG) << message;
  EXPECT_NE(message.find("previous checkpoint cannot stand in"), std::string::npos) << message;
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value()) << report.error().message;
  EXPECT_FALSE(report->clean());
  // Failed memory instead of damaged bytes under the newest roots: still a
  // report with the problem, not an I/O error of check itself.
  for (uint64_t root : {sb.checkpoint_root_block, sb.checkpoint_copy_root_block}) {
    ASSERT_TRUE(device->inject_poison(root * kBlockSize, kBlockSize).has_value());
  }
  auto poisoned = Filesystem::check_device(*device);
  ASSERT_TRUE(poisoned.has_value()) << poisoned.error().message;
  EXPECT_FALSE(poisoned->clean());
  // The carried journal damaged instead (in both copies): refused as well.
  Model m2;
  auto other = three_generations(CheckpointMode::Full, CheckpointMode::Full, &m2, 8);
  const format::SuperblockInfo osb = superblock_of(*other);
  ASSERT_GT(osb.carry_blocks, 0u);
  damage_newest_roots(*other);
  damage_block(*other, osb.carry_block);
  damage_block(*other, osb.carry_copy_block);
  code = 0;
  const std::string carried = mount_error(*other, &code);
  EXPECT_EQ(code, EBADMSG) << carried;
  EXPECT_NE(carried.find("carried"), std::string::npos) << carried;
}

// check loads the previous checkpoint too: a fallback that could no longer
// stand in (its carried journal lost, its roots lost) is reported as a note, so
// that a lost redundancy is known before it is needed.
TEST(FallbackSections, CheckSaysWhenTheFallbackIsLost) {
  Model m;
  auto device = three_generations(CheckpointMode::Full, CheckpointMode::Auto, &m, 11);
  auto clean = Filesystem::check_device(*device);
  ASSERT_TRUE(clean.has_value());
  EXPECT_TRUE(clean->clean() && clean->notes.empty()) << "the fallback stands in: nothing to say";
  const format::SuperblockInfo sb = superblock_of(*device);
  ASSERT_GT(sb.carry_blocks, 0u);
  auto carried = MemoryDevice::copy_of(device->data(), kBytes);
  damage_block(*carried, sb.carry_block);
  damage_block(*carried, sb.carry_copy_block);
  auto report = Filesystem::check_device(*carried);
  ASSERT_TRUE(report.has_value());
  EXPECT_TRUE(report->clean()) << "the newest is whole: " << report->problems.front();
  EXPECT_TRUE(mentions(report->notes, "could not stand in")) << "the lost fallback is told";
  // repair says what check says: letting the lost fallback go is a change it makes.
  auto repaired = Filesystem::repair(*carried, RepairOptions{.dry_run = true});
  ASSERT_TRUE(repaired.has_value()) << repaired.error().message;
  EXPECT_TRUE(mentions(repaired->changes, "could not stand in")) << "repair -n lists letting it go";
  auto untouched = Filesystem::repair(*device, RepairOptions{.dry_run = true});
  ASSERT_TRUE(untouched.has_value());
  EXPECT_TRUE(untouched->changes.empty()) << untouched->changes.front();
  damage_block(*device, sb.previous_root_block);
  damage_block(*device, sb.previous_copy_root_block);
  expect_clean_holding(*device, m, "previous checkpoint, kept for a fallback, cannot be read");  // the lost fallback is told
}

// An image from before sharing marks: the checkpoint that turns them on keeps
// no previous one (the journal it would carry has reflinks without their marks,
// which a fallback would take for cross-links); the next one does.
TEST(FallbackSections, TheCheckpointThatTurnsOnSharingMarksKeepsNone) {
  auto device = std::make_unique<MemoryDevice>(kBytes);
  ASSERT_TRUE(Filesystem::format(*device).has_value());
  edit_superblocks(*device, [](format::SuperblockInfo* sb) { sb->feature_incompat &= ~format::kIncompatSharingMarks; });
  Model m;
  {
    auto fs = Filesystem::mount(*device);
    ASSERT_TRUE(fs.has_value());
    auto a = (*fs)->create("/a");
    ASSERT_TRUE((*fs)->write(*a, 0, bytes_of(std::string(8192, 'a'))).has_value());
    ASSERT_TRUE((*fs)->reflink(*a, *(*fs)->create("/b")).has_value());  // unmarked
    ASSERT_TRUE((*fs)->checkpoint(CheckpointMode::Full).has_value());
    EXPECT_NE(superblock_of(*device).feature_incompat & format::kIncompatSharingMarks, 0u);
    EXPECT_FALSE(superblock_of(*device).has_previous());
    ASSERT_TRUE((*fs)->reflink(*a, *(*fs)->create("/c")).has_value());  // marked
    ASSERT_TRUE((*fs)->checkpoint(CheckpointMode::Full).has_value());
    EXPECT_TRUE(superblock_of(*device).has_previous());
    ASSERT_TRUE((*fs)->unmount().has_value());
  }
  for (const char* name : {"/a", "/b", "/c"}) m.files[name] = std::string(8192, 'a');
  damage_newest_roots(*device);
  expect_clean_holding(*device, m);
}

// Memory that fails under the kept checkpoint lets it go at once: it could not
// stand in, and its blocks no longer count as free space.
TEST(FallbackSections, FailedMemoryUnderTheKeptCheckpointLetsItGo) {
  Model m;
  auto device = three_generations(CheckpointMode::Full, CheckpointMode::Full, &m, 31);
  for (MountMode mode : {MountMode::ReadOnly, MountMode::ReadWrite}) {
    SCOPED_TRACE(mode == MountMode::ReadOnly ? "read-only" : "read-write");
    auto copy = MemoryDevice::copy_of(device->data(), kBytes);
    MountOptions options;
    options.mode = mode;
    auto fs = Filesystem::mount(*copy, options);
    ASSERT_TRUE(fs.has_value());
    const auto kept = blocks_of(**fs, MetadataKind::PreviousCheckpoint);
    ASSERT_FALSE(kept.empty());
    const uint64_t free_before = (*fs)->info().free_bytes;
    ASSERT_TRUE(copy->inject_poison(kept.front() * kBlockSize, kBlockSize).has_value());
    ASSERT_TRUE(copy->notify_failure(kept.front() * kBlockSize, kBlockSize, FailureFlags::None).has_value());
    EXPECT_TRUE(blocks_of(**fs, MetadataKind::PreviousCheckpoint).empty()) << "let go";
    if (mode == MountMode::ReadOnly) {  // (read-write also writes a new checkpoint, with the bad range in it)
      EXPECT_EQ((*fs)->info().free_bytes, free_before - kBlockSize) << "only the failed block is lost to free space";
    }
    EXPECT_TRUE((*fs)->check().clean()) << (*fs)->check().problems.front();
    ASSERT_TRUE((*fs)->unmount().has_value());
    if (mode == MountMode::ReadWrite) {
      EXPECT_FALSE(superblock_of(*copy).has_previous());
    }
    auto again = Filesystem::mount(*copy);
    ASSERT_TRUE(again.has_value());
    expect_model(**again, m);
  }
}

// The kept checkpoint never costs the user space: data that needs its blocks
// takes them, and the superblocks stop naming it.
TEST(FallbackSpace, AKeptCheckpointGivesWayToData) {
  auto device = std::make_unique<MemoryDevice>(kBytes);
  ASSERT_TRUE(Filesystem::format(*device).has_value());
  {
    auto fs = Filesystem::mount(*device);
    ASSERT_TRUE(fs.has_value());
    for (int i = 0; i < 3000; ++i) ASSERT_TRUE((*fs)->create("/f" + std::to_string(i)).has_value());
    ASSERT_TRUE((*fs)->checkpoint(CheckpointMode::Full).has_value());
    ASSERT_TRUE((*fs)->checkpoint(CheckpointMode::Full).has_value());
    const size_t kept = blocks_of(**fs, MetadataKind::PreviousCheckpoint).size();
    ASSERT_GT(kept, 20u) << "the older full checkpoint is kept";
    const uint64_t free_before = (*fs)->info().free_bytes;
    auto big = (*fs)->create("/big");
    ASSERT_TRUE(big.has_value());
    const std::string chunk(256 << 10, 'x');
    uint64_t written = 0;
    for (;;) {
      auto n = (*fs)->write(*big, written, bytes_of(chunk));
      if (!n.has_value()) {
        EXPECT_EQ(n.error().code, ENOSPC) << n.error().message;
        break;
      }
      written += *n;
      if (*n < chunk.size()) break;
    }
    EXPECT_TRUE(blocks_of(**fs, MetadataKind::PreviousCheckpoint).empty()) << "the kept checkpoint gave way";
    // Everything but the blocks held for the next checkpoints was written.
    EXPECT_GT(written + kept * kBlockSize, free_before / 2) << written << " of " << free_before;
    EXPECT_TRUE((*fs)->check().clean()) << (*fs)->check().problems.front();
    ASSERT_TRUE((*fs)->unmount().has_value());
  }
  EXPECT_FALSE(superblock_of(*device).has_previous()) << "unmount stops naming it";
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value());
  EXPECT_TRUE(report->clean()) << report->problems.front();
}

// The kept checkpoint let go for space, its blocks reused by data, and then a
// crash before any superblock stopped naming it: where the newest is lost too,
// the stale previous checkpoint either still loads from what is left of its
// copies (blocks under files are not claimed for it) or is refused; files are
// never cut to make room for it.
TEST(FallbackSpace, AStaleKeptCheckpointNeverCostsFileData) {
  auto device = std::make_unique<MemoryDevice>(kBytes);
  ASSERT_TRUE(Filesystem::format(*device).has_value());
  Model m;
  {
    auto fs = Filesystem::mount(*device);
    ASSERT_TRUE(fs.has_value());
    for (int i = 0; i < 3000; ++i) {
      ASSERT_TRUE((*fs)->create("/f" + std::to_string(i)).has_value());
      m.files["/f" + std::to_string(i)] = "";
    }
    ASSERT_TRUE((*fs)->checkpoint(CheckpointMode::Full).has_value());
    ASSERT_TRUE((*fs)->checkpoint(CheckpointMode::Full).has_value());
    auto big = (*fs)->create("/big");
    ASSERT_TRUE(big.has_value());
    std::string& data = m.files["/big"];
    const std::string chunk(64 << 10, 'x');
    for (;;) {
      auto n = (*fs)->write(*big, data.size(), bytes_of(chunk));
      if (!n.has_value() || *n == 0) break;
      data.append(chunk, 0, *n);
    }
    EXPECT_TRUE(blocks_of(**fs, MetadataKind::PreviousCheckpoint).empty()) << "the kept checkpoint gave way";
    (*fs)->shutdown();  // a crash: the superblocks still name it
  }
  ASSERT_TRUE(superblock_of(*device).has_previous());
  damage_newest_roots(*device);
  auto repaired = Filesystem::repair(*device, RepairOptions{.dry_run = true});
  if (repaired.has_value()) {
    for (const std::string& lost : repaired->lost) {
      EXPECT_EQ(lost.find("unmapped file blocks"), std::string::npos) << lost;
    }
  }
  MountOptions ro;
  ro.mode = MountMode::ReadOnly;
  auto fs = Filesystem::mount(*device, ro);
  if (!fs.has_value()) {
    std::fprintf(stderr, "the stale previous checkpoint is refused: %s\n", fs.error().message.c_str());
    EXPECT_NE(fs.error().message.find("cannot stand in"), std::string::npos) << fs.error().message;
    return;
  }
  std::fprintf(stderr, "the stale previous checkpoint stood in\n");
  expect_model(**fs, m);
  EXPECT_TRUE((*fs)->check().clean()) << (*fs)->check().problems.front();
}

// The same, made exactly: a block of the previous checkpoint's copy 2 taken by
// a file (a journaled extent and the file's bytes over it), then the newest
// lost. The previous checkpoint loads from copy 1, the block stays the file's.
TEST(FallbackSpace, AKeptBlockTakenByAFileStaysTheFiles) {
  Model m;
  auto device = three_generations(CheckpointMode::Full, CheckpointMode::Full, &m, 21);
  std::vector<uint64_t> journals;
  uint64_t taken = 0;
  format::InodeCore core;
  {
    auto fs = Filesystem::mount(*device);
    ASSERT_TRUE(fs.has_value());
    auto ino = (*fs)->create("/taker");
    ASSERT_TRUE(ino.has_value());
    auto st = (*fs)->stat(*ino);
    core = format::InodeCore{ino->value(), format::kModeRegular | (st->mode & 07777), st->nlink, st->uid, st->gid, kBlockSize,
                             st->atime_ns, st->mtime_ns, st->ctime_ns};
    journals = journal_copies(**fs);
    const auto kept = blocks_of(**fs, MetadataKind::PreviousCheckpoint);
    ASSERT_FALSE(kept.empty());
    taken = kept.back();  // the copy placed from the middle of the data area on
    ASSERT_TRUE((*fs)->unmount().has_value());
  }
  ASSERT_EQ(superblock_of(*device).previous_copy_root_block < taken, true) << "a block of copy 2";
  format::TxEncoder tx;
  tx.add(format::ExtentRecord{core.ino, 0, taken, 1, 0});
  tx.add(core);
  append_transaction(*device, journals, last_lsn(*device, journals[0]), tx);
  const std::string bytes(kBlockSize, 'z');
  device->write(taken * kBlockSize, bytes.data(), bytes.size());
  m.files["/taker"] = bytes;
  damage_newest_roots(*device);

  auto fs = expect_clean_holding(*device, m, "lie under files now");
  ASSERT_NE(fs, nullptr);
  ASSERT_TRUE(fs->unmount().has_value());
  auto after = Filesystem::check_device(*device);
  ASSERT_TRUE(after.has_value());
  EXPECT_TRUE(after->clean()) << after->problems.front();
  auto repaired = Filesystem::repair(*device, RepairOptions{.dry_run = true});
  ASSERT_TRUE(repaired.has_value()) << repaired.error().message;
  for (const std::string& lost : repaired->lost) EXPECT_EQ(lost.find("unmapped"), std::string::npos) << lost;
}

// A power cut at every flush point of a read-write fallback mount (which writes
// a full checkpoint at once, over free space that may hold the lost newest
// checkpoint's blocks): every crash image checks clean and holds the files.
TEST(FallbackCrash, APowerCutDuringTheFallbacksOwnCheckpointLosesNothing) {
  const uint64_t seed = test_seed("FallbackCrash.APowerCutDuringTheFallbacksOwnCheckpointLosesNothing");
  Model m;
  auto image = three_generations(CheckpointMode::Full, CheckpointMode::Auto, &m, seed);
  damage_newest_roots(*image);
  // The damaged image on a crash-simulating device, made durable: its flush points follow.
  auto load = [&](CrashDevice& device) {
    device.write(0, image->data(), kBytes);
    device.flush(0, kBytes);
    device.drain();
  };
  {
    // Until the fallback's own checkpoint is current, what it was loaded from stays held.
    MountOptions ro;
    ro.mode = MountMode::ReadOnly;
    auto fs = Filesystem::mount(*image, ro);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    EXPECT_FALSE(blocks_of(**fs, MetadataKind::CarriedJournal).empty()) << "the carried journal is held";
  }
  uint64_t first = 0;
  uint64_t last = 0;
  {
    CrashDevice reference(kBytes);
    load(reference);
    first = reference.flush_points() + 1;
    auto fs = Filesystem::mount(reference);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    ASSERT_TRUE((*fs)->unmount().has_value());
    last = reference.flush_points();
  }
  ASSERT_GT(last, first + 2) << "the fallback mount writes a checkpoint";
  uint64_t tested = 0;
  for (uint64_t point = first; point <= last && !::testing::Test::HasFailure(); ++point) {
    for (uint64_t k = 0; k < 2; ++k) {
      SCOPED_TRACE("crash at flush point " + std::to_string(point) + ", seed " + std::to_string(seed + k));
      CrashDevice device(kBytes);
      load(device);
      device.arm(point, seed + point * 2 + k);
      {
        auto fs = Filesystem::mount(device);
        ASSERT_TRUE(fs.has_value()) << fs.error().message;
        (void)(*fs)->unmount();
      }
      ASSERT_TRUE(device.crashed());
      auto crashed = device.crash_image();
      auto fs = expect_clean_holding(*crashed, m);
      ASSERT_NE(fs, nullptr);
      ++tested;
    }
  }
  std::fprintf(stderr, "%llu crash images of the fallback mount verified\n", static_cast<unsigned long long>(tested));
}

// Random workloads with checkpoints of both kinds and remounts; at random
// moments the newest checkpoint's roots are lost (in a private view, or on the
// device itself, which then goes on from the fallback): the files are always
// exactly the model's.
TEST(FallbackModel, RandomWorkloadsAgainstAMap) {
  const uint64_t seed = test_seed("FallbackModel.RandomWorkloadsAgainstAMap");
  Rng rng(seed);
  auto device = std::make_unique<MemoryDevice>(kBytes);
  ASSERT_TRUE(Filesystem::format(*device).has_value());
  Model m;
  uint64_t serial = 0;
  int fallbacks = 0;
  int in_place = 0;
  for (int round = 0; round < 30 && !::testing::Test::HasFailure(); ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    {
      auto fs = Filesystem::mount(*device);
      ASSERT_TRUE(fs.has_value()) << fs.error().message;
      expect_model(**fs, m);
      const int ops = 5 + static_cast<int>(rng.below(40));
      for (int i = 0; i < ops && !::testing::Test::HasFailure(); ++i) {
        random_op(**fs, &m, rng, &serial);
        if (rng.below(15) == 0) {
          ASSERT_TRUE((*fs)->checkpoint(rng.below(3) == 0 ? CheckpointMode::Full : CheckpointMode::Auto).has_value());
        }
      }
      if (rng.below(4) == 0) {
        (*fs)->shutdown();  // as a crash leaves it: no unmount
      } else {
        ASSERT_TRUE((*fs)->unmount().has_value());
      }
    }
    if (!superblock_of(*device).has_previous() || rng.below(2) == 0) continue;
    if (rng.below(3) == 0) {
      damage_newest_roots(*device);  // on the device: the next round goes on from the fallback
      ++in_place;
    } else {
      auto view = MemoryDevice::copy_of(device->data(), kBytes);
      damage_newest_roots(*view);
      MountOptions ro;
      ro.mode = MountMode::ReadOnly;
      auto fs = Filesystem::mount(*view, ro);
      ASSERT_TRUE(fs.has_value()) << fs.error().message;
      expect_model(**fs, m);
    }
    ++fallbacks;
  }
  std::fprintf(stderr, "%d fallbacks (%d on the device itself), %zu files at the end\n", fallbacks, in_place,
               m.files.size());
  EXPECT_GT(fallbacks, 3);
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value());
  EXPECT_TRUE(report->clean()) << report->problems.front();
}

}  // namespace
}  // namespace poise
