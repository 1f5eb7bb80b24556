// Sharing and cross-links: two files may share device blocks only as a reflink
// or a clone made them. The checkpoint's refcount records vouch for the sharing
// its extents show, the journal's sharing marks for the sharing made since (in
// the journal and in an incremental checkpoint's delta). Blocks two files claim
// with neither are a cross-link (an extent misdirected onto another file's
// blocks, every checksum valid): check finds it, a read-write mount refuses it,
// and repair keeps it as copy-on-write sharing.
#include <gtest/gtest.h>

#include "image_surgery.h"
#include "poise/filesystem.h"

namespace poise {
namespace {
using namespace surgery;  // NOLINT(google-build-using-namespace)

std::unique_ptr<MemoryDevice> image_with_a_reflink() {
  auto device = std::make_unique<MemoryDevice>(kBytes);
  EXPECT_TRUE(Filesystem::format(*device).has_value());
  auto fs = Filesystem::mount(*device);
  EXPECT_TRUE(fs.has_value());
  auto a = (*fs)->create("/a");
  std::string data(8192, 'a');
  EXPECT_TRUE((*fs)->write(*a, 0, {reinterpret_cast<const std::byte*>(data.data()), data.size()}).has_value());
  auto b = (*fs)->create("/b");
  EXPECT_TRUE((*fs)->reflink(*a, *b).has_value());
  EXPECT_TRUE((*fs)->checkpoint(CheckpointMode::Full).has_value());  // the sharing in the refcount records
  EXPECT_TRUE((*fs)->unmount().has_value());
  return device;
}

// Check's first problem is a cross-link naming each of `named`; a read-write
// mount refuses the image (EUCLEAN, naming the cross-link); a read-only one
// mounts, so that the data can be copied out (*read_only).
void expect_cross_link(MemoryDevice& device, const std::string& why, const std::vector<std::string>& named,
                       std::unique_ptr<Filesystem>* read_only) {
  auto report = Filesystem::check_device(device);
  ASSERT_TRUE(report.has_value()) << report.error().message;
  ASSERT_FALSE(report->clean()) << why;
  const std::string& p = report->problems[0];
  EXPECT_NE(p.find("cross-link"), std::string::npos) << p;
  for (const std::string& n : named) EXPECT_NE(p.find(n), std::string::npos) << p;
  int code = 0;
  std::string message = mount_error(device, &code);
  EXPECT_EQ(code, EUCLEAN) << message;
  EXPECT_NE(message.find("cross-link"), std::string::npos) << message;
  MountOptions ro;
  ro.mode = MountMode::ReadOnly;
  auto fs = Filesystem::mount(device, ro);
  ASSERT_TRUE(fs.has_value()) << "read-only, the data can be copied out: " << fs.error().message;
  *read_only = std::move(*fs);
}

// Two files claiming one block with valid checksums everywhere: a reflink has a
// refcount record, a misdirected extent has none. The checker tells them apart.
TEST(Corruption, ACrossLinkWithoutARefcountRecordIsFound) {
  auto device = image_with_a_reflink();
  auto clean = Filesystem::check_device(*device);
  ASSERT_TRUE(clean.has_value());
  EXPECT_TRUE(clean->clean()) << "a reflink is recorded sharing: " << clean->problems.front();
  EXPECT_EQ(clean->shared_blocks, 2u);
  edit_checkpoint_roots(*device, [](format::CheckpointRootInfo* root) {
    root->refcount_count = 0;
    root->sections[format::kSectionRefcounts] = format::SectionInfo{};
  });
  std::unique_ptr<Filesystem> read_only;
  expect_cross_link(*device, "two owners and no refcount record is a cross-link", {"inode 2", "inode 3"}, &read_only);
}

TEST(Corruption, ARefcountRecordWithoutSharingIsFound) {
  auto device = image_with_a_reflink();
  // Point /b's extent elsewhere (both copies, sealed again): /a alone holds the
  // blocks the refcount record says two files share.
  ASSERT_EQ(edit_extent_records(*device, 3, [](format::DiskExtent* e) { e->dev_block.set(e->dev_block.get() + 1000); }),
            2);
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value());
  ASSERT_FALSE(report->clean());
  bool named = false;
  for (const auto& p : report->problems) named |= p.find("refcount") != std::string::npos;
  EXPECT_TRUE(named) << report->problems[0];
}

TEST(Repair, ACrossLinkIsKeptAsCopyOnWriteSharing) {
  auto device = image_with_a_reflink();
  edit_checkpoint_roots(*device, [](format::CheckpointRootInfo* root) {
    root->refcount_count = 0;
    root->sections[format::kSectionRefcounts] = format::SectionInfo{};
  });
  ASSERT_FALSE(Filesystem::mount(*device).has_value());
  auto r = Filesystem::repair(*device);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_TRUE(r->clean()) << r->problems.front();
  EXPECT_TRUE(mentions(r->changes, "copy-on-write"));
  expect_clean_and_mountable(*device);
  auto fs = Filesystem::mount(*device);
  ASSERT_TRUE(fs.has_value());
  auto a = *(*fs)->lookup("/a");
  std::string x(4096, 'x');
  ASSERT_TRUE((*fs)->write(a, 0, {reinterpret_cast<const std::byte*>(x.data()), x.size()}).has_value());
  std::string b(8192, '\0');
  ASSERT_TRUE((*fs)->read(*(*fs)->lookup("/b"), 0, {reinterpret_cast<std::byte*>(b.data()), b.size()}).has_value());
  EXPECT_EQ(b, std::string(8192, 'a')) << "a write to one file no longer reaches the other";
}

TEST(Repair, ACrossLinkBesideAReflinkIsNamedAtItsOwnBlock) {
  auto device = std::make_unique<MemoryDevice>(kBytes);
  ASSERT_TRUE(Filesystem::format(*device).has_value());
  uint64_t a_third = 0;
  {
    auto fs = Filesystem::mount(*device);
    auto a = *(*fs)->create("/a");  // inode 2: three blocks
    std::string data(3 * 4096, 'a');
    ASSERT_TRUE((*fs)->write(a, 0, {reinterpret_cast<const std::byte*>(data.data()), data.size()}).has_value());
    auto b = *(*fs)->create("/b");  // inode 3 shares the first two by clone
    ASSERT_TRUE((*fs)->clone_range(a, 0, b, 0, 8192).has_value());
    auto c = *(*fs)->create("/c");  // inode 4: one block of its own
    ASSERT_TRUE((*fs)->write(c, 0, {reinterpret_cast<const std::byte*>(data.data()), 4096}).has_value());
    for (const auto& rec : *(*fs)->fsmap(0, kBytes)) {
      if (rec.owner == OwnerKind::File && rec.ino == a && rec.file_offset_bytes <= 8192 &&
          rec.file_offset_bytes + rec.length_bytes > 8192) {
        a_third = (rec.device_offset_bytes + (8192 - rec.file_offset_bytes)) / kBlockSize;
      }
    }
    ASSERT_TRUE((*fs)->checkpoint(CheckpointMode::Full).has_value());
    ASSERT_TRUE((*fs)->unmount().has_value());
  }
  ASSERT_NE(a_third, 0u);
  // /c's extent now points at /a's third block, beside the shared two (both copies, sealed again).
  ASSERT_EQ(edit_extent_records(*device, 4, [&](format::DiskExtent* e) { e->dev_block.set(a_third); }), 2);
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value());
  ASSERT_FALSE(report->clean());
  const std::string& p = report->problems[0];
  EXPECT_NE(p.find("device block " + std::to_string(a_third)), std::string::npos) << p;
  EXPECT_NE(p.find("cross-link"), std::string::npos) << p;
  EXPECT_NE(p.find("inode 4"), std::string::npos) << p;
}

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::string read_all(Filesystem& fs, const std::string& path, size_t n) {
  std::string out(n, '\0');
  auto ino = fs.lookup(path);
  if (!ino.has_value()) return "(missing)";
  auto got = fs.read(*ino, 0, {reinterpret_cast<std::byte*>(out.data()), out.size()});
  if (!got.has_value()) return "(unreadable: " + got.error().message + ")";
  out.resize(*got);
  return out;
}

