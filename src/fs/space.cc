// Space accounting: operations reserve the blocks they will allocate before they
// change anything (so ENOSPC leaves nothing half-done), and data never eats into
// the blocks the next checkpoint needs.
#include "format/checkpoint_format.h"
#include "fs/fs_impl.h"

namespace poise {

uint64_t FsImpl::checkpoint_reserve_blocks() const {
  using format::kSectionPayloadBytes;
  auto blocks = [](uint64_t bytes) { return (bytes + kSectionPayloadBytes - 1) / kSectionPayloadBytes; };
  uint64_t dirents = dirent_count_.load();
  constexpr uint64_t kMarginBlocks = 16;  // partial blocks, the root, growth during a checkpoint
  return blocks(inode_count_.load() * sizeof(format::DiskInode)) +
         blocks(extent_count_.load() * sizeof(format::DiskExtent)) +
         blocks(dirents * (sizeof(format::DiskDirent) + 8) + name_bytes_.load()) + kMarginBlocks;
}

uint64_t FsImpl::available_blocks_locked() const {
  uint64_t held = reserved_blocks_ + checkpoint_reserve_blocks();
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
