// Bad images: each gives a clear error naming what is wrong, never a crash and
// never a silent mount; a damaged superblock copy is survived.
#include <gtest/gtest.h>

#include <cstring>

#include "base/random.h"
#include "device/crash_device.h"
#include "device/memory_device.h"
#include "format/journal_format.h"
#include "format/ondisk.h"
#include "format/records.h"
#include "format/superblock.h"
#include "format/block.h"
#include "format/checkpoint_format.h"

#include <functional>

#include "image_surgery.h"
#include "poise/filesystem.h"

namespace poise {
namespace {
using namespace surgery;  // NOLINT(google-build-using-namespace)

// The metadata blocks of the current checkpoint, found through the reverse map
// of a read-only mount (which writes nothing, so they stay current).
std::vector<FsmapRecord> metadata_records(Device& device) {
  MountOptions ro;
  ro.mode = MountMode::ReadOnly;
  auto fs = Filesystem::mount(device, ro);
  EXPECT_TRUE(fs.has_value());
  std::vector<FsmapRecord> out;
  auto map = (*fs)->fsmap(0, kBytes);
  EXPECT_TRUE(map.has_value());
  for (const auto& r : *map) {
    if (r.owner == OwnerKind::Metadata) out.push_back(r);
  }
  return out;
}

TEST(Corruption, OneDamagedSuperblockCopyIsSurvivedAndRepaired) {
  auto device = formatted_with_a_file();
  device->data()[100] ^= std::byte{0xFF};  // primary superblock
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value());
  EXPECT_TRUE(report->clean());
  ASSERT_FALSE(report->notes.empty());
  EXPECT_NE(report->notes[0].find("checksum"), std::string::npos) << report->notes[0];
  auto fs = Filesystem::mount(*device);  // a read-write mount rewrites both copies
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  EXPECT_TRUE((*fs)->check().clean());
  ASSERT_TRUE((*fs)->unmount().has_value());
  auto again = Filesystem::check_device(*device);
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(again->notes.empty());
}

TEST(Corruption, BothSuperblocksDamagedIsAChecksumError) {
  auto device = formatted_with_a_file();
  device->data()[100] ^= std::byte{1};
  device->data()[(kBlocks - 1) * kBlockSize + 100] ^= std::byte{1};
  int code = 0;
  std::string message = mount_error(*device, &code);
  EXPECT_EQ(code, EBADMSG);
  EXPECT_NE(message.find("primary superblock"), std::string::npos) << message;
  EXPECT_NE(message.find("secondary superblock"), std::string::npos) << message;
}

TEST(Corruption, ForeignImageIsNotPoise) {
  MemoryDevice device(kBytes);
  std::memset(device.data(), 0x5A, 1 << 20);
  int code = 0;
  std::string message = mount_error(device, &code);
  EXPECT_EQ(code, EUCLEAN);
  EXPECT_NE(message.find("not a poise filesystem"), std::string::npos) << message;
}

TEST(Corruption, TruncatedImageSaysSo) {
  auto device = formatted_with_a_file();
  auto shorter = MemoryDevice::copy_of(device->data(), kBytes / 2);
  int code = 0;
  std::string message = mount_error(*shorter, &code);
  EXPECT_EQ(code, EUCLEAN);
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;
}

TEST(Corruption, TooSmallDevice) {
  MemoryDevice device(8 << 20);
  auto formatted = Filesystem::format(device);
  ASSERT_FALSE(formatted.has_value());
  EXPECT_EQ(formatted.error().code, EINVAL);
  EXPECT_NE(formatted.error().message.find("16 MiB"), std::string::npos);
}

TEST(Corruption, ADamagedCheckpointBlockInOneCopyIsSurvivedAndRewritten) {
  auto device = formatted_with_a_file();
  // The inode table's blocks in both copies, through the reverse map.
  std::vector<uint64_t> tables;
  for (const auto& r : metadata_records(*device)) {
    if (r.metadata_kind == MetadataKind::InodeTable) tables.push_back(r.device_offset_bytes);
  }
  ASSERT_EQ(tables.size(), 2u) << "format version 2 keeps two copies of the checkpoint";
  device->data()[tables[0] + 200] ^= std::byte{0x10};
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value());
  EXPECT_TRUE(report->clean()) << report->problems.front();
  bool noted = false;
  for (const auto& n : report->notes) noted |= n.find("checkpoint copy ") != std::string::npos;
  EXPECT_TRUE(noted) << "check names the damaged copy";
  {
    auto fs = Filesystem::mount(*device);  // read-write: writes a new checkpoint, both copies whole
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    EXPECT_EQ(read_kept(**fs), "committed data");
    ASSERT_TRUE((*fs)->unmount().has_value());
  }
  auto again = Filesystem::check_device(*device);
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(again->clean());
  EXPECT_TRUE(again->notes.empty()) << again->notes.front();
}