// /a (inode 2) and /c (inode 3), one block each of their own ('a's and 'c's),
// all of it in the journal only. *a_block: /a's device block.
void make_two_files(Filesystem& fs, uint64_t* a_block) {
  auto a = *fs.create("/a");
  EXPECT_TRUE(fs.write(a, 0, bytes_of(std::string(4096, 'a'))).has_value());
  auto c = *fs.create("/c");
  EXPECT_TRUE(fs.write(c, 0, bytes_of(std::string(4096, 'c'))).has_value());
  for (const auto& rec : *fs.fsmap(0, kBytes)) {
    if (rec.owner == OwnerKind::File && rec.ino == a) *a_block = rec.device_offset_bytes / kBlockSize;
  }
  EXPECT_NE(*a_block, 0u);
}

// A checksummed transaction after the journal's last one that maps /c's block 0
// onto /a's block, with `mark` as its flags: none, as a write of a new block
// has; format::kExtentShares, as a clone's records have.
void map_c_onto_a(MemoryDevice& device, const std::vector<uint64_t>& journals, uint64_t a_block, uint32_t mark) {
  format::TxEncoder tx;
  tx.add(format::ExtentRecord{3, 0, a_block, 1, mark});
  append_transaction(device, journals, last_lsn(device, journals[0]), tx);
}

