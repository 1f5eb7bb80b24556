// FailureHandler: the filesystem's answer when its device reports lost memory —
// the holder registered with the device (DESIGN layer failure/, the userspace
// counterpart of xfs_notify_failure.c). One ranged call, whatever its length:
// the reverse map names the owners in O(log n + owners), nothing walks page by
// page (I2).
//
// - File data (I3, I5): the failed blocks are recorded persistently and fenced
//   off (never allocated again); in every mapping of every owning file — each
//   reflink sharer, nobody else — exactly those pages are revoked for good, and
//   each mapping's owner is told. Owning files without mappings are not even
//   locked: their layout shows the record from then on, and the cost of a
//   notification stays the same however many files the filesystem holds.
//   Reads of those bytes fail with EIO until the file rewrites the whole block
//   (relocation) or drops it.
// - Free space: fenced off the same way.
// - Checkpoint metadata: rewritten from memory to good blocks (I6).
// - The journal or both superblocks: consistency cannot be guaranteed on, so the
//   metadata is checkpointed and the filesystem shuts down (I6).
// - PreRemove (I4): freeze (new modifications and mapped stores wait, in-flight
//   ones drain), revoke every mapping (writing back what was stored through it),
//   sync, tell every owner; stay frozen. Remove: shut down. A cancelled removal
//   thaws.
#pragma once

#include <functional>
#include <vector>

#include "mapping/registry.h"
#include "poise/device.h"
#include "poise/filesystem.h"

namespace poise::failure {

// The owners of a failed device range, from the reverse map.
struct FailedOwners {
  struct FileRange {
    InodeNumber ino;
    uint64_t file_block;
    uint64_t dev_block;
    uint64_t count;
  };
  std::vector<FileRange> files;
  bool journal = false;  // the journal cannot go on: failed memory in its only copy, or in both
  int superblocks = 0;
  bool checkpoint = false;  // any checkpoint structure (inodes, directories, extents, bad ranges)
  // Every block was recorded bad before: a second report of the same failure
  // (a client's and the kernel's early notice, say) changes nothing.
  bool already_recorded = false;
};

// What the handler asks of the filesystem.
class FailureTarget {
 public:
  virtual ~FailureTarget() = default;
  virtual bool is_mounted() const = 0;
  virtual bool is_read_only() const = 0;
  virtual uint64_t size_blocks() const = 0;
  virtual FailedOwners owners_of(uint64_t first_block, uint64_t count) = 0;
  // Records the blocks as failed: durably (a journal transaction), or in memory
  // only on a read-only mount; either way fenced off from allocation.
  virtual Result<void> record_bad(uint64_t first_block, uint64_t count) = 0;
  virtual Result<void> rewrite_checkpoint() = 0;
  // Keeps what can be kept (a checkpoint), then shuts down.
  virtual void checkpoint_and_shutdown() = 0;
  virtual void shutdown() = 0;
  virtual void freeze() = 0;
  virtual void thaw() = 0;
  virtual Result<void> sync_frozen() = 0;
  // Tells the event listener, if any. REQUIRES: no poise lock held.
  virtual void report(const FsEvent& event) = 0;
  // Runs fn while the file's layout cannot change.
  virtual void with_file_locked(InodeNumber ino, const std::function<void()>& fn) = 0;
};

class FailureHandler final : public FailureHolder {
 public:
  FailureHandler(FailureTarget& fs, mapping::MappingRegistry& mappings) : fs_(fs), mappings_(mappings) {}

  Result<void> notify_failure(uint64_t offset, uint64_t length, FailureFlags flags) override;
  void removal_cancelled() override;

 private:
  Result<void> pre_remove();

  FailureTarget& fs_;
  mapping::MappingRegistry& mappings_;
};

}  // namespace poise::failure
