// The filesystem as the device's failure holder (DESIGN flows 1, 2 and 5;
// invariants I2, I3, I5, I6). One ranged call, whatever its length: the reverse
// map says who owned the range in O(log n + owners), nothing walks page by page.
//
// - File data: the failed blocks are recorded persistently (one journal
//   transaction) and fenced off: never allocated again. Every owner — each
//   reflink sharer — then gets EIO reading those bytes, and only those; a file
//   that rewrites a whole lost block gets a fresh block (relocation).
// - Free space: fenced off the same way.
// - Checkpoint metadata: rewritten from the in-memory copy to good blocks.
// - The journal, or both superblocks: consistency cannot be guaranteed on, so
//   the metadata is checkpointed and the filesystem shuts down.
// Direct mappings and their owners' notification arrive with the mapping layer.
#include <algorithm>

#include "fs/fs_impl.h"

namespace poise {

std::optional<DevRun> FsImpl::bad_overlap(DevBlock dev, uint64_t count) const {
  auto r = bad_blocks_.first_overlap(Range{dev.value(), count});
  if (!r) return std::nullopt;
  return DevRun{DevBlock(r->start), r->length};
}

std::optional<DevRun> FsImpl::poisoned_blocks(uint64_t offset, uint64_t length) const {
  auto listed = device_.bad_ranges();
  if (!listed.has_value()) return std::nullopt;
  for (const BadRange& b : *listed) {
    uint64_t s = std::max(offset, b.offset_bytes);
    uint64_t e = std::min(offset + length, b.offset_bytes + b.length_bytes);
    if (s < e) return blocks_covering(s, e - s, UINT64_MAX);
  }
  return std::nullopt;
}

Result<void> FsImpl::notify_failure(uint64_t offset, uint64_t length, FailureFlags flags) {
  if (has(flags, FailureFlags::Remove)) {
    shutdown();  // the memory is gone: every call fails from now on
    return {};
  }
  if (has(flags, FailureFlags::PreRemove)) {
    return fail(ENOTSUP, "pre-remove (freeze before device removal) is not implemented yet");
  }
  if (!mounted_) return fail(EIO, "filesystem is not mounted");
  DevRun run = blocks_covering(offset, length, sb_.size_blocks);
  if (run.count == 0) return fail(EINVAL, "failure range outside the filesystem");

  // Who owned it, through the reverse map.
  bool checkpoint_hit = false, journal_hit = false;
  int superblocks_hit = 0;
  {
    std::lock_guard lock(space_mutex_);
    ownership_.visit(run, [&](DevRun, const std::vector<Owner>& owners) {
      for (const Owner& o : owners) {
        if (!o.is_metadata()) continue;
        auto kind = static_cast<MetadataKind>(o.id & 0xFF);
        if (kind == MetadataKind::Journal) journal_hit = true;
        else if (kind == MetadataKind::Superblock) ++superblocks_hit;
        else checkpoint_hit = true;
      }
    });
  }

  if (options_.mode == MountMode::ReadOnly) {  // nothing may be written: remember it in memory
    std::vector<Range> fresh = bad_blocks_.add(Range{run.start.value(), run.count});
    std::lock_guard lock(space_mutex_);
    for (const Range& f : fresh) fence_off_locked(DevRun{DevBlock(f.start), f.length});
    return {};
  }
  {
    auto op = TRY(begin_op(4096));
    commit(op, {format::BadRangeRecord{run.start.value(), run.count}}, {});
  }
  if (journal_hit || superblocks_hit == 2) {
    {
      std::unique_lock quiet(gate_);
      if (mounted_) (void)write_checkpoint();  // keep what can be kept
    }
    shutdown();
    return fail(EIO, journal_hit ? "the journal's memory failed: filesystem shut down (mount read-only to copy data out)"
                                 : "both superblocks failed: filesystem shut down");
  }
  if (checkpoint_hit) {  // rewrite the metadata from memory onto good blocks
    std::unique_lock quiet(gate_);
    TRY(write_checkpoint());
  }
  return {};
}

Result<void> FsImpl::take_in_device_bad_ranges() {
  auto listed = TRY(device_.bad_ranges());
  constexpr size_t kBadRangesMax = 1 << 20;
  if (listed.size() > kBadRangesMax) return fail(E2BIG, "the device reports more than 2^20 bad ranges");
  for (const BadRange& b : listed) {
    DevRun run = blocks_covering(b.offset_bytes, b.length_bytes, sb_.size_blocks);
    if (run.count == 0) continue;
    auto known = bad_blocks_.first_overlap(Range{run.start.value(), run.count});
    if (known && known->start == run.start.value() && known->length == run.count) continue;  // recorded already
    TRY(notify_failure(b.offset_bytes, b.length_bytes, FailureFlags::None));
  }
  return {};
}

}  // namespace poise