TEST(Sharing, AJournaledExtentOnAnotherFilesBlockIsACrossLink) {
  std::vector<uint64_t> journals;
  uint64_t a_block = 0;
  auto device = journaled_image([&](Filesystem& fs) { make_two_files(fs, &a_block); }, &journals);
  map_c_onto_a(*device, journals, a_block, 0);
  {
    std::unique_ptr<Filesystem> read_only;
    expect_cross_link(*device, "an unmarked record landing on another file's block is no reflink",
                      {"device block " + std::to_string(a_block), "inode 2", "inode 3"}, &read_only);
    ASSERT_NE(read_only, nullptr);
    EXPECT_EQ(read_all(*read_only, "/c", 4096), std::string(4096, 'a'));
  }
  auto r = Filesystem::repair(*device);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_TRUE(r->clean()) << r->problems.front();
  EXPECT_TRUE(mentions(r->changes, "copy-on-write"));
  expect_clean_and_mountable(*device);
  auto fs = Filesystem::mount(*device);
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  ASSERT_TRUE((*fs)->write(*(*fs)->lookup("/a"), 0, bytes_of(std::string(4096, 'x'))).has_value());
  EXPECT_EQ(read_all(**fs, "/c", 4096), std::string(4096, 'a')) << "a write to /a no longer reaches /c";
}

TEST(Sharing, AMarkedJournalRecordIsSharingAsACloneMakes) {
  std::vector<uint64_t> journals;
  uint64_t a_block = 0;
  auto device = journaled_image([&](Filesystem& fs) {
    make_two_files(fs, &a_block);
    // And a real clone and a reflink, journaled only.
    auto b = *fs.create("/b");
    EXPECT_TRUE(fs.clone_range(*fs.lookup("/a"), 0, b, 0, 4096).has_value());
    auto d = *fs.create("/d");
    EXPECT_TRUE(fs.reflink(*fs.lookup("/c"), d).has_value());
  }, &journals);
  auto before = Filesystem::check_device(*device);
  ASSERT_TRUE(before.has_value()) << before.error().message;
  EXPECT_TRUE(before->clean()) << "a journaled clone and reflink are sharing: " << before->problems.front();
  EXPECT_EQ(before->shared_blocks, 2u);
  map_c_onto_a(*device, journals, a_block, format::kExtentShares);
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value()) << report.error().message;
  EXPECT_TRUE(report->clean()) << report->problems.front();
  auto fs = Filesystem::mount(*device);
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  EXPECT_EQ(read_all(**fs, "/c", 4096), std::string(4096, 'a'));
  ASSERT_TRUE((*fs)->write(*(*fs)->lookup("/c"), 0, bytes_of(std::string(4096, 'x'))).has_value());
  EXPECT_EQ(read_all(**fs, "/a", 4096), std::string(4096, 'a')) << "a shared block is copied before a write";
  EXPECT_EQ(read_all(**fs, "/b", 4096), std::string(4096, 'a'));
  EXPECT_TRUE((*fs)->check().clean());
}

TEST(Sharing, TheMarkNeverStandsInACheckpointsExtents) {
  auto device = image_with_a_reflink();
  ASSERT_EQ(edit_extent_records(*device, 3, [](format::DiskExtent* e) {
    e->flags.set(e->flags.get() | format::kExtentShares);
  }), 2);
  // The newest checkpoint is refused; the previous one and the journal carried
  // with the newest stand in for it, and say why.
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value()) << report.error().message;
  EXPECT_TRUE(report->clean()) << report->problems.front();
  bool noted = false;
  for (const std::string& n : report->notes) {
    noted = noted || (n.find("sharing mark") != std::string::npos && n.find("stand in") != std::string::npos);
  }
  EXPECT_TRUE(noted) << "no note says the newest checkpoint was refused for the mark";
  // With no previous checkpoint kept, the mount fails.
  forget_previous_checkpoint(*device);
  int code = 0;
  std::string message = mount_error(*device, &code);
  EXPECT_EQ(code, EUCLEAN) << message;
  EXPECT_NE(message.find("sharing mark"), std::string::npos) << message;
}

