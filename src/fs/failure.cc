// The filesystem's side of memory failure: the mechanics the failure handler
// (src/failure/failure_handler.h, which holds the flow) asks for — the reverse
// map's owners, durable bad-range records, checkpoint rewrite, freeze, shutdown
// — and the device's known bad ranges taken in at mount (flow 2).
#include <algorithm>

#include "fs/fs_impl.h"

namespace poise {

std::optional<DevRun> FsImpl::bad_overlap(DevBlock dev, uint64_t count) const {
  auto r = bad_blocks_.first_overlap(Range{dev.value(), count});
  if (!r) return std::nullopt;
  return DevRun{DevBlock(r->start), r->length};
}

std::optional<DevRun> FsImpl::poisoned_blocks(uint64_t offset, uint64_t length) const {
  if (auto failed = Device::take_failed_read()) {  // a machine check under the copy
    if (failed->offset_bytes < offset + length && offset < failed->offset_bytes + failed->length_bytes) {
      return blocks_covering(failed->offset_bytes, failed->length_bytes, UINT64_MAX);
    }
  }
  auto listed = device_.bad_ranges();
  if (!listed.has_value()) return std::nullopt;
  for (const BadRange& b : *listed) {
    uint64_t s = std::max(offset, b.offset_bytes);
    uint64_t e = std::min(offset + length, b.offset_bytes + b.length_bytes);
    if (s < e) return blocks_covering(s, e - s, UINT64_MAX);
  }
  return std::nullopt;
}

failure::FailedOwners FsImpl::owners_of(uint64_t first_block, uint64_t count) {
  failure::FailedOwners out;
  std::lock_guard lock(space_mutex_);
  if (auto known = bad_blocks_.first_overlap(Range{first_block, count})) {
    out.already_recorded = known->start <= first_block && known->end() >= first_block + count;
  }
  // record_bad fences the range off next, reading the segments around it.
  ownership_.prefetch_around(DevRun{DevBlock(first_block), count});
  ownership_.visit(DevRun{DevBlock(first_block), count}, [&](DevRun r, const std::vector<Owner>& owners) {
    for (const Owner& o : owners) {
      if (o.is_bad()) continue;
      if (!o.is_metadata()) {
        out.files.push_back({InodeNumber(o.id), o.offset_blocks, r.start.value(), r.count});
        continue;
      }
      auto kind = static_cast<MetadataKind>(o.id & 0xFF);
      if (kind == MetadataKind::Journal) {
        // One copy of two failing leaves the other standing in; both (now or
        // earlier) leave nothing to replay from.
        bool other_failed = !sb_.has_copies();
        if (sb_.has_copies()) {
          const bool second = o.offset_blocks >= kSecondCopyOffset;
          const uint64_t other = second ? sb_.journal_start_block : sb_.journal_copy_start_block;
          other_failed = bad_blocks_.first_overlap(Range{other, sb_.journal_blocks}).has_value() ||
                         (first_block < other + sb_.journal_blocks && other < first_block + count);
        }
        out.journal = out.journal || other_failed;
      }
      else if (kind == MetadataKind::Superblock) ++out.superblocks;
      else out.checkpoint = true;
    }
  });
  return out;
}

Result<void> FsImpl::record_bad(uint64_t first_block, uint64_t count) {
  auto fence_in_memory = [&] {
    std::vector<Range> fresh = bad_blocks_.add(Range{first_block, count});
    std::lock_guard lock(space_mutex_);
    for (const Range& f : fresh) fence_off_locked(DevRun{DevBlock(f.start), f.length});
  };
  if (options_.mode == MountMode::ReadOnly) {  // nothing may be written: remember it in memory
    fence_in_memory();
    return {};
  }
  // The journal's reserve is for this too: a record that cannot be written would
  // let the failed blocks be allocated again (I5).
  {
    auto op = begin_op(4096, Journal::Use::Freeing);
    if (!op.has_value()) {
      fence_in_memory();  // never allocated in this mount at least; the device list brings it back at the next
      // mount, and the next checkpoint is a full one, which records it (a delta holds only journals).
      full_checkpoint_due_.store(true, std::memory_order_relaxed);
      return Unexpected<Error>(std::move(op).error());
    }
    commit(*op, {format::BadRangeRecord{first_block, count}}, {});
  }
  remember_lost(first_block, count);
  return {};
}

void FsImpl::remember_lost(uint64_t first_block, uint64_t count) {
  for (const auto& f : owners_of(first_block, count).files) {
    InodePtr inode;
    {
      std::shared_lock ns(ns_mutex_);
      inode = find_inode(f.ino);
    }
    if (inode == nullptr) continue;
    const uint64_t changes = inode->changes.load(std::memory_order_relaxed);
    std::lock_guard lock(lost_mutex_);
    for (uint64_t b = 0; b < f.count; ++b) lost_at_[{f.ino.value(), f.file_block + b}] = changes;
  }
}

Result<void> FsImpl::rewrite_checkpoint() {
  std::unique_lock quiet(gate_);
  if (!mounted_) return fail(EIO, "filesystem has shut down");
  full_checkpoint_due_.store(true, std::memory_order_relaxed);  // every metadata block anew, off the failed memory
  return write_checkpoint();
}

void FsImpl::checkpoint_and_shutdown() {
  if (options_.mode == MountMode::ReadWrite) {
    std::unique_lock quiet(gate_);
    if (mounted_) (void)write_checkpoint();  // keep what can be kept
  }
  shutdown();
}

void FsImpl::with_file_locked(InodeNumber ino, const std::function<void()>& fn) {
  InodePtr inode;
  {
    std::shared_lock ns(ns_mutex_);
    inode = find_inode(ino);
  }
  if (inode == nullptr) return;
  std::unique_lock lock(inode->lock);
  fn();
}

void FsImpl::freeze() {
  {
    std::lock_guard lock(freeze_mutex_);
    frozen_ = true;
    frozen_flag_.store(true);
  }
  std::unique_lock drain(gate_);  // operations in flight finish; new ones wait in begin_op
}

void FsImpl::thaw() {
  std::vector<InodeNumber> released;
  {
    std::lock_guard lock(freeze_mutex_);
    frozen_ = false;
    frozen_flag_.store(false);
    released.swap(released_while_frozen_);
  }
  thawed_.notify_all();
  for (InodeNumber ino : released) {  // their last reference went meanwhile
    InodePtr inode;
    {
      std::shared_lock ns(ns_mutex_);
      inode = find_inode(ino);
    }
    if (inode != nullptr) free_if_unreferenced(inode);
  }
}

Result<void> FsImpl::sync_frozen() {
  if (options_.mode == MountMode::ReadWrite) journal_->make_durable();
  return device_.sync();
}

Result<void> FsImpl::wait_until_thawed() {
  if (frozen_flag_.load(std::memory_order_acquire)) {
    std::unique_lock lock(freeze_mutex_);
    thawed_.wait(lock, [&] { return !frozen_ || !mounted_; });
  }
  if (!mounted_) return fail(ESHUTDOWN, "filesystem has shut down");
  return {};
}

Result<void> FsImpl::take_in_device_bad_ranges() {
  auto listed = TRY(device_.bad_ranges());
  // Memory that failed under the mount's own reads (a machine check) is as known.
  listed.insert(listed.end(), failed_at_load_.begin(), failed_at_load_.end());
  failed_at_load_.clear();
  constexpr size_t kBadRangesMax = 1 << 20;
  if (listed.size() > kBadRangesMax) return fail(E2BIG, "the device reports more than 2^20 bad ranges");
  for (const BadRange& b : listed) {
    DevRun run = blocks_covering(b.offset_bytes, b.length_bytes, sb_.size_blocks);
    if (run.count == 0) continue;
    auto known = bad_blocks_.first_overlap(Range{run.start.value(), run.count});
    if (known && known->start == run.start.value() && known->length == run.count) continue;  // recorded already
    TRY(failure_handler_->notify_failure(b.offset_bytes, b.length_bytes, FailureFlags::None));
  }
  return {};
}

}  // namespace poise
