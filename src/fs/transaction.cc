// Operations: begin (gate + journal reservation, checkpointing when the journal
// is full), commit (durable journal transaction) and apply (the one code path
// that changes in-memory metadata, used at run time and by replay).
#include <algorithm>

#include "fs/fs_impl.h"

namespace poise {

namespace {
constexpr int kCheckpointAttemptsMax = 4;
}  // namespace

void append_extent_records(InodeNumber ino, const Extent& m, Records* out, uint32_t mark) {
  constexpr uint64_t kExtentRecordBlocksMax = 1ull << 31;
  for (uint64_t done = 0; done < m.block_count;) {
    uint64_t n = std::min(kExtentRecordBlocksMax, m.block_count - done);
    out->push_back(format::ExtentRecord{ino.value(), m.file_block.value() + done,
                                        m.dev_block.value() + done, static_cast<uint32_t>(n), m.flags | mark});
    done += n;
  }
}

FsImpl::Op::~Op() {
  if (fs_ == nullptr) return;
  if (reserved_ > 0) fs_->journal_->unreserve(reserved_);
  fs_->gate_.unlock_shared();
}

Result<void> FsImpl::check_writable() const {
  if (!mounted_) return fail(EIO, "filesystem is not mounted");
  if (options_.mode == MountMode::ReadOnly) return fail(EROFS, "filesystem is mounted read-only");
  return {};
}

Result<FsImpl::Op> FsImpl::begin_op(uint64_t tx_bytes_max, Journal::Use use) {
  TRY(check_writable());
  tx_bytes_max = std::min<uint64_t>(tx_bytes_max, format::kTxBytesMax);
  // The journal's last eighth is for freeing operations once the device has no
  // room for a checkpoint; until then they checkpoint like any other.
  Journal::Use may_use = Journal::Use::Any;
  for (int attempt = 0; attempt < kCheckpointAttemptsMax;) {
    // Frozen for a device removal: wait for the thaw (or the shutdown).
    if (!wait_until_thawed().has_value()) return fail(EIO, "filesystem has shut down");
    gate_.lock_shared();
    if (!mounted_) {  // shut down while we waited
      gate_.unlock_shared();
      return fail(EIO, "filesystem has shut down");
    }
    if (frozen_flag_.load(std::memory_order_acquire)) {  // the freeze began meanwhile
      gate_.unlock_shared();
      continue;
    }
    ++attempt;
    bool in_reserve = false;
    if (journal_->reserve(tx_bytes_max, may_use, &in_reserve)) return Op(this, tx_bytes_max, in_reserve);
    gate_.unlock_shared();
    std::unique_lock quiet(gate_);
    if (journal_->reserve(tx_bytes_max, may_use)) {  // someone else checkpointed meanwhile
      journal_->unreserve(tx_bytes_max);
      continue;
    }
    auto written = write_checkpoint();
    if (!written.has_value()) {
      if (use != Journal::Use::Freeing || written.error().code != ENOSPC || may_use == use) {
        return Unexpected<Error>(std::move(written).error());
      }
      may_use = use;
    }
  }
  return fail(ENOSPC, "journal stays full after checkpointing");
}

Result<void> FsImpl::must_free(const Op& op, bool frees) const {
  if (!op.in_reserve() || frees) return {};
  return fail(ENOSPC, "the journal is full and the device has no room for a checkpoint: only operations that free "
                      "space can run (remove a file's last name, or truncate or punch a file)");
}

std::optional<FsImpl::Op> FsImpl::try_begin_op(uint64_t tx_bytes) {
  if (!check_writable().has_value() || !gate_.try_lock_shared()) return std::nullopt;
  if (!mounted_ || frozen_flag_.load(std::memory_order_acquire) || !journal_->reserve(tx_bytes, Journal::Use::Any)) {
    gate_.unlock_shared();
    return std::nullopt;
  }
  return Op(this, tx_bytes);
}

void FsImpl::commit(Op& op, const Records& records, std::initializer_list<Inode*> locked) {
  if (records.empty()) return;
  thread_local format::TxEncoder tx;  // reused: no allocation per operation
  tx.clear();
  bool frees = false;
  for (const auto& r : records) {
    tx.add(r);
    frees |= std::holds_alternative<format::ExtentClearRecord>(r) || std::holds_alternative<format::ExtentRecord>(r) ||
             std::holds_alternative<format::InodeFreeRecord>(r);
  }
  const bool page_cache = device_.domain() == PersistenceDomain::PageCache;
  journal_->commit(tx, op.reserved(), page_cache && frees ? Journal::WriteBack::ToMedia : Journal::WriteBack::Fence);
  op.consumed();
  for (const auto& r : records) {
    auto applied = apply(r, locked);
    POISE_ASSERT(applied.has_value());
  }
  report_changes(records);
}

void FsImpl::report_change(const FsChange& change) {
  if (!change_listening_.load(std::memory_order_relaxed)) return;
  std::lock_guard lock(change_mutex_);
  if (change_listener_) change_listener_(change);
}

void FsImpl::report_changes(const Records& records) {
  if (!change_listening_.load(std::memory_order_relaxed)) return;
  using namespace format;
  std::lock_guard lock(change_mutex_);
  if (!change_listener_) return;
  for (const auto& r : records) {
    FsChange c;
    if (const auto* core = std::get_if<InodeCore>(&r)) {
      c.ino = InodeNumber(core->ino);
    } else if (const auto* e = std::get_if<ExtentRecord>(&r)) {
      c = FsChange{FsChange::Kind::Data, InodeNumber(e->ino), e->file_block * kBlockSize,
                   uint64_t{e->block_count} * kBlockSize, {}};
    } else if (const auto* x = std::get_if<ExtentClearRecord>(&r)) {
      c = FsChange{FsChange::Kind::Data, InodeNumber(x->ino), x->file_block * kBlockSize,
                   x->block_count * kBlockSize, {}};
    } else if (const auto* d = std::get_if<DirentRecord>(&r)) {
      c = FsChange{FsChange::Kind::Entry, InodeNumber(d->dir), 0, 0, d->name};
    } else if (const auto* d = std::get_if<DirentRemoveRecord>(&r)) {
      c = FsChange{FsChange::Kind::Entry, InodeNumber(d->dir), 0, 0, d->name};
    } else {
      // An inode freed (its names went first), a bad range (the failure flow
      // tells), an attribute (its inode's record comes with it).
      continue;
    }
    change_listener_(c);
  }
}

Result<void> FsImpl::apply_loaded(const format::JournalRecord& record) {
  auto applied = apply(record, {});
  if (applied.has_value() || !repairing_ || applied.error().code != EUCLEAN) return applied;
  repair_log_.push_back("dropped a record that cannot be applied: " + applied.error().message);
  return {};
}

Inode* FsImpl::find_for_apply(uint64_t ino, std::initializer_list<Inode*> locked) {
  for (Inode* inode : locked) {
    if (inode->ino.value() == ino) return inode;
  }
  const InodePtr* found = inodes_.find(ino);
  return found == nullptr ? nullptr : found->get();
}

Result<void> FsImpl::apply(const format::JournalRecord& record, std::initializer_list<Inode*> locked) {
  using namespace format;
  if (const auto* core = std::get_if<InodeCore>(&record)) {
    Inode* inode = find_for_apply(core->ino, locked);
    if (inode == nullptr) {
      InodePtr fresh = new_inode(InodeNumber(core->ino));
      if ((core->mode & kModeTypeMask) == kModeDirectory) {
        fresh->entries = std::make_unique<DirEntries>();
      }
      fresh->kind = file_type_of(core->mode);
      inode = fresh.get();
      inodes_.insert(core->ino, std::move(fresh));
      ++inode_count_;
      next_ino_ = std::max(next_ino_, core->ino + 1);
    } else if ((inode->core.mode & kModeTypeMask) != (core->mode & kModeTypeMask)) {
      return fail(EUCLEAN, "journal changes the file type of inode " + std::to_string(core->ino));
    }
    inode->core = *core;
    inode->changes.fetch_add(1, std::memory_order_relaxed);
    return {};
  }
  if (const auto* r = std::get_if<InodeFreeRecord>(&record)) {
    const InodePtr* found = inodes_.find(r->ino);
    if (found == nullptr) return fail(EUCLEAN, "journal frees unknown inode " + std::to_string(r->ino));
    Inode& inode = **found;
    if (!inode.extents.empty()) return fail(EUCLEAN, "journal frees inode " + std::to_string(r->ino) + " that still maps blocks");
    if (inode.entries && !inode.entries->empty()) return fail(EUCLEAN, "journal frees a non-empty directory");
    if (inode.entry_count != 0) {
      return fail(EUCLEAN, "journal frees inode " + std::to_string(r->ino) + " that a directory still names");
    }
    if (inode.xattrs) {
      for (const auto& [name, value] : *inode.xattrs) xattr_bytes_ -= format::xattr_bytes(name.size(), value.size());
      xattr_count_ -= inode.xattrs->size();
    }
    inode.freed = true;
    inodes_.erase(r->ino);
    --inode_count_;
    return {};
  }
  if (const auto* r = std::get_if<DirentRecord>(&record)) {
    Inode* dir = find_for_apply(r->dir, locked);
    Inode* child = find_for_apply(r->child, locked);
    if (dir == nullptr || !dir->is_dir() || child == nullptr) {
      return fail(EUCLEAN, "directory entry '" + r->name + "' links missing inodes");
    }
    if (!dir->entries->emplace(r->name, child).second) {
      return fail(EUCLEAN, "directory " + std::to_string(r->dir) + " has '" + r->name + "' twice");
    }
    child->parent = dir->ino;
    child->name = r->name;
    ++child->entry_count;
    ++dirent_count_;
    name_bytes_ += r->name.size();
    return {};
  }
  if (const auto* r = std::get_if<DirentRemoveRecord>(&record)) {
    Inode* dir = find_for_apply(r->dir, locked);
    auto it = dir != nullptr && dir->is_dir() ? dir->entries->find(r->name) : DirEntries::iterator();
    if (dir == nullptr || !dir->is_dir() || it == dir->entries->end()) {
      return fail(EUCLEAN, "journal removes missing entry '" + r->name + "'");
    }
    Inode* child = it->second;
    --child->entry_count;
    if (child->parent == dir->ino && child->name == r->name) child->name.clear();  // its latest name is gone
    dir->entries->erase(it);
    --dirent_count_;
    name_bytes_ -= r->name.size();
    return {};
  }
  if (const auto* r = std::get_if<ExtentRecord>(&record)) {
    Inode* inode = find_for_apply(r->ino, locked);
    if (inode == nullptr || inode->is_dir()) {
      return fail(EUCLEAN, "extent for missing or non-regular inode " + std::to_string(r->ino));
    }
    return apply_extent_set(*inode, *r);
  }
  if (const auto* r = std::get_if<BadRangeRecord>(&record)) {
    if (r->start_block >= sb_.size_blocks || r->block_count > sb_.size_blocks - r->start_block) {
      return fail(EUCLEAN, "bad range at device block " + std::to_string(r->start_block) + " lies outside the device");
    }
    std::vector<Range> fresh = bad_blocks_.add(Range{r->start_block, r->block_count});
    if (replaying_) return {};
    std::lock_guard lock(space_mutex_);
    for (const Range& f : fresh) fence_off_locked(DevRun{DevBlock(f.start), f.length});
    return {};
  }
  if (const auto* r = std::get_if<XattrRecord>(&record)) {
    Inode* inode = find_for_apply(r->ino, locked);
    if (inode == nullptr) return fail(EUCLEAN, "extended attribute of missing inode " + std::to_string(r->ino));
    if (!inode->xattrs) inode->xattrs = std::make_unique<Xattrs>();
    auto [it, fresh] = inode->xattrs->try_emplace(r->name);
    if (fresh) {
      ++xattr_count_;
    } else {
      xattr_bytes_ -= format::xattr_bytes(r->name.size(), it->second.size());
    }
    it->second = r->value;
    const uint64_t bytes = format::xattr_bytes(r->name.size(), r->value.size());
    xattr_bytes_ += bytes;
    if (bytes > xattr_record_max_.load(std::memory_order_relaxed)) xattr_record_max_.store(bytes);
    return {};
  }
  if (const auto* r = std::get_if<XattrRemoveRecord>(&record)) {
    Inode* inode = find_for_apply(r->ino, locked);
    auto it = inode != nullptr && inode->xattrs ? inode->xattrs->find(r->name) : Xattrs::iterator();
    if (inode == nullptr || !inode->xattrs || it == inode->xattrs->end()) {
      return fail(EUCLEAN, "journal removes a missing extended attribute of inode " + std::to_string(r->ino));
    }
    xattr_bytes_ -= format::xattr_bytes(r->name.size(), it->second.size());
    --xattr_count_;
    inode->xattrs->erase(it);
    return {};
  }
  if (std::holds_alternative<WrittenBackRecord>(record)) return {};  // for replay's gap rule only
  const auto& r = std::get<ExtentClearRecord>(record);
  Inode* inode = find_for_apply(r.ino, locked);
  if (inode == nullptr || inode->is_dir()) {
    return fail(EUCLEAN, "extent clear for missing or non-regular inode " + std::to_string(r.ino));
  }
  inode->changes.fetch_add(1, std::memory_order_relaxed);
  apply_extent_clear(*inode, FileBlock(r.file_block), r.block_count);
  return {};
}

Result<void> FsImpl::apply_extent_set(Inode& inode, const format::ExtentRecord& r) {
  inode.changes.fetch_add(1, std::memory_order_relaxed);
  if (r.dev_block < data_start_ || r.dev_block + r.block_count > data_end_) {
    return fail(EUCLEAN, "extent of inode " + std::to_string(r.ino) + " at device block " +
                             std::to_string(r.dev_block) + " lies outside the data area");
  }
  std::vector<Extent> removed;
  uint64_t before = inode.extents.extent_count();
  Extent m{FileBlock(r.file_block), DevBlock(r.dev_block), r.block_count, r.flags & ~format::kExtentShares};
  inode.extents.set(m, &removed);
  extent_count_ += inode.extents.extent_count();
  extent_count_ -= before;
  if (replaying_) return {};
  // Mappings stop showing the old layout, and pins of it drain, before any
  // block it had can be freed (I1).
  mappings_->invalidate(inode.ino, r.file_block, r.block_count);
  if (!removed.empty()) mappings_->wait_for_pins(inode.ino, r.file_block, r.block_count);
  std::lock_guard lock(space_mutex_);
  // Add first: a block remapped onto itself (unwritten -> written) never looks free.
  ownership_.add(DevRun{m.dev_block, m.block_count}, file_owner(inode.ino, m.file_block));
  std::vector<DevRun> orphaned;
  for (const Extent& old : removed) {
    ownership_.remove(DevRun{old.dev_block, old.block_count}, file_owner(inode.ino, old.file_block),
                      &orphaned);
  }
  for (const DevRun& run : orphaned) free_.add(run);
  return {};
}

void FsImpl::apply_extent_clear(Inode& inode, FileBlock start, uint64_t count) {
  std::vector<Extent> removed;
  uint64_t before = inode.extents.extent_count();
  inode.extents.clear(start, count, &removed);
  extent_count_ += inode.extents.extent_count();
  extent_count_ -= before;
  if (replaying_) return;
  mappings_->invalidate(inode.ino, start.value(), count);  // I1: revoke, drain, then free
  mappings_->wait_for_pins(inode.ino, start.value(), count);
  release_blocks(inode, removed);
}

void FsImpl::fence_off_locked(DevRun run) {
  std::vector<DevRun> was_free;
  free_.visit(run, [&](DevRun f) { was_free.push_back(f); });
  for (const DevRun& f : was_free) free_.remove(f);
  ownership_.add(run, bad_owner(run.start));
  // Failed memory under the kept checkpoint: it can stand in no more.
  for (const Claim& c : previous_held_) {
    if (c.run.start.value() < run.end().value() && run.start.value() < c.run.end().value()) {
      release_previous_locked();
      break;
    }
  }
}

void FsImpl::release_blocks(Inode& inode, const std::vector<Extent>& removed) {
  std::lock_guard lock(space_mutex_);
  std::vector<DevRun> orphaned;
  for (const Extent& old : removed) {
    ownership_.remove(DevRun{old.dev_block, old.block_count}, file_owner(inode.ino, old.file_block),
                      &orphaned);
  }
  for (const DevRun& run : orphaned) free_.add(run);
}

}  // namespace poise
