// Space accounting: operations reserve the blocks they will allocate before they
// change anything (so ENOSPC leaves nothing half-done), and data never eats into
// the blocks the next checkpoint needs.
#include "format/checkpoint_format.h"
#include "fs/fs_impl.h"

namespace poise {

// Every copy of the checkpoint (two from format version 2) is written in full.
uint64_t FsImpl::checkpoint_reserve_blocks() const {
  using format::kSectionPayloadBytes;
  auto blocks = [](uint64_t bytes, uint64_t per_block) { return (bytes + per_block - 1) / per_block; };
  uint64_t dirents = dirent_count_.load();
  // Directory entries do not split across blocks: a block may leave up to one
  // longest entry's bytes unused, so count each block as holding that much less.
  const uint64_t dirent_block_bytes = kSectionPayloadBytes - format::dirent_bytes(format::kNameBytesMax);
  constexpr uint64_t kMarginBlocks = 16;  // partial blocks, the root, growth during a checkpoint
  return metadata_copies() * (blocks(inode_count_.load() * sizeof(format::DiskInode), kSectionPayloadBytes) +
         blocks(extent_count_.load() * sizeof(format::DiskExtent), kSectionPayloadBytes) +
         // Shared runs (version 2): fewer than two per extent.
         (sb_.has_copies() ? blocks(2 * extent_count_.load() * sizeof(format::DiskRefcount), kSectionPayloadBytes) : 0) +
         blocks(dirents * (sizeof(format::DiskDirent) + 8) + name_bytes_.load(), dirent_block_bytes) +
         // Attributes share that section; one of up to 3 KiB may leave most of a
         // block unused, but two blocks in a row always hold a block's worth.
         blocks(2 * xattr_bytes_.load(), kSectionPayloadBytes) + kMarginBlocks);
}

uint64_t FsImpl::checkpoint_blocks_for_extents(uint64_t extents) const {
  const uint64_t record_bytes = sizeof(format::DiskExtent) + (sb_.has_copies() ? sizeof(format::DiskRefcount) : 0);
  return metadata_copies() * (2 + extents * record_bytes / format::kSectionPayloadBytes);
}

// A checkpoint is written beside the current one, which is freed only after:
// to write one now, `estimate` blocks must be free; for the one after it too,
// 2 * estimate - (the current checkpoint's blocks). Operations never eat into
// the larger of the two, so a checkpoint can always be written (no ENOSPC wedge).
uint64_t FsImpl::available_blocks_locked() const {
  const uint64_t estimate = checkpoint_reserve_blocks();
  const uint64_t current = checkpoint_blocks_;
  const uint64_t two_ahead = 2 * estimate > current ? 2 * estimate - current : 0;
  uint64_t held = reserved_blocks_ + std::max(estimate, two_ahead);
  return free_.free_blocks() > held ? free_.free_blocks() - held : 0;
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
