// Bad images: each gives a clear error naming what is wrong, never a crash and
// never a silent mount; a damaged superblock copy is survived.
#include <gtest/gtest.h>

#include <cstring>

#include "base/random.h"
#include "device/memory_device.h"
#include "format/journal_format.h"
#include "format/ondisk.h"
#include "format/records.h"
#include "poise/filesystem.h"

namespace poise {
namespace {

constexpr uint64_t kBytes = 32ull << 20;
constexpr uint64_t kBlocks = kBytes / kBlockSize;

std::unique_ptr<MemoryDevice> formatted_with_a_file() {
  auto device = std::make_unique<MemoryDevice>(kBytes);
  EXPECT_TRUE(Filesystem::format(*device).has_value());
  auto fs = Filesystem::mount(*device);
  EXPECT_TRUE(fs.has_value());
  auto ino = (*fs)->create("/kept");
  std::string data = "committed data";
  EXPECT_TRUE((*fs)->write(*ino, 0, {reinterpret_cast<const std::byte*>(data.data()), data.size()}).has_value());
  EXPECT_TRUE((*fs)->unmount().has_value());
  return device;
}

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

std::string mount_error(Device& device, int* code) {
  auto fs = Filesystem::mount(device);
  if (fs.has_value()) return "";
  *code = fs.error().code;
  return fs.error().message;
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

TEST(Corruption, DamagedCheckpointBlockIsReportedByTheChecker) {
  auto device = formatted_with_a_file();
  // Find a checkpoint section block through the reverse map, then damage it.
  uint64_t victim = 0;
  for (const auto& r : metadata_records(*device)) {
    if (r.metadata_kind == MetadataKind::InodeTable) victim = r.device_offset_bytes;
  }
  ASSERT_NE(victim, 0u);
  device->data()[victim + 200] ^= std::byte{0x10};
  int code = 0;
  std::string message = mount_error(*device, &code);
  EXPECT_EQ(code, EBADMSG);
  EXPECT_NE(message.find("inode table"), std::string::npos) << message;
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value());
  ASSERT_FALSE(report->clean());
  EXPECT_NE(report->problems[0].find("checksum mismatch"), std::string::npos);
}

// Seeded random damage anywhere in the metadata: mount and the checker must
// never crash, and a successful mount must still pass its own check.
TEST(Corruption, RandomMetadataDamageNeverCrashes) {
  uint64_t seed = test_seed("Corruption.RandomMetadataDamageNeverCrashes");
  Rng rng(seed);
  auto pristine = formatted_with_a_file();
  std::vector<uint64_t> metadata_blocks;
  for (const auto& r : metadata_records(*pristine)) {
    if (r.metadata_kind == MetadataKind::Journal) continue;
    for (uint64_t b = 0; b < r.length_bytes / kBlockSize; ++b) metadata_blocks.push_back(r.device_offset_bytes / kBlockSize + b);
  }
  ASSERT_GE(metadata_blocks.size(), 4u);
  int mounted = 0;
  for (int i = 0; i < 300; ++i) {
    auto device = MemoryDevice::copy_of(pristine->data(), kBytes);
    uint64_t block = metadata_blocks[rng.below(metadata_blocks.size())];
    for (int f = 0; f < 1 + static_cast<int>(rng.below(4)); ++f) {
      device->data()[block * kBlockSize + rng.below(kBlockSize)] = std::byte(rng.next());
    }
    if (std::getenv("POISE_TRACE") != nullptr) std::fprintf(stderr, "iteration %d: block %llu\n", i, (unsigned long long)block);
    auto report = Filesystem::check_device(*device);
    auto fs = Filesystem::mount(*device);
    if (fs.has_value()) {
      ++mounted;
      EXPECT_TRUE((*fs)->check().clean()) << "a mounted image must be consistent (seed " << seed << ")";
    } else {
      int c = fs.error().code;
      EXPECT_TRUE(c == EUCLEAN || c == EBADMSG || c == ENOTSUP) << fs.error().message;
    }
  }
  std::fprintf(stderr, "%d of 300 damaged images still mounted (damage in a redundant superblock copy)\n", mounted);
  EXPECT_LT(mounted, 300) << "damage to the checkpoint must be detected";
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {

// A device whose journal holds `ops` committed transactions (one mkdir each)
// that no checkpoint has absorbed: the filesystem stopped as if the power went.
std::unique_ptr<MemoryDevice> journal_with_transactions(int ops, uint64_t* journal_offset) {
  auto device = std::make_unique<MemoryDevice>(kBytes);
  EXPECT_TRUE(Filesystem::format(*device).has_value());
  auto fs = Filesystem::mount(*device);
  EXPECT_TRUE(fs.has_value());
  for (const auto& r : *(*fs)->fsmap(0, kBytes)) {
    if (r.owner == OwnerKind::Metadata && r.metadata_kind == MetadataKind::Journal) *journal_offset = r.device_offset_bytes;
  }
  for (int i = 1; i <= ops; ++i) EXPECT_TRUE((*fs)->mkdir("/d" + std::to_string(i)).has_value());
  (*fs)->shutdown();  // no checkpoint: the journal is all there is
  return device;
}

// The byte offset (in the device) of the sealed transaction with this lsn.
uint64_t transaction_at(const MemoryDevice& device, uint64_t journal_offset, uint64_t lsn) {
  for (uint64_t at = 0; at < (1u << 20); at += format::kTxAlign) {
    format::TxHeader h;
    std::memcpy(&h, device.data() + journal_offset + at, sizeof h);
    if (h.magic.get() == format::kTxMagic && h.self_offset.get() == at && h.lsn.get() == lsn) return journal_offset + at;
  }
  ADD_FAILURE() << "no transaction " << lsn;
  return 0;
}

TEST(Corruption, ADamagedTransactionBeforeValidOnesIsNeverSilent) {
  uint64_t journal = 0;
  auto device = journal_with_transactions(4, &journal);
  uint64_t tx2 = transaction_at(*device, journal, 2);
  device->data()[tx2 + sizeof(format::TxHeader) + 3] ^= std::byte{0x40};  // one bit of its payload
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
  uint64_t journal = 0;
  auto device = journal_with_transactions(4, &journal);
  uint64_t tx4 = transaction_at(*device, journal, 4);
  device->data()[tx4 + sizeof(format::TxHeader) + 3] ^= std::byte{0x40};  // a torn tail: the crash case
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

// Appends a well-formed, checksummed transaction after the journal's last one:
// damage that no checksum can see, as a bug or a hostile writer would leave it.
void append_transaction(MemoryDevice& device, uint64_t journal, uint64_t last_lsn, const format::TxEncoder& tx) {
  uint64_t at = transaction_at(device, journal, last_lsn);
  format::TxHeader h;
  std::memcpy(&h, device.data() + at, sizeof h);
  uint64_t next = at - journal + (sizeof h + h.payload_bytes.get() + format::kTxAlign - 1) / format::kTxAlign * format::kTxAlign;
  std::vector<std::byte> image = tx.seal(h.generation.get(), last_lsn + 1, next);
  device.write(journal + next, image.data(), image.size());
}

TEST(Corruption, ADirectoryCycleIsRefusedBeforeAnythingCanHang) {
  uint64_t journal = 0;
  auto device = journal_with_transactions(2, &journal);  // /d1 and /d2, inodes 2 and 3
  format::TxEncoder tx;
  // /d1 moves under /d2 and /d2 under /d1: a loop that no path from the root reaches.
  tx.add(format::DirentRemoveRecord{1, "d1"});
  tx.add(format::DirentRemoveRecord{1, "d2"});
  tx.add(format::DirentRecord{3, 2, "loop1"});
  tx.add(format::DirentRecord{2, 3, "loop2"});
  tx.add(format::InodeCore{1, format::kModeDirectory | 0755, 2, 0, 0, 0, 0, 0, 0});
  tx.add(format::InodeCore{2, format::kModeDirectory | 0755, 3, 0, 0, 0, 0, 0, 0});
  tx.add(format::InodeCore{3, format::kModeDirectory | 0755, 3, 0, 0, 0, 0, 0, 0});
  append_transaction(*device, journal, 2, tx);
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
  uint64_t journal = 0;
  auto device = std::make_unique<MemoryDevice>(kBytes);
  ASSERT_TRUE(Filesystem::format(*device).has_value());
  {
    auto fs = Filesystem::mount(*device);
    ASSERT_TRUE(fs.has_value());
    for (const auto& r : *(*fs)->fsmap(0, kBytes)) {
      if (r.owner == OwnerKind::Metadata && r.metadata_kind == MetadataKind::Journal) journal = r.device_offset_bytes;
    }
    ASSERT_TRUE((*fs)->create("/f").has_value());              // lsn 1, inode 2
    ASSERT_TRUE((*fs)->link("/f", "/second-name").has_value());  // lsn 2
    (*fs)->shutdown();
  }
  format::TxEncoder tx;
  tx.add(format::InodeCore{2, format::kModeRegular | 0644, 1, 0, 0, 0, 0, 0, 0});  // one link, two names
  append_transaction(*device, journal, 2, tx);
  int code = 0;
  std::string message = mount_error(*device, &code);
  EXPECT_EQ(code, EUCLEAN) << message;
  EXPECT_NE(message.find("link count"), std::string::npos) << message;
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {

// On an emulated device a torn transaction followed by valid ones is what a
// machine crash before a sync leaves: the log ends there with a note that check
// keeps reporting, and the transactions past the gap never come back, not even
// after new ones are written over the gap and the image is mounted again.
TEST(Corruption, AJournalGapOnAnEmulatedDeviceEndsTheLogWithANoteAndStaysEnded) {
  uint64_t journal = 0;
  auto memory = journal_with_transactions(4, &journal);  // /d1 .. /d4
  uint64_t tx2 = transaction_at(*memory, journal, 2);
  memory->data()[tx2 + sizeof(format::TxHeader) + 3] ^= std::byte{0x40};
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

}  // namespace
}  // namespace poise
