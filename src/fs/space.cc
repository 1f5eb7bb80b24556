// Space accounting: operations reserve the blocks they will allocate before they
// change anything (so ENOSPC leaves nothing half-done), and data never eats into
// the blocks the next checkpoint needs.
#include <algorithm>

#include "format/checkpoint_format.h"
#include "fs/fs_impl.h"

namespace poise {

// Every copy of the checkpoint (two from format version 2) is written in full.
uint64_t FsImpl::checkpoint_reserve_blocks(uint64_t more_xattr_bytes, uint64_t record_bytes) const {
  uint64_t dirents = dirent_count_.load();
  constexpr uint64_t kMarginBlocks = 16;  // partial blocks, the root, growth during a checkpoint
  // Fixed-size records are counted whole per block (63 inodes, 126 extents).
  using format::fixed_section_blocks;
  const uint64_t sections =
      fixed_section_blocks(inode_count_.load(), sizeof(format::DiskInode)) +
      fixed_section_blocks(extent_count_.load(), sizeof(format::DiskExtent)) +
      // Shared runs (version 2): fewer than two per extent.
      (sb_.has_copies() ? fixed_section_blocks(2 * extent_count_.load(), sizeof(format::DiskRefcount)) : 0) +
      named_section_blocks(dirents * (sizeof(format::DiskDirent) + 8) + name_bytes_.load(), more_xattr_bytes,
                           record_bytes);
  // On free space in one-block pieces every section block is a run of its own,
  // and the runs past the root's are listed in run-list blocks.
  const uint64_t run_lists = sections / format::kRunListRunsMax + format::kSectionCount;
  return metadata_copies() * (sections + run_lists + kMarginBlocks);
}

// The directory section holds entries and attributes. A block ends early by
// less than the record that opens the next one. Two bounds, the smaller one
// holds: each block short by the largest record there can be (an entry of the
// longest name, or the largest attribute applied); or short by a longest
// entry, with each attribute counted twice (an attribute opens at most one
// block). Small attributes pack as names do; large ones cost up to twice.
uint64_t FsImpl::named_section_blocks(uint64_t entry_bytes, uint64_t more_xattr_bytes, uint64_t record_bytes) const {
  const uint64_t payload = format::kSectionPayloadBytes;
  const uint64_t longest_entry = format::dirent_bytes(format::kNameBytesMax);
  const uint64_t attributes = xattr_bytes_.load() + more_xattr_bytes;
  const uint64_t largest = std::max({longest_entry, xattr_record_max_.load(), record_bytes});
  auto blocks = [](uint64_t bytes, uint64_t per_block) { return (bytes + per_block - 1) / per_block; };
  const uint64_t by_largest = blocks(entry_bytes + attributes, payload - largest);
  const uint64_t by_doubling = blocks(entry_bytes + 2 * attributes, payload - longest_entry);
  return std::min(by_largest, by_doubling) + 1;
}

uint64_t FsImpl::xattr_space_blocks(uint64_t bytes, uint64_t record_bytes) const {
  if (bytes == 0) return 0;
  // What the estimate becomes with them, less what it is; the space held is
  // for two checkpoints (available_blocks_locked), so twice that.
  const uint64_t before = checkpoint_reserve_blocks();
  const uint64_t after = checkpoint_reserve_blocks(bytes, record_bytes);
  return after > before ? 2 * (after - before) : 0;
}

uint64_t FsImpl::checkpoint_blocks_for_extents(uint64_t extents) const {
  const uint64_t record_bytes = sizeof(format::DiskExtent) + (sb_.has_copies() ? sizeof(format::DiskRefcount) : 0);
  return metadata_copies() * (2 + extents * record_bytes / format::kSectionPayloadBytes);
}

// A checkpoint is written beside the current one, which is freed only after:
// to write one now, `estimate` blocks must be free; for the one after it too,
// 2 * estimate - (the current checkpoint's blocks). Operations never eat into
// the larger of the two, so a checkpoint can always be written (no ENOSPC wedge).
// The kept previous checkpoint's blocks count as free: they are let go first.
uint64_t FsImpl::available_blocks_locked() const {
  const uint64_t estimate = checkpoint_reserve_blocks();
  const uint64_t current = checkpoint_blocks_;
  const uint64_t two_ahead = 2 * estimate > current ? 2 * estimate - current : 0;
  uint64_t held = reserved_blocks_ + std::max(estimate, two_ahead);
  const uint64_t free = free_.free_blocks() + previous_blocks_;
  return free > held ? free - held : 0;
}

Result<void> FsImpl::expect_space(uint64_t count, const char* what) {
  std::lock_guard lock(space_mutex_);
  uint64_t available = available_blocks_locked();
  if (count > available) {
    return fail(ENOSPC, std::string(what) + " needs " + std::to_string(count) + " blocks, " +
                            std::to_string(available) + " are free");
  }
  return {};
}

Result<void> FsImpl::reserve_blocks(uint64_t count) {
  if (count == 0) return {};
  std::lock_guard lock(space_mutex_);
  uint64_t available = available_blocks_locked();
  if (count > available) {
    return fail(ENOSPC, "no space: need " + std::to_string(count) + " blocks, " +
                            std::to_string(available) + " are free");
  }
  // Promised blocks must be free ones: the kept checkpoint goes if they are not.
  if (count > available - std::min(available, previous_blocks_)) release_previous_locked();
  reserved_blocks_ += count;
  return {};
}

void FsImpl::unreserve_blocks(uint64_t count) {
  std::lock_guard lock(space_mutex_);
  POISE_ASSERT(reserved_blocks_ >= count);
  reserved_blocks_ -= count;
}

DevRun FsImpl::allocate_reserved(uint64_t want, std::optional<DevBlock> hint) {
  std::lock_guard lock(space_mutex_);
  POISE_ASSERT(reserved_blocks_ >= want);
  auto run = free_.allocate(want, hint);
  POISE_ASSERT(run.has_value());  // the reservation guarantees free blocks
  reserved_blocks_ -= run->count;
  return *run;
}

void FsImpl::return_blocks(DevRun run) {
  std::lock_guard lock(space_mutex_);
  free_.add(run);
}

}  // namespace poise