TEST(Corruption, TheSameCheckpointBlockDamagedInBothCopiesIsAChecksumError) {
  auto device = formatted_with_a_file();
  for (const auto& r : metadata_records(*device)) {
    if (r.metadata_kind == MetadataKind::InodeTable) device->data()[r.device_offset_bytes + 200] ^= std::byte{0x10};
  }
  int code = 0;
  std::string message = mount_error(*device, &code);
  EXPECT_EQ(code, EBADMSG);
  EXPECT_NE(message.find("inode table"), std::string::npos) << message;
  EXPECT_NE(message.find("copy 2"), std::string::npos) << "both copies are named: " << message;
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value());
  ASSERT_FALSE(report->clean());
  EXPECT_NE(report->problems[0].find("checksum mismatch"), std::string::npos);
}

// Every metadata block at rest damaged alone (seeded random bytes): survived
// with nothing lost. Then a second block as well: mount and the checker never
// crash, and a mounted image passes its own check.
TEST(Corruption, AnySingleDamagedMetadataBlockIsSurvivedAndTwoNeverCrash) {
  uint64_t seed = test_seed("Corruption.AnySingleDamagedMetadataBlockIsSurvivedAndTwoNeverCrash");
  Rng rng(seed);
  auto pristine = formatted_with_a_file();
  std::vector<uint64_t> metadata_blocks;
  for (const auto& r : metadata_records(*pristine)) {
    // Of the journal, the block holding its transaction (the rest is empty).
    const uint64_t blocks = r.metadata_kind == MetadataKind::Journal ? 1 : r.length_bytes / kBlockSize;
    for (uint64_t b = 0; b < blocks; ++b) metadata_blocks.push_back(r.device_offset_bytes / kBlockSize + b);
  }
  ASSERT_GE(metadata_blocks.size(), 12u) << "superblocks, journals, and roots and four sections in two copies";
  auto damage = [&](MemoryDevice& device, uint64_t block) {
    for (int f = 0; f < 1 + static_cast<int>(rng.below(4)); ++f) {
      device.data()[block * kBlockSize + rng.below(kBlockSize)] ^= std::byte(1 + rng.below(255));
    }
  };
  for (uint64_t block : metadata_blocks) {
    auto device = MemoryDevice::copy_of(pristine->data(), kBytes);
    damage(*device, block);
    auto report = Filesystem::check_device(*device);
    ASSERT_TRUE(report.has_value()) << "block " << block << " (seed " << seed << "): " << report.error().message;
    EXPECT_TRUE(report->clean()) << "block " << block << " (seed " << seed << "): " << report->problems.front();
    auto fs = Filesystem::mount(*device);
    ASSERT_TRUE(fs.has_value()) << "block " << block << " (seed " << seed << "): " << fs.error().message;
    EXPECT_EQ(read_kept(**fs), "committed data") << "block " << block << " (seed " << seed << ")";
    EXPECT_TRUE((*fs)->stat("/journaled").has_value()) << "block " << block << " (seed " << seed << ")";
    EXPECT_TRUE((*fs)->stat("/in-delta").has_value()) << "block " << block << " (seed " << seed << ")";
    EXPECT_TRUE((*fs)->check().clean());
  }
  int mounted = 0;
  for (int i = 0; i < 200; ++i) {
    auto device = MemoryDevice::copy_of(pristine->data(), kBytes);
    damage(*device, metadata_blocks[rng.below(metadata_blocks.size())]);
    damage(*device, metadata_blocks[rng.below(metadata_blocks.size())]);
    auto report = Filesystem::check_device(*device);
    auto fs = Filesystem::mount(*device);
    if (fs.has_value()) {
      ++mounted;
      EXPECT_TRUE((*fs)->check().clean()) << "a mounted image must be consistent (seed " << seed << ")";
      EXPECT_EQ(read_kept(**fs), "committed data") << "seed " << seed;
    } else {
      int c = fs.error().code;
      EXPECT_TRUE(c == EUCLEAN || c == EBADMSG || c == ENOTSUP) << fs.error().message;
    }
  }
  std::fprintf(stderr, "%d of 200 images with two damaged metadata blocks still mounted (seed %llu)\n", mounted,
               static_cast<unsigned long long>(seed));
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {
using namespace surgery;  // NOLINT(google-build-using-namespace)

TEST(Corruption, ADamagedTransactionInOneJournalCopyIsReadFromTheOther) {
  std::vector<uint64_t> journals;
  auto device = journal_with_transactions(4, &journals);
  damage_transaction(*device, {journals[0]}, 2);
  damage_transaction(*device, {journals[1]}, 3);
  auto fs = Filesystem::mount(*device);
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  for (int i = 1; i <= 4; ++i) EXPECT_TRUE((*fs)->stat("/d" + std::to_string(i)).has_value()) << i;
  CheckReport report = (*fs)->check();
  EXPECT_TRUE(report.clean());
  bool noted = false;
  for (const auto& n : report.notes) noted |= n.find("transaction 2") != std::string::npos;
  EXPECT_TRUE(noted) << "check says which transaction came from copy 2";
}

TEST(Corruption, ADamagedTransactionBeforeValidOnesIsNeverSilent) {
  std::vector<uint64_t> journals;
  auto device = journal_with_transactions(4, &journals);
  damage_transaction(*device, journals, 2);  // one bit of its payload, in both copies
  int code = 0;
  std::string message = mount_error(*device, &code);
  EXPECT_EQ(code, EUCLEAN) << message;
  EXPECT_NE(message.find("transaction 2"), std::string::npos) << message;
  EXPECT_NE(message.find("transaction 3"), std::string::npos) << "the message names the one that follows: " << message;
  MountOptions ro;
  ro.mode = MountMode::ReadOnly;
  auto read_only = Filesystem::mount(*device, ro);
  EXPECT_FALSE(read_only.has_value()) << "a read-only mount would show the state without transactions 2..4";
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value());
  EXPECT_FALSE(report->clean()) << "check must not call this image clean";
}

TEST(Corruption, OnlyTheLastTransactionMayBeTorn) {
  std::vector<uint64_t> journals;
  auto device = journal_with_transactions(4, &journals);
  damage_transaction(*device, journals, 4);  // a torn tail in both copies: the crash case
  auto fs = Filesystem::mount(*device);
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  for (int i = 1; i <= 3; ++i) EXPECT_TRUE((*fs)->stat("/d" + std::to_string(i)).has_value()) << i;
  EXPECT_FALSE((*fs)->stat("/d4").has_value()) << "the torn transaction is not applied";
  EXPECT_TRUE((*fs)->check().clean());
  // And the journal keeps working after the torn tail: later work survives a remount.
  ASSERT_TRUE((*fs)->mkdir("/after").has_value());
  (*fs)->shutdown();
  fs->reset();
  auto again = Filesystem::mount(*device);
  ASSERT_TRUE(again.has_value()) << again.error().message;
  EXPECT_TRUE((*again)->stat("/after").has_value());
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {
using namespace surgery;  // NOLINT(google-build-using-namespace)

// /d1 (inode 2) moved under /d2 (inode 3) and /d2 under /d1 by a checksummed
// transaction: a loop that no path from the root reaches.
std::unique_ptr<MemoryDevice> image_with_a_directory_cycle() {
  std::vector<uint64_t> journals;
  auto device = journal_with_transactions(2, &journals);
  format::TxEncoder tx;
  tx.add(format::DirentRemoveRecord{1, "d1"});
  tx.add(format::DirentRemoveRecord{1, "d2"});
  tx.add(format::DirentRecord{3, 2, "loop1"});
  tx.add(format::DirentRecord{2, 3, "loop2"});
  tx.add(format::InodeCore{1, format::kModeDirectory | 0755, 2, 0, 0, 0, 0, 0, 0});
  tx.add(format::InodeCore{2, format::kModeDirectory | 0755, 3, 0, 0, 0, 0, 0, 0});
  tx.add(format::InodeCore{3, format::kModeDirectory | 0755, 3, 0, 0, 0, 0, 0, 0});
  append_transaction(*device, journals, 2, tx);
  return device;
}

TEST(Corruption, ADirectoryCycleIsRefusedBeforeAnythingCanHang) {
  auto device = image_with_a_directory_cycle();
  int code = 0;
  std::string message = mount_error(*device, &code);
  EXPECT_EQ(code, EUCLEAN) << message;
  EXPECT_NE(message.find("cycle"), std::string::npos) << message;
  MountOptions ro;
  ro.mode = MountMode::ReadOnly;
  auto read_only = Filesystem::mount(*device, ro);
  ASSERT_TRUE(read_only.has_value()) << "read-only, the data can still be copied out: " << read_only.error().message;
  EXPECT_TRUE((*read_only)->readdir("/")->empty());
  read_only->reset();
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value());
  EXPECT_FALSE(report->clean());
}

TEST(Corruption, ALinkCountBelowTheNamesIsRefused) {
  std::vector<uint64_t> journals;
  auto device = journaled_image([](Filesystem& fs) {
    EXPECT_TRUE(fs.create("/f").has_value());              // lsn 1, inode 2
    EXPECT_TRUE(fs.link("/f", "/second-name").has_value());  // lsn 2
  }, &journals);
  format::TxEncoder tx;
  tx.add(format::InodeCore{2, format::kModeRegular | 0644, 1, 0, 0, 0, 0, 0, 0});  // one link, two names
  append_transaction(*device, journals, 2, tx);
  int code = 0;
  std::string message = mount_error(*device, &code);
  EXPECT_EQ(code, EUCLEAN) << message;
  EXPECT_NE(message.find("link count"), std::string::npos) << message;
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {
using namespace surgery;  // NOLINT(google-build-using-namespace)

// On an emulated device a torn transaction followed by valid ones is what a
// machine crash before a sync leaves: the log ends there with a note that check
// keeps reporting, and the transactions past the gap never come back, not even
// after new ones are written over the gap and the image is mounted again.
TEST(Corruption, AJournalGapOnAnEmulatedDeviceEndsTheLogWithANoteAndStaysEnded) {
  std::vector<uint64_t> journals;
  auto memory = journal_with_transactions(4, &journals);  // /d1 .. /d4
  damage_transaction(*memory, journals, 2);
  auto device = MemoryDevice::copy_of(memory->data(), kBytes, PersistenceDomain::PageCache);
  {
    auto fs = Filesystem::mount(*device);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    EXPECT_TRUE((*fs)->stat("/d1").has_value());
    for (const char* gone : {"/d2", "/d3", "/d4"}) EXPECT_FALSE((*fs)->stat(gone).has_value()) << gone;
    CheckReport report = (*fs)->check();
    EXPECT_TRUE(report.clean());
    bool noted = false;
    for (const auto& n : report.notes) noted |= n.find("were not applied") != std::string::npos;
    EXPECT_TRUE(noted) << "the mount must say what it did not apply";
    ASSERT_EQ((*fs)->mount_warnings().size(), 1u) << "and say it at once (the CLI prints it on every command)";
    EXPECT_NE((*fs)->mount_warnings()[0].find("from 2 on"), std::string::npos) << (*fs)->mount_warnings()[0];
    ASSERT_TRUE((*fs)->mkdir("/new").has_value());  // written where transaction 2 was
    (*fs)->shutdown();
  }
  auto again = Filesystem::mount(*device);
  ASSERT_TRUE(again.has_value()) << again.error().message;
  EXPECT_TRUE((*again)->stat("/new").has_value());
  for (const char* gone : {"/d2", "/d3", "/d4"}) {
    EXPECT_FALSE((*again)->stat(gone).has_value()) << gone << " came back from beyond the gap";
  }
  EXPECT_TRUE((*again)->check().clean());
}

// fsync on an emulated device writes the journal back in both copies: a power
// cut right after it, then damage to copy 1, still finds the transaction in
// copy 2 (and the write-back marks claim nothing only one copy holds).
TEST(Corruption, FsyncWritesBothJournalCopiesBack) {
  CrashDevice crash(kBytes, CrashDevice::Model::PageCache);
  ASSERT_TRUE(Filesystem::format(crash).has_value());
  std::vector<uint64_t> journals;
  std::unique_ptr<MemoryDevice> image;
  {
    auto fs = Filesystem::mount(crash);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    journals = journal_copies(**fs);
    auto f = (*fs)->open("/fsynced", OpenFlags::Create);
    ASSERT_TRUE(f.has_value());
    ASSERT_TRUE(f->fsync().has_value());
    image = crash.durable_image();  // the power goes now
    f->close();
    (*fs)->shutdown();
  }
  damage_transaction(*image, {journals[0]}, 1);
  auto fs = Filesystem::mount(*image);
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  EXPECT_TRUE((*fs)->stat("/fsynced").has_value()) << "copy 2 of the fsynced transaction was not on the image";
}

// A gap is a crash's lost page only if that page had never been written back to
// the image: a later transaction that says the log had been written back past
// the bad one proves damage, which is refused on an emulated device too, never
// taken for the end of the log.
TEST(Corruption, AGapBeforeTheLogWasWrittenBackIsDamageOnAnEmulatedDeviceToo) {
  auto make = [](std::vector<uint64_t>* journals) {
    auto memory = std::make_unique<MemoryDevice>(kBytes);
    EXPECT_TRUE(Filesystem::format(*memory).has_value());
    auto device = MemoryDevice::copy_of(memory->data(), kBytes, PersistenceDomain::PageCache);
    auto fs = Filesystem::mount(*device);
    EXPECT_TRUE(fs.has_value());
    *journals = journal_copies(**fs);
    EXPECT_TRUE((*fs)->mkdir("/d1").has_value());  // lsn 1
    EXPECT_TRUE((*fs)->mkdir("/d2").has_value());  // lsn 2
    EXPECT_TRUE((*fs)->sync().has_value());        // 1 and 2 are on the image
    EXPECT_TRUE((*fs)->mkdir("/d3").has_value());  // lsn 3, which says so
    EXPECT_TRUE((*fs)->mkdir("/d4").has_value());  // lsn 4
    (*fs)->shutdown();
    return device;
  };
  std::vector<uint64_t> journals;
  auto device = make(&journals);
  damage_transaction(*device, journals, 2);
  int code = 0;
  std::string message = mount_error(*device, &code);
  EXPECT_EQ(code, EUCLEAN) << message;
  EXPECT_NE(message.find("transaction 3 says it had been written back"), std::string::npos) << message;
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value());
  EXPECT_FALSE(report->clean()) << "check must not call this image clean";
  auto repaired = Filesystem::repair(*device);
  ASSERT_TRUE(repaired.has_value()) << repaired.error().message;
  EXPECT_TRUE(mentions(repaired->lost, "journal transaction 3 lies past the damage"))
      << (repaired->lost.empty() ? "nothing lost" : repaired->lost.front());
  // An unmount writes everything back and marks the log's end: damage to its
  // last real transaction is refused too, never taken for a torn tail.
  {
    auto memory = std::make_unique<MemoryDevice>(kBytes);
    ASSERT_TRUE(Filesystem::format(*memory).has_value());
    auto unmounted = MemoryDevice::copy_of(memory->data(), kBytes, PersistenceDomain::PageCache);
    {
      auto fs = Filesystem::mount(*unmounted);
      ASSERT_TRUE(fs.has_value()) << fs.error().message;
      journals = journal_copies(**fs);
      ASSERT_TRUE((*fs)->mkdir("/u1").has_value());  // lsn 1
      ASSERT_TRUE((*fs)->mkdir("/u2").has_value());  // lsn 2, the last real one
      ASSERT_TRUE((*fs)->unmount().has_value());     // lsn 3: the mark
    }
    damage_transaction(*unmounted, journals, 2);
    code = 0;
    message = mount_error(*unmounted, &code);
    EXPECT_EQ(code, EUCLEAN) << message;
    EXPECT_NE(message.find("transaction 3 says it had been written back"), std::string::npos) << message;
  }
  // Damage past the last write-back is what a crash can leave: the log ends
  // there, with the note.
  auto crashed = make(&journals);
  damage_transaction(*crashed, journals, 3);
  auto fs = Filesystem::mount(*crashed);
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  EXPECT_TRUE((*fs)->stat("/d2").has_value());
  EXPECT_FALSE((*fs)->stat("/d4").has_value());
  ASSERT_EQ((*fs)->mount_warnings().size(), 1u);
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {
using namespace surgery;  // NOLINT(google-build-using-namespace)

// Memory failed (poison) under any one metadata block at rest: check, fsmap and
// a read-only mount work and lose nothing; a read-write mount fences the block,
// writes the metadata elsewhere, and the block stays bad after a remount.
TEST(Corruption, AnyPoisonedMetadataBlockIsSurvived) {
  auto pristine = formatted_with_a_file();
  std::vector<uint64_t> blocks;
  for (const auto& r : metadata_records(*pristine)) {
    const uint64_t n = r.metadata_kind == MetadataKind::Journal ? 1 : r.length_bytes / kBlockSize;
    for (uint64_t b = 0; b < n; ++b) blocks.push_back(r.device_offset_bytes / kBlockSize + b);
  }
  ASSERT_GE(blocks.size(), 12u);
  for (uint64_t block : blocks) {
    SCOPED_TRACE("block " + std::to_string(block));
    auto device = MemoryDevice::copy_of(pristine->data(), kBytes);
    ASSERT_TRUE(device->inject_poison(block * kBlockSize, kBlockSize).has_value());
    auto report = Filesystem::check_device(*device);
    ASSERT_TRUE(report.has_value()) << report.error().message;
    EXPECT_TRUE(report->clean()) << report->problems.front();
    {
      MountOptions ro;
      ro.mode = MountMode::ReadOnly;
      auto fs = Filesystem::mount(*device, ro);
      ASSERT_TRUE(fs.has_value()) << fs.error().message;
      EXPECT_EQ(read_kept(**fs), "committed data");
      auto map = (*fs)->fsmap(0, kBytes);
      ASSERT_TRUE(map.has_value()) << map.error().message;
      bool bad = false;
      for (const auto& r : *map) bad |= r.owner == OwnerKind::Bad && r.device_offset_bytes == block * kBlockSize;
      EXPECT_TRUE(bad) << "fsmap shows the failed block";
    }
    {
      auto fs = Filesystem::mount(*device);
      ASSERT_TRUE(fs.has_value()) << fs.error().message;
      EXPECT_EQ(read_kept(**fs), "committed data");
      EXPECT_TRUE((*fs)->stat("/journaled").has_value());
      ASSERT_TRUE((*fs)->mkdir("/later").has_value());
      ASSERT_TRUE((*fs)->checkpoint().has_value());
      ASSERT_TRUE((*fs)->unmount().has_value());
    }
    auto fs = Filesystem::mount(*device);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    EXPECT_TRUE((*fs)->stat("/later").has_value());
    CheckReport after = (*fs)->check();
    EXPECT_TRUE(after.clean()) << after.problems.front();
    EXPECT_GE(after.bad_blocks, 1u) << "the failed block stays fenced off";
  }
}

// A version 1 image (one copy of everything) with files in its checkpoint and
// in its journal.
std::unique_ptr<MemoryDevice> version_one_image(uint64_t bytes, bool fill) {
  auto device = std::make_unique<MemoryDevice>(bytes);
  FormatOptions v1;
  v1.format_version = format::kFormatVersionSingleCopy;
  EXPECT_TRUE(Filesystem::format(*device, v1).has_value());
  MountOptions keep;
  keep.upgrade_format = false;
  auto fs = Filesystem::mount(*device, keep);
  EXPECT_TRUE(fs.has_value());
  auto ino = (*fs)->create("/kept");
  std::string data = "committed data";
  EXPECT_TRUE((*fs)->write(*ino, 0, {reinterpret_cast<const std::byte*>(data.data()), data.size()}).has_value());
  EXPECT_TRUE((*fs)->checkpoint().has_value());
  EXPECT_TRUE((*fs)->mkdir("/journaled").has_value());
  if (fill) {
    auto big = (*fs)->create("/big");
    std::string chunk(1 << 20, 'b');
    for (uint64_t at = 0;; at += chunk.size()) {
      if (!(*fs)->write(*big, at, {reinterpret_cast<const std::byte*>(chunk.data()), chunk.size()}).has_value()) break;
    }
  }
  (*fs)->shutdown();  // no checkpoint: the journal holds /journaled
  return device;
}

TEST(Corruption, AVersionOneImageIsReadAndUpgradedLosingNothing) {
  auto device = version_one_image(kBytes, false);
  EXPECT_EQ(superblock_of(*device).version, format::kFormatVersionSingleCopy);
  EXPECT_FALSE(superblock_of(*device).has_copies());
  {
    MountOptions ro;
    ro.mode = MountMode::ReadOnly;
    auto fs = Filesystem::mount(*device, ro);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    EXPECT_EQ(read_kept(**fs), "committed data");
    EXPECT_TRUE((*fs)->stat("/journaled").has_value());
    EXPECT_TRUE((*fs)->check().clean());
  }
  EXPECT_EQ(superblock_of(*device).version, format::kFormatVersionSingleCopy) << "a read-only mount writes nothing";
  {
    auto fs = Filesystem::mount(*device);  // read-write: upgrades
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    EXPECT_EQ(superblock_of(*device).version, format::kFormatVersion);
    EXPECT_TRUE(superblock_of(*device).has_copies());
    EXPECT_EQ(journal_copies(**fs).size(), 2u);
    EXPECT_EQ(read_kept(**fs), "committed data");
    EXPECT_TRUE((*fs)->stat("/journaled").has_value());
    EXPECT_TRUE((*fs)->check().clean());
    ASSERT_TRUE((*fs)->mkdir("/after").has_value());
    (*fs)->shutdown();
  }
  auto fs = Filesystem::mount(*device);
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  EXPECT_EQ(read_kept(**fs), "committed data");
  EXPECT_TRUE((*fs)->stat("/after").has_value());
  EXPECT_TRUE((*fs)->check().clean());
}

TEST(Corruption, AFullVersionOneImageStaysVersionOneAndMounts) {
  auto device = version_one_image(16ull << 20, true);
  auto fs = Filesystem::mount(*device);
  ASSERT_TRUE(fs.has_value()) << "a read-write mount never fails for lack of space: " << fs.error().message;
  EXPECT_EQ(superblock_of(*device).version, format::kFormatVersionSingleCopy);
  EXPECT_EQ(read_kept(**fs), "committed data");
  CheckReport report = (*fs)->check();
  EXPECT_TRUE(report.clean());
  bool noted = false;
  for (const auto& n : report.notes) noted |= n.find("format version 1") != std::string::npos;
  EXPECT_TRUE(noted) << "check says the image was not upgraded";
  // Once there is room, the next read-write mount upgrades it.
  ASSERT_TRUE((*fs)->unlink("/big").has_value());
  ASSERT_TRUE((*fs)->unmount().has_value());
  auto again = Filesystem::mount(*device);
  ASSERT_TRUE(again.has_value()) << again.error().message;
  EXPECT_EQ(superblock_of(*device).version, format::kFormatVersion);
  EXPECT_EQ(read_kept(**again), "committed data");
  EXPECT_TRUE((*again)->check().clean());
}

}  // namespace
}  // namespace poise

// poise repair: each kind of damage the checker finds, repaired so that check is
// clean, a read-write mount works and nothing intact is lost.
namespace poise {
namespace {
using namespace surgery;  // NOLINT(google-build-using-namespace)

TEST(Repair, ACleanImageNeedsNothing) {
  auto device = formatted_with_a_file();
  auto r = Filesystem::repair(*device);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_TRUE(r->changes.empty()) << r->changes.front();
  EXPECT_TRUE(r->clean());
  expect_clean_and_mountable(*device);
  auto fs = Filesystem::mount(*device);
  EXPECT_EQ(read_kept(**fs), "committed data");
}

TEST(Repair, ADirectoryCycleMovesToLostAndFoundWithItsContents) {
  auto device = image_with_a_directory_cycle();
  ASSERT_FALSE(Filesystem::mount(*device).has_value());
  auto r = Filesystem::repair(*device);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_TRUE(r->clean()) << r->problems.front();
  EXPECT_TRUE(mentions(r->changes, "created /lost+found"));
  EXPECT_TRUE(mentions(r->changes, "moved inode 2"));
  expect_clean_and_mountable(*device);
  auto fs = Filesystem::mount(*device);
  ASSERT_TRUE(fs.has_value());
  // Both directories are reachable again: /lost+found/#2 and, inside it, loop2.
  EXPECT_TRUE((*fs)->stat("/lost+found/#2").has_value());
  EXPECT_TRUE((*fs)->stat("/lost+found/#2/loop2").has_value());
}

TEST(Repair, LinkCountsAreSetToTheNamesAndANamelessFileIsAdopted) {
  std::vector<uint64_t> journals;
  auto device = journaled_image([](Filesystem& fs) {
    EXPECT_TRUE(fs.create("/f").has_value());                // lsn 1, inode 2
    EXPECT_TRUE(fs.link("/f", "/second-name").has_value());  // lsn 2
    EXPECT_TRUE(fs.create("/g").has_value());                // lsn 3, inode 3
  }, &journals);
  format::TxEncoder tx;
  tx.add(format::InodeCore{2, format::kModeRegular | 0644, 1, 0, 0, 0, 0, 0, 0});  // one link, two names
  tx.add(format::DirentRemoveRecord{1, "g"});                                     // /g loses its only name
  append_transaction(*device, journals, 3, tx);
  ASSERT_FALSE(Filesystem::mount(*device).has_value());
  auto r = Filesystem::repair(*device);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_TRUE(r->clean()) << r->problems.front();
  EXPECT_TRUE(mentions(r->changes, "inode 2: link count 1 set to 2")) << r->changes.front();
  EXPECT_TRUE(mentions(r->changes, "moved inode 3 (a file with no name)"));
  expect_clean_and_mountable(*device);
  auto fs = Filesystem::mount(*device);
  EXPECT_EQ((*fs)->stat("/f")->nlink, 2u);
  EXPECT_TRUE((*fs)->stat("/lost+found/#3").has_value());
}

TEST(Repair, AJournalGapEndsTheLogAndNamesWhatWasLost) {
  std::vector<uint64_t> journals;
  auto device = journal_with_transactions(4, &journals);  // /d1 .. /d4 = inodes 2 .. 5
  damage_transaction(*device, journals, 2);
  ASSERT_FALSE(Filesystem::mount(*device).has_value());
  auto r = Filesystem::repair(*device);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_TRUE(r->clean()) << r->problems.front();
  ASSERT_FALSE(r->lost.empty());
  EXPECT_TRUE(mentions(r->lost, "journal transaction 3 lies past the damage")) << r->lost.front();
  EXPECT_TRUE(mentions(r->lost, "inodes 1, 4"));  // transaction 3 made /d3 (inode 4) in the root
  EXPECT_TRUE(mentions(r->lost, "journal transaction 4"));
  expect_clean_and_mountable(*device);
  auto fs = Filesystem::mount(*device);
  EXPECT_TRUE((*fs)->stat("/d1").has_value());
  EXPECT_FALSE((*fs)->stat("/d3").has_value());
  EXPECT_TRUE((*fs)->mkdir("/d2").has_value());
}

TEST(Repair, ADryRunWritesNothingAndReportsWhatTheRepairDoes) {
  std::vector<uint64_t> journals;
  auto device = journal_with_transactions(4, &journals);
  damage_transaction(*device, journals, 2);
  auto before = MemoryDevice::copy_of(device->data(), kBytes);
  RepairOptions dry;
  dry.dry_run = true;
  auto planned = Filesystem::repair(*device, dry);
  ASSERT_TRUE(planned.has_value()) << planned.error().message;
  EXPECT_FALSE(planned->lost.empty());
  EXPECT_EQ(std::memcmp(before->data(), device->data(), kBytes), 0) << "a dry run wrote to the device";
  auto done = Filesystem::repair(*device);
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(planned->changes, done->changes);
  EXPECT_EQ(planned->lost, done->lost);
}

// The review's cases: a taken name in /lost+found, more removals than one
// transaction holds, a cross-link beside a reflink of the same count.
TEST(Repair, ATakenNameInLostAndFoundGetsASuffix) {
  std::vector<uint64_t> journals;
  auto device = journaled_image([](Filesystem& fs) {
    EXPECT_TRUE(fs.mkdir("/lost+found").has_value());  // lsn 1, inode 2
    EXPECT_TRUE(fs.create("/g").has_value());          // lsn 2, inode 3
    EXPECT_TRUE(fs.create("/lost+found/#3").has_value());  // lsn 3, inode 4
  }, &journals);
  format::TxEncoder tx;
  tx.add(format::DirentRemoveRecord{1, "g"});  // /g (inode 3) loses its only name
  append_transaction(*device, journals, 3, tx);
  auto r = Filesystem::repair(*device);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_TRUE(r->clean()) << r->problems.front();
  EXPECT_TRUE(mentions(r->changes, "/lost+found/#3.1"));
  expect_clean_and_mountable(*device);
  auto fs = Filesystem::mount(*device);
  EXPECT_EQ((*fs)->stat("/lost+found/#3.1")->ino, InodeNumber(3));
  EXPECT_EQ((*fs)->stat("/lost+found/#3")->ino, InodeNumber(4));
}

TEST(Repair, ADirectoryWithMoreNamesThanOneTransactionHolds) {
  std::vector<uint64_t> journals;
  auto device = journaled_image([](Filesystem& fs) {
    EXPECT_TRUE(fs.mkdir("/d").has_value());  // lsn 1, inode 2
  }, &journals);
  // 1,100 more names of /d with 250-byte names: 300 KiB of removals.
  for (int t = 0; t < 2; ++t) {
    format::TxEncoder tx;
    for (int i = 0; i < 550; ++i) {
      std::string name = std::to_string(t * 550 + i);
      tx.add(format::DirentRecord{1, 2, name + std::string(250 - name.size(), 'n')});
    }
    append_transaction(*device, journals, 1 + t, tx);
  }
  auto r = Filesystem::repair(*device);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_TRUE(r->clean()) << r->problems.front();
  EXPECT_TRUE(mentions(r->changes, "1101 names; removed all but one"));
  expect_clean_and_mountable(*device);
}

// The two copies of the checkpoint lie half the data area apart, and damage to
// the second copy is found (and rewritten) as damage to the first is.
TEST(Corruption, TheCopiesLieApartAndDamageToCopyTwoIsFound) {
  auto device = formatted_with_a_file();
  format::SuperblockInfo sb = superblock_of(*device);
  const uint64_t area = sb.size_blocks - 1 - (sb.journal_start_block + sb.journal_blocks);
  const uint64_t apart = sb.checkpoint_copy_root_block > sb.checkpoint_root_block
                             ? sb.checkpoint_copy_root_block - sb.checkpoint_root_block
                             : sb.checkpoint_root_block - sb.checkpoint_copy_root_block;
  EXPECT_GE(apart, area / 4) << "roots at " << sb.checkpoint_root_block << " and " << sb.checkpoint_copy_root_block;
  // Copy 2's inode table, as its root lists it.
  auto root2 = format::decode_checkpoint_root(device->data() + sb.checkpoint_copy_root_block * kBlockSize,
                                              sb.checkpoint_copy_root_block, sb.checkpoint_generation,
                                              sb.journal_start_block + sb.journal_blocks, sb.size_blocks - 1);
  ASSERT_TRUE(root2.has_value()) << root2.error().message;
  const uint64_t copy2 = root2->sections[format::kSectionInodes].runs.at(0).start_block * kBlockSize;
  device->data()[copy2 + 300] ^= std::byte{4};
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value());
  EXPECT_TRUE(report->clean());
  EXPECT_TRUE(mentions(report->notes, "checkpoint copy 2")) << "damage to the copy not read must still be found";
  { auto fs = Filesystem::mount(*device); ASSERT_TRUE(fs.has_value()); }  // rewrites both copies
  auto again = Filesystem::check_device(*device);
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(again->notes.empty()) << again->notes.front();
}

TEST(Corruption, DamageToJournalCopyTwoIsFound) {
  std::vector<uint64_t> journals;
  auto device = journal_with_transactions(3, &journals);
  damage_transaction(*device, {journals[1]}, 2);
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value());
  EXPECT_TRUE(report->clean());
  EXPECT_TRUE(mentions(report->notes, "journal transaction 2")) << "damage to copy 2 must be found";
  EXPECT_TRUE(mentions(report->notes, "copy 2 is bad"));
}

TEST(Repair, AFileExtentOnMetadataIsUnmappedAndNamed) {
  auto device = formatted_with_a_file();  // /kept is inode 2
  const uint64_t journal_copy = superblock_of(*device).journal_copy_start_block;
  ASSERT_EQ(edit_extent_records(*device, 2, [&](format::DiskExtent* e) { e->dev_block.set(journal_copy + 5); }), 2);
  ASSERT_FALSE(Filesystem::mount(*device).has_value());
  auto r = Filesystem::repair(*device);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_TRUE(r->clean()) << r->problems.front();
  EXPECT_TRUE(mentions(r->lost, "inode 2: unmapped file blocks 0..1, which lay on the journal")) << r->lost.front();
  expect_clean_and_mountable(*device);
  auto fs = Filesystem::mount(*device);
  EXPECT_TRUE((*fs)->stat("/journaled").has_value());
}

}  // namespace
}  // namespace poise