// An image from before sharing marks trusts its journal's sharing, as before;
// its first full checkpoint turns the marks on, and from then on a reflink's
// records carry them (else the check below would call its sharing a cross-link).
TEST(Sharing, AnImageFromBeforeTheMarksGainsThemAtAFullCheckpoint) {
  auto device = std::make_unique<MemoryDevice>(kBytes);
  ASSERT_TRUE(Filesystem::format(*device).has_value());
  ASSERT_NE(superblock_of(*device).feature_incompat & format::kIncompatSharingMarks, 0u) << "mkfs sets it";
  edit_superblocks(*device, [](format::SuperblockInfo* sb) { sb->feature_incompat &= ~format::kIncompatSharingMarks; });
  std::vector<uint64_t> journals;
  uint64_t a_block = 0;
  {
    auto fs = Filesystem::mount(*device);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    make_two_files(**fs, &a_block);
    ASSERT_TRUE((*fs)->reflink(*(*fs)->lookup("/a"), *(*fs)->create("/b")).has_value());
    ASSERT_TRUE((*fs)->checkpoint(CheckpointMode::Auto).has_value());  // incremental: the journal goes on in a delta
    EXPECT_EQ(superblock_of(*device).feature_incompat & format::kIncompatSharingMarks, 0u);
    ASSERT_TRUE((*fs)->checkpoint(CheckpointMode::Full).has_value());
    EXPECT_NE(superblock_of(*device).feature_incompat & format::kIncompatSharingMarks, 0u);
    ASSERT_TRUE((*fs)->reflink(*(*fs)->lookup("/c"), *(*fs)->create("/d")).has_value());  // journaled, marked
    ASSERT_TRUE((*fs)->checkpoint(CheckpointMode::Auto).has_value());                     // and in a delta
    ASSERT_TRUE((*fs)->reflink(*(*fs)->lookup("/a"), *(*fs)->create("/e")).has_value());  // in the journal
    (*fs)->shutdown();
  }
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value()) << report.error().message;
  EXPECT_TRUE(report->clean()) << report->problems.front();
  EXPECT_EQ(report->shared_blocks, 2u);
}

// The delta replays journals as the mount replays the journal, and its records
// are checked the same way: a misdirected record carried into a delta (here
// while the image had no marks yet) is found once the marks are on.
TEST(Sharing, ACrossLinkInADeltaIsFound) {
  std::vector<uint64_t> journals;
  uint64_t a_block = 0;
  auto device = journaled_image([&](Filesystem& fs) { make_two_files(fs, &a_block); }, &journals);
  edit_superblocks(*device, [](format::SuperblockInfo* sb) { sb->feature_incompat &= ~format::kIncompatSharingMarks; });
  map_c_onto_a(*device, journals, a_block, 0);
  auto unmarked = Filesystem::check_device(*device);
  ASSERT_TRUE(unmarked.has_value()) << unmarked.error().message;
  EXPECT_TRUE(unmarked->clean()) << "without marks, the journal's sharing is trusted: " << unmarked->problems.front();
  {
    auto fs = Filesystem::mount(*device);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    ASSERT_TRUE((*fs)->checkpoint(CheckpointMode::Auto).has_value());
    bool delta = false;
    for (const auto& rec : *(*fs)->fsmap(0, kBytes)) delta |= rec.metadata_kind == MetadataKind::CheckpointDelta;
    ASSERT_TRUE(delta) << "the checkpoint kept its base and wrote a delta";
    ASSERT_TRUE((*fs)->unmount().has_value());
  }
  edit_superblocks(*device, [](format::SuperblockInfo* sb) { sb->feature_incompat |= format::kIncompatSharingMarks; });
  auto report = Filesystem::check_device(*device);
  ASSERT_TRUE(report.has_value()) << report.error().message;
  ASSERT_FALSE(report->clean());
  EXPECT_NE(report->problems[0].find("cross-link"), std::string::npos) << report->problems[0];
  EXPECT_NE(report->problems[0].find("device block " + std::to_string(a_block)), std::string::npos)
      << report->problems[0];
}

}  // namespace
}  // namespace poise
