// Image surgery for the tests of damaged images: small images made through the
// public API, and edits that leave every checksum valid (a transaction appended
// to the journal, checkpoint roots and extent records rewritten and sealed
// again), the damage a bug or a hostile writer leaves that no checksum sees.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "device/memory_device.h"
#include "format/block.h"
#include "format/checkpoint_format.h"
#include "format/journal_format.h"
#include "format/ondisk.h"
#include "format/records.h"
#include "format/superblock.h"
#include "poise/filesystem.h"

namespace poise::surgery {

inline constexpr uint64_t kBytes = 32ull << 20;
inline constexpr uint64_t kBlocks = kBytes / kBlockSize;

inline std::unique_ptr<MemoryDevice> formatted_with_a_file() {
  auto device = std::make_unique<MemoryDevice>(kBytes);
  EXPECT_TRUE(Filesystem::format(*device).has_value());
  auto fs = Filesystem::mount(*device);
  EXPECT_TRUE(fs.has_value());
  auto ino = (*fs)->create("/kept");
  std::string data = "committed data";
  EXPECT_TRUE((*fs)->write(*ino, 0, {reinterpret_cast<const std::byte*>(data.data()), data.size()}).has_value());
  EXPECT_TRUE((*fs)->checkpoint(CheckpointMode::Full).has_value());  // every section of the checkpoint has a block
  EXPECT_TRUE((*fs)->mkdir("/in-delta").has_value());
  EXPECT_TRUE((*fs)->checkpoint().has_value());         // an incremental one on it: a delta block
  EXPECT_TRUE((*fs)->mkdir("/journaled").has_value());  // and the journal a transaction
  EXPECT_TRUE((*fs)->unmount().has_value());
  return device;
}

inline std::string mount_error(Device& device, int* code) {
  auto fs = Filesystem::mount(device);
  if (fs.has_value()) return "";
  *code = fs.error().code;
  return fs.error().message;
}

inline std::string read_kept(Filesystem& fs) {
  auto ino = fs.lookup("/kept");
  if (!ino.has_value()) return "(missing: " + ino.error().message + ")";
  std::string out(64, '\0');
  auto n = fs.read(*ino, 0, {reinterpret_cast<std::byte*>(out.data()), out.size()});
  if (!n.has_value()) return "(unreadable: " + n.error().message + ")";
  out.resize(*n);
  return out;
}

// The device offsets of the journal's copies.
inline std::vector<uint64_t> journal_copies(Filesystem& fs) {
  std::vector<uint64_t> out;
  for (const auto& r : *fs.fsmap(0, kBytes)) {
    if (r.owner == OwnerKind::Metadata && r.metadata_kind == MetadataKind::Journal) out.push_back(r.device_offset_bytes);
  }
  EXPECT_EQ(out.size(), 2u);
  return out;
}

// A device whose journal holds `ops` committed transactions (one mkdir each)
// that no checkpoint has absorbed: the filesystem stopped as if the power went.
inline std::unique_ptr<MemoryDevice> journal_with_transactions(int ops, std::vector<uint64_t>* journals) {
  auto device = std::make_unique<MemoryDevice>(kBytes);
  EXPECT_TRUE(Filesystem::format(*device).has_value());
  auto fs = Filesystem::mount(*device);
  EXPECT_TRUE(fs.has_value());
  *journals = journal_copies(**fs);
  for (int i = 1; i <= ops; ++i) EXPECT_TRUE((*fs)->mkdir("/d" + std::to_string(i)).has_value());
  (*fs)->shutdown();  // no checkpoint: the journal is all there is
  return device;
}

// A device on which `ops` ran and the filesystem then stopped as if the power
// went: everything they did is in the journal only.
inline std::unique_ptr<MemoryDevice> journaled_image(const std::function<void(Filesystem&)>& ops,
                                                     std::vector<uint64_t>* journals) {
  auto device = std::make_unique<MemoryDevice>(kBytes);
  EXPECT_TRUE(Filesystem::format(*device).has_value());
  auto fs = Filesystem::mount(*device);
  EXPECT_TRUE(fs.has_value());
  *journals = journal_copies(**fs);
  ops(**fs);
  (*fs)->shutdown();
  return device;
}

// The byte offset (in the device) of the sealed transaction with this lsn.
inline uint64_t transaction_at(const MemoryDevice& device, uint64_t journal_offset, uint64_t lsn) {
  for (uint64_t at = 0; at < (1u << 20); at += format::kTxAlign) {
    format::TxHeader h;
    std::memcpy(&h, device.data() + journal_offset + at, sizeof h);
    if (h.magic.get() == format::kTxMagic && h.self_offset.get() == at && h.lsn.get() == lsn) return journal_offset + at;
  }
  ADD_FAILURE() << "no transaction " << lsn;
  return 0;
}

// Flips one bit of the payload of transaction `lsn` in each of these copies.
// The highest lsn sealed in the journal at this device offset (0: none).
inline uint64_t last_lsn(const MemoryDevice& device, uint64_t journal_offset) {
  uint64_t last = 0;
  for (uint64_t at = 0; at < (1u << 20); at += format::kTxAlign) {
    format::TxHeader h;
    std::memcpy(&h, device.data() + journal_offset + at, sizeof h);
    if (h.magic.get() == format::kTxMagic && h.self_offset.get() == at) last = std::max(last, h.lsn.get());
  }
  return last;
}

inline void damage_transaction(MemoryDevice& device, const std::vector<uint64_t>& copies, uint64_t lsn) {
  for (uint64_t journal : copies) {
    uint64_t tx = transaction_at(device, journal, lsn);
    device.data()[tx + sizeof(format::TxHeader) + 3] ^= std::byte{0x40};
  }
}

// Appends a well-formed, checksummed transaction after the journal's last one:
// damage that no checksum can see, as a bug or a hostile writer would leave it.
inline void append_transaction(MemoryDevice& device, const std::vector<uint64_t>& journals, uint64_t last_lsn,
                               const format::TxEncoder& tx) {
  for (uint64_t journal : journals) {
    uint64_t at = transaction_at(device, journal, last_lsn);
    format::TxHeader h;
    std::memcpy(&h, device.data() + at, sizeof h);
    uint64_t next =
        at - journal + (sizeof h + h.payload_bytes.get() + format::kTxAlign - 1) / format::kTxAlign * format::kTxAlign;
    std::vector<std::byte> image = tx.seal(h.generation.get(), last_lsn + 1, next);
    device.write(journal + next, image.data(), image.size());
  }
}

inline format::SuperblockInfo superblock_of(const MemoryDevice& device) {
  auto sb = format::decode_superblock(device.data(), 0, "primary superblock");
  EXPECT_TRUE(sb.has_value());
  return sb.has_value() ? *sb : format::SuperblockInfo{};
}

// Rewrites both checkpoint roots of an unmounted image through `edit` (sealed
// again: damage no checksum can see).
// Rewrites both superblock copies of an unmounted image through `edit`.
inline void edit_superblocks(MemoryDevice& device, const std::function<void(format::SuperblockInfo*)>& edit) {
  const uint64_t blocks = device.size_bytes() / kBlockSize;
  for (uint64_t at : {format::primary_superblock_block(), format::secondary_superblock_block(blocks)}) {
    auto sb = format::decode_superblock(device.data() + at * kBlockSize, at, "superblock");
    ASSERT_TRUE(sb.has_value()) << sb.error().message;
    edit(&*sb);
    alignas(64) std::byte block[kBlockSize];
    format::encode_superblock(*sb, at, block);
    device.write(at * kBlockSize, block, kBlockSize);
  }
}

// The superblocks stop naming a previous checkpoint: the newest is all there is.
inline void forget_previous_checkpoint(MemoryDevice& device) {
  edit_superblocks(device, [](format::SuperblockInfo* sb) {
    sb->previous_root_block = sb->previous_copy_root_block = 0;
    sb->carry_block = sb->carry_copy_block = sb->carry_blocks = 0;
  });
}

inline void edit_checkpoint_roots(MemoryDevice& device, const std::function<void(format::CheckpointRootInfo*)>& edit) {
  format::SuperblockInfo sb = superblock_of(device);
  for (uint64_t at : {sb.checkpoint_root_block, sb.checkpoint_copy_root_block}) {
    auto root = format::decode_checkpoint_root(device.data() + at * kBlockSize, at, sb.checkpoint_generation,
                                               sb.journal_start_block + sb.journal_blocks, sb.size_blocks - 1);
    ASSERT_TRUE(root.has_value()) << root.error().message;
    edit(&*root);
    alignas(64) std::byte block[kBlockSize];
    format::encode_checkpoint_root(*root, at, block);
    device.write(at * kBlockSize, block, kBlockSize);
  }
}

// Rewrites, in both checkpoint copies, the extent records of inode `ino` in the
// extent section's first block through `edit`, and seals the blocks again
// (damage no checksum can see). Returns how many records were edited.
inline int edit_extent_records(MemoryDevice& device, uint64_t ino, const std::function<void(format::DiskExtent*)>& edit) {
  format::SuperblockInfo sb = superblock_of(device);
  int edited = 0;
  for (uint64_t at : {sb.checkpoint_root_block, sb.checkpoint_copy_root_block}) {
    auto root = format::decode_checkpoint_root(device.data() + at * kBlockSize, at, sb.checkpoint_generation,
                                               sb.journal_start_block + sb.journal_blocks, sb.size_blocks - 1);
    EXPECT_TRUE(root.has_value());
    if (!root.has_value()) return 0;
    const uint64_t extents = root->sections[format::kSectionExtents].runs.at(0).start_block;
    std::byte* block = device.data() + extents * kBlockSize;
    format::SectionBlockHeader h;
    std::memcpy(&h, block, sizeof h);
    for (uint32_t i = 0; i < h.records.get(); ++i) {
      format::DiskExtent e;
      std::memcpy(&e, block + sizeof h + i * sizeof e, sizeof e);
      if (e.ino.get() != ino) continue;
      edit(&e);
      std::memcpy(block + sizeof h + i * sizeof e, &e, sizeof e);
      ++edited;
    }
    format::seal_block(block, h.header.kind.get(), extents, h.header.generation.get(), h.header.used_bytes.get());
  }
  return edited;
}

inline void expect_clean_and_mountable(MemoryDevice& device) {
  auto report = Filesystem::check_device(device);
  ASSERT_TRUE(report.has_value()) << report.error().message;
  EXPECT_TRUE(report->clean()) << report->problems.front();
  auto fs = Filesystem::mount(device);
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  EXPECT_TRUE((*fs)->check().clean());
}

inline bool mentions(const std::vector<std::string>& lines, const std::string& what) {
  return std::any_of(lines.begin(), lines.end(), [&](const std::string& l) { return l.find(what) != std::string::npos; });
}

}  // namespace poise::surgery
