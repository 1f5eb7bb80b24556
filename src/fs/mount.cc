// Format, mount and unmount: choosing the superblock, loading the checkpoint,
// replaying the journal, rebuilding the reverse map, freeing orphans.
#include <absl/container/flat_hash_set.h>

#include <algorithm>
#include <cstring>

#include "base/random.h"
#include "failure/fault_handler.h"
#include "fs/fs_impl.h"

namespace poise {

namespace {
constexpr uint64_t kOrphanTxBytes = 4096;  // an extent clear and an inode free
}  // namespace

FsImpl::FsImpl(Device& device, MountOptions options)
    : device_(device),
      options_(options),
      clock_(options.clock != nullptr ? options.clock : &real_clock()),
      mappings_(std::make_shared<mapping::MappingRegistry>(device)),
      failure_handler_(std::make_unique<failure::FailureHandler>(*this, *mappings_)) {}

FsImpl::~FsImpl() {
  if (mounted_) (void)unmount();
  let_go_of_device();
}

void FsImpl::let_go_of_device() {
  if (watching_device_) {
    failure::unwatch_device(device_);
    watching_device_ = false;
  }
  std::vector<mapping::Notice> notices;
  mappings_->detach(&notices);
  mapping::MappingRegistry::deliver(notices);
  if (holder_registered_) {
    device_.set_poison_listener(nullptr);
    device_.unregister_holder(failure_handler_.get());
    holder_registered_ = false;
  }
}

Result<std::unique_ptr<Filesystem>> Filesystem::mount(Device& device, const MountOptions& options) {
  return std::unique_ptr<Filesystem>(TRY(FsImpl::open(device, options)));
}

Result<void> Filesystem::format(Device& device, const FormatOptions& options) {
  MountOptions mount_options;
  mount_options.clock = options.clock;
  FsImpl fs(device, mount_options);
  return fs.format_new(options);
}

bool Filesystem::holds_filesystem(const Device& device) {
  const uint64_t blocks = device.size_bytes() / kBlockSize;
  for (uint64_t at : {format::primary_superblock_block(), format::secondary_superblock_block(blocks)}) {
    format::BlockHeader header;
    if (!device.read(at * kBlockSize, &header, sizeof header).has_value()) continue;  // poisoned: try the other
    if (header.magic.get() == format::kMagic && header.kind.get() == format::kBlockSuperblock) return true;
  }
  return false;
}

Result<void> FsImpl::format_new(const FormatOptions& options) {
  uint64_t blocks = device_.size_bytes() / kBlockSize;
  if (device_.size_bytes() < kDeviceSizeMin) {
    return fail(EINVAL, "device is " + std::to_string(device_.size_bytes()) + " bytes; poise needs at least 16 MiB");
  }
  uint64_t journal_blocks = options.journal_blocks != 0 ? options.journal_blocks
                                                        : format::default_journal_blocks(blocks);
  if (journal_blocks < format::kJournalBlocksMin || journal_blocks > format::kJournalBlocksMax ||
      journal_blocks > blocks / 4) {
    return fail(EINVAL, "journal of " + std::to_string(journal_blocks) + " blocks does not fit 1 MiB..64 MiB "
                        "and a quarter of the device");
  }
  const uint32_t version = options.format_version != 0 ? options.format_version : format::kFormatVersion;
  if (version != format::kFormatVersion && version != format::kFormatVersionSingleCopy) {
    return fail(EINVAL, "format version " + std::to_string(version) + " cannot be written");
  }
  sb_ = format::SuperblockInfo{};
  sb_.version = version;
  sb_.size_blocks = blocks;
  sb_.feature_incompat = format::kIncompatReflink | format::kIncompatSymlinks | format::kIncompatXattrs |
                         format::kIncompatSpecialFiles | format::kIncompatWrittenBackMarks;
  fill_random(sb_.uuid.data(), sb_.uuid.size());
  sb_.journal_start_block = 1;
  sb_.journal_blocks = journal_blocks;
  sb_.created_ns = now();
  data_start_ = 1 + journal_blocks;
  data_end_ = blocks - 1;
  if (version == format::kFormatVersion) {
    sb_.journal_copy_start_block = format::default_journal_copy_block(blocks, journal_blocks);
  }
  // Zeroed journals: nothing left by an earlier filesystem can replay.
  device_.fill(kBlockSize, 0, journal_blocks * kBlockSize);
  if (sb_.has_copies()) device_.fill(sb_.journal_copy_start_block * kBlockSize, 0, journal_blocks * kBlockSize);
  journal_ = std::make_unique<Journal>(device_, 1, journal_blocks, sb_.journal_copy_start_block);
  int64_t t = now();
  format::InodeCore root{kRootInode.value(), format::kModeDirectory | 0755, 2, options_.uid, options_.gid, 0, t, t, t};
  TRY(apply(root, {}));
  root_ = find_inode(kRootInode).get();
  root_->parent = kRootInode;
  // Memory the device already knows is bad is fenced off from the start.
  for (const BadRange& b : TRY(device_.bad_ranges())) {
    DevRun run = blocks_covering(b.offset_bytes, b.length_bytes, blocks);
    if (run.count == 0) continue;
    const bool in_copy = sb_.has_copies() && run.end().value() > sb_.journal_copy_start_block &&
                         run.start.value() < sb_.journal_copy_start_block + journal_blocks;
    if (run.start.value() < data_start_ || run.end().value() > data_end_ || in_copy) {
      return fail(EIO, "device bytes " + std::to_string(b.offset_bytes) + ".." +
                           std::to_string(b.offset_bytes + b.length_bytes) +
                           " are bad and overlap a superblock or journal; cannot format this device");
    }
    bad_blocks_.add(Range{run.start.value(), run.count});
  }
  TRY(rebuild_space(&ownership_, &free_));
  TRY(write_checkpoint());
  TRY(device_.sync());
  return {};
}

Result<void> FsImpl::load() {
  const uint64_t device_blocks = device_.size_bytes() / kBlockSize;
  if (device_.size_bytes() < kDeviceSizeMin) {
    return fail(EUCLEAN, "device is " + std::to_string(device_.size_bytes()) +
                             " bytes, smaller than any poise filesystem (16 MiB)");
  }
  alignas(64) std::byte block[kBlockSize];
  auto read_sb = [&](uint64_t at, const char* which) -> Result<format::SuperblockInfo> {
    TRY(read_block(at, block));
    return format::decode_superblock(block, at, which);
  };
  auto primary = read_sb(format::primary_superblock_block(), "primary superblock");
  if (primary.has_value() && primary->size_blocks > device_blocks) {
    return fail(EUCLEAN, "image is truncated: the superblock describes " +
                             std::to_string(primary->size_blocks * kBlockSize) + " bytes but the device has " +
                             std::to_string(device_.size_bytes()));
  }
  uint64_t secondary_at = format::secondary_superblock_block(primary.has_value() ? primary->size_blocks : device_blocks);
  auto secondary = read_sb(secondary_at, "secondary superblock");
  if (!primary.has_value() && !secondary.has_value()) {
    int code = primary.error().code == ENOTSUP || secondary.error().code == ENOTSUP ? ENOTSUP
                                                                                     : primary.error().code;
    if (primary.error().message.find("bad magic") != std::string::npos &&
        secondary.error().message.find("bad magic") != std::string::npos) {
      return fail(EUCLEAN, "not a poise filesystem (no superblock magic at the first or last block)");
    }
    return fail(code, "no valid superblock: " + primary.error().message + "; " + secondary.error().message);
  }
  superblock_notes_.clear();
  if (!primary.has_value()) {
    sb_ = *secondary;
    superblock_notes_.push_back(primary.error().message + " (using the secondary copy)");
  } else if (!secondary.has_value()) {
    sb_ = *primary;
    superblock_notes_.push_back(secondary.error().message + " (using the primary copy)");
  } else {
    sb_ = primary->sequence >= secondary->sequence ? *primary : *secondary;
    if (primary->sequence != secondary->sequence) {
      superblock_notes_.push_back("superblock copies differ in sequence (" + std::to_string(primary->sequence) +
                                  " vs " + std::to_string(secondary->sequence) + "); the newer is used");
    }
  }
  if (sb_.size_blocks > device_blocks) {
    return fail(EUCLEAN, "image is truncated: the superblock describes " +
                             std::to_string(sb_.size_blocks * kBlockSize) + " bytes but the device has " +
                             std::to_string(device_.size_bytes()));
  }
  if (options_.mode == MountMode::ReadWrite && (sb_.feature_ro_compat & ~format::kRoCompatKnown) != 0) {
    return fail(EROFS, "image has read-only-compatible features this poise does not know; mount read-only");
  }
  data_start_ = sb_.journal_start_block + sb_.journal_blocks;
  data_end_ = format::secondary_superblock_block(sb_.size_blocks);
  journal_ = std::make_unique<Journal>(device_, sb_.journal_start_block, sb_.journal_blocks,
                                       sb_.journal_copy_start_block);

  // Failed journal memory is never read (a real machine check would kill us):
  // replay takes every transaction from a copy where none of it lies on failed
  // memory. A read-write mount refuses a journal with failed memory in every copy.
  Journal::ReplayOptions replay_options;
  std::vector<std::string> journal_copy_notes;
  replay_options.copy_notes = &journal_copy_notes;
  const uint64_t journal_bytes = sb_.journal_blocks * kBlockSize;
  const auto device_bad = TRY(device_.bad_ranges());
  uint32_t failed_copies = 0;
  uint64_t first_failed = 0;
  for (uint32_t c = 0; c < journal_->copies(); ++c) {
    const uint64_t journal_offset = (c == 0 ? sb_.journal_start_block : sb_.journal_copy_start_block) * kBlockSize;
    auto& failed = replay_options.failed[c];
    for (const BadRange& b : device_bad) {
      const uint64_t s = std::max(b.offset_bytes, journal_offset);
      const uint64_t e = std::min(b.offset_bytes + b.length_bytes, journal_offset + journal_bytes);
      if (s >= e) continue;
      // Whole blocks, as the filesystem fences them.
      failed.emplace_back((s - journal_offset) / kBlockSize * kBlockSize,
                          std::min(journal_bytes, ceil_blocks(e - journal_offset) * kBlockSize));
    }
    if (failed.empty()) continue;
    if (failed_copies++ == 0) first_failed = journal_offset + failed.front().first;
  }
  if (failed_copies == journal_->copies() && options_.mode == MountMode::ReadWrite) {
    return fail(EIO, "the journal's memory failed (in every copy; first at device byte " +
                         std::to_string(first_failed) + "); mount read-only to copy the data out");
  }
  replaying_ = true;
  std::string gap_note;
  if (!fallback_reason_.empty()) {
    TRY(load_previous_checkpoint());
  } else if (auto loaded = load_checkpoint(sb_.checkpoint_root_block, sb_.checkpoint_copy_root_block,
                                           sb_.checkpoint_generation);
             !loaded.has_value()) {
    newest_unreadable_ = true;  // open() may fall back to the previous checkpoint
    return loaded;
  }
  // A repair ends the log at damage in mid-log too, and reports what lies past it.
  if (device_.domain() == PersistenceDomain::PageCache || repairing_) replay_options.gap_note = &gap_note;
  if (repairing_) {
    replay_options.lost = &lost_transactions_;
    replay_options.gap_even_if_written_back = true;
  }
  replay_options.machine_checks = &failed_at_load_;  // fed to the failure flow with the device's list
  uint64_t replayed = TRY(journal_->replay(
      sb_.checkpoint_generation,
      [&](const format::DecodedTx& tx) -> Result<void> {
        for (const auto& record : tx.records) TRY(replay_record(record));
        return {};
      },
      replay_options));
  mount_notes_.clear();
  if (!gap_note.empty()) {  // kept for check(): no checkpoint clears it
    mount_notes_.push_back(gap_note);
    mount_warnings_.push_back(gap_note);
  }
  if (fallback_reason_.empty()) read_previous_roots();  // its blocks stay held
  constexpr size_t kCopyNotesMax = 8;
  if (journal_copy_notes.size() > kCopyNotesMax) {
    const size_t more = journal_copy_notes.size() - kCopyNotesMax;
    journal_copy_notes.resize(kCopyNotesMax);
    journal_copy_notes.push_back("... and " + std::to_string(more) + " more journal transactions read from copy 2");
  }
  copy_notes_.insert(copy_notes_.end(), journal_copy_notes.begin(), journal_copy_notes.end());
  replaying_ = false;
  // A tree that checksums cannot vouch for (a cycle, a directory with two names,
  // a link count below the names) would hang rename or free a named file: a
  // read-write mount refuses it; a read-only one lets the data be copied out.
  if (auto tree = verify_tree(); !tree.has_value() && options_.mode == MountMode::ReadWrite && !repairing_) {
    return fail(EUCLEAN, tree.error().message + "; mount read-only to copy the data out (poise check lists all)");
  }
  if (!fallback_reason_.empty()) find_stale_previous();
  if (repairing_) {
    TRY(rebuild_space_dropping_conflicts());
  } else if (auto built = rebuild_space(&ownership_, &free_); !built.has_value()) {
    // A kept checkpoint let go for space before a crash may lie under new data:
    // it is let go again. Anything else is damage.
    if (!previous_ || !fallback_reason_.empty()) return built;
    previous_notes_.push_back("the previous checkpoint, kept for a fallback, overlaps what is in use (" +
                              built.error().message + ")");
    mount_notes_.push_back(previous_notes_.back() + "; it is let go");
    previous_.reset();
    carried_.reset();
    previous_released_ = true;
    ownership_ = OwnershipMap{};
    free_ = FreeSpace{};
    TRY(rebuild_space(&ownership_, &free_));
  }
  {
    std::lock_guard lock(space_mutex_);
    note_previous_held_locked();  // rebuild_space claimed them
  }
  check_replayed_sharing();
  // Two files writing one block each believing it their own would corrupt both.
  if (!sharing_problems_.empty() && options_.mode == MountMode::ReadWrite && !repairing_) {
    return fail(EUCLEAN, sharing_problems_.front() + "; mount read-only to copy the data out");
  }
  mounted_ = true;
  mappings_->attach(this);
  if (device_.map_fd() >= 0) failure::install_fault_handler();
  if (device_.reports_machine_checks()) {
    // Real memory: hear of its failures early, wherever the kernel names them.
    failure::install_fault_handler();
    failure::start_machine_check_thread();
    failure::watch_device(device_);
    watching_device_ = true;
  }
  if (options_.mode == MountMode::ReadOnly) {
    // A read-only mount hears of failures and removal too: its mappings must be
    // revoked and its owners told as a read-write mount's are (records stay in
    // memory). Another holder of this very Device object (a read-write mount in
    // this process, which hears of it already) is left in place.
    if (device_.register_holder(failure_handler_.get()).has_value()) {
      device_.set_poison_listener(mappings_.get());
      holder_registered_ = true;
    }
    TRY(take_in_device_bad_ranges());  // known in memory only: nothing is written
    return {};
  }
  if (!gap_note.empty()) TRY(journal_->erase_tail());  // before anything new is committed
  if (device_.domain() == PersistenceDomain::PageCache) {
    // What was replayed reaches the backing file now; from here on each
    // transaction may say how far the log had been written back (the gap rule).
    TRY(journal_->write_back());
  }
  TRY(device_.register_holder(failure_handler_.get()));
  device_.set_poison_listener(mappings_.get());
  holder_registered_ = true;
  TRY(take_in_device_bad_ranges());  // flow 2: before the mount completes
  if (device_.domain() == PersistenceDomain::PageCache) {
    TRY(enable_feature(format::kIncompatWrittenBackMarks));
    journal_->enable_written_back_marks();
  }
  {
    auto lost = bad_overlap(DevBlock(sb_.journal_start_block), sb_.journal_blocks);
    if (lost && sb_.has_copies()) lost = bad_overlap(DevBlock(sb_.journal_copy_start_block), sb_.journal_blocks);
    if (lost) {
      mounted_ = false;
      return fail(EIO, "the journal's memory failed (in every copy) at device block " +
                           std::to_string(lost->start.value()) + "; mount read-only to copy the data out");
    }
  }

  // Files unlinked while open when the filesystem last stopped: free them now.
  std::vector<InodePtr> orphans;
  for (const auto& [ino, inode] : inodes_) {
    if (!inode->is_dir() && inode->core.nlink == 0 && inode->entry_count == 0) orphans.push_back(inode);
  }
  // Each is freed by a journaled transaction, like any unlink: the blocks it
  // frees may be reused at once, so the freeing must be as durable as the reuse.
  for (const InodePtr& orphan : orphans) {
    auto op = begin_op(kOrphanTxBytes, Journal::Use::Freeing);
    if (!op.has_value()) break;  // no room to journal it now: it stays allocated, harmless, for the next mount
    std::unique_lock ns(ns_mutex_);
    std::unique_lock lock(orphan->lock);
    Records records;
    free_inode_records(*orphan, 0, &records);
    commit(*op, records, {orphan.get()});
  }
  // The replayed journal simply goes on (its transactions stay until the next
  // checkpoint), so a mount never needs free space. A damaged superblock or
  // checkpoint copy is rewritten by a checkpoint when there is room; until then
  // the note stays. A version 1 image gains its second copies the same way.
  (void)replayed;
  if (!sb_.has_copies() && options_.upgrade_format) {
    if (auto added = add_second_copies(); !added.has_value()) {
      if (added.error().code != ENOSPC) return added;
      mount_notes_.push_back("format version 1 (one copy of the metadata) kept: " + added.error().message);
    }
  }
  if (!superblock_notes_.empty() || !copy_notes_.empty()) {
    std::unique_lock quiet(gate_);  // the checkpoint keeps what it rewrote among the notes
    if (auto written = write_checkpoint(); !written.has_value() && written.error().code != ENOSPC) return written;
  }
  return {};
}

Result<void> FsImpl::verify_tree() const {
  // Every directory but the root has exactly one name, so its parent is known;
  // walking up from each must reach the root within as many steps as there are
  // directories (memoized: each directory is walked once).
  absl::flat_hash_map<uint64_t, uint32_t> subdirs;
  absl::flat_hash_set<uint64_t> rooted{kRootInode.value()};
  uint64_t directories = 0;
  for (const auto& [ino, inode] : inodes_) directories += inode->is_dir();
  for (const auto& [ino, inode] : inodes_) {
    const std::string who = "inode " + std::to_string(ino);
    if (!inode->is_dir()) {
      if (inode->core.nlink != inode->entry_count) {
        return fail(EUCLEAN, who + ": link count " + std::to_string(inode->core.nlink) + " but " +
                                 std::to_string(inode->entry_count) + " names");
      }
      continue;
    }
    if (ino == kRootInode.value()) {
      if (inode->entry_count != 0) return fail(EUCLEAN, "the root directory is named by another directory");
      continue;
    }
    if (inode->entry_count != 1) {
      return fail(EUCLEAN, "directory " + std::to_string(ino) + " has " + std::to_string(inode->entry_count) +
                               " names (a directory has exactly one)");
    }
    ++subdirs[inode->parent.value()];
    std::vector<uint64_t> path;
    uint64_t at = ino;
    while (!rooted.contains(at)) {
      if (path.size() > directories) {
        return fail(EUCLEAN, "directory " + std::to_string(ino) + " is in a cycle: it cannot be reached from the root");
      }
      path.push_back(at);
      InodePtr up = find_inode(find_inode(InodeNumber(at))->parent);
      if (up == nullptr || !up->is_dir()) return fail(EUCLEAN, "directory " + std::to_string(at) + " has no parent");
      at = up->ino.value();
    }
    rooted.insert(path.begin(), path.end());
  }
  for (const auto& [ino, inode] : inodes_) {
    if (!inode->is_dir()) continue;
    const uint32_t expected = 2 + subdirs[ino];
    if (inode->core.nlink != expected) {
      return fail(EUCLEAN, "directory " + std::to_string(ino) + ": link count " + std::to_string(inode->core.nlink) +
                               ", but it has " + std::to_string(expected - 2) + " subdirectories");
    }
  }
  return {};
}

Result<void> FsImpl::rebuild_space_dropping_conflicts() {
  // Bounded: each round drops at least one file extent's claim.
  for (uint64_t round = 0;; ++round) {
    std::optional<OwnershipMap::Conflict> conflict;
    ownership_ = OwnershipMap{};
    free_ = FreeSpace{};
    auto built = rebuild_space(&ownership_, &free_, &conflict);
    if (built.has_value()) return {};
    if (!conflict || round > extent_count_.load() + 1) return built;
    std::string metadata;
    for (const Owner& o : conflict->owners) {
      if (o.is_metadata()) metadata = to_string(static_cast<MetadataKind>(o.id & 0xFF));
    }
    bool dropped = false;
    for (const Owner& o : conflict->owners) {
      if (!o.is_file() || metadata.empty()) continue;
      replaying_ = true;  // in memory only: the repair's checkpoint writes it
      auto cleared = apply(format::ExtentClearRecord{o.id, o.offset_blocks, conflict->run.count}, {});
      replaying_ = false;
      if (!cleared.has_value()) return built;
      repair_log_.push_back("inode " + std::to_string(o.id) + ": unmapped file blocks " +
                            std::to_string(o.offset_blocks) + ".." + std::to_string(o.offset_blocks + conflict->run.count) +
                            ", which lay on the " + metadata + " (device block " +
                            std::to_string(conflict->run.start.value()) + ")");
      dropped = true;
    }
    if (!dropped) return built;  // metadata over metadata: nothing a repair can choose
  }
}

Result<void> FsImpl::add_second_copies() {
  // The journal's second copy: journal_blocks contiguous free blocks, from the
  // end of the device if they are free there.
  const uint64_t want = sb_.journal_blocks;
  std::optional<DevRun> run;
  {
    std::lock_guard lock(space_mutex_);
    if (available_blocks_locked() < want + 2 * checkpoint_reserve_blocks()) {
      return fail(ENOSPC, "adding the second metadata copies needs " +
                              std::to_string(want + 2 * checkpoint_reserve_blocks()) + " free blocks");
    }
    run = free_.allocate(want, free_.free_block_from(DevBlock(format::default_journal_copy_block(sb_.size_blocks, want))));
    if (run && run->count < want) {
      free_.add(*run);
      run = free_.allocate(want, std::nullopt);
    }
    if (!run || run->count < want) {
      if (run) free_.add(*run);
      return fail(ENOSPC, "the second journal copy needs " + std::to_string(want) + " contiguous free blocks");
    }
  }
  device_.fill(run->start.value() * kBlockSize, 0, want * kBlockSize);
  TRY(device_.sync_range(run->start.value() * kBlockSize, want * kBlockSize));
  auto single = std::move(journal_);
  journal_ = std::make_unique<Journal>(device_, sb_.journal_start_block, want, run->start.value());
  if (device_.domain() == PersistenceDomain::PageCache) journal_->enable_written_back_marks();
  sb_.journal_copy_start_block = run->start.value();
  {
    std::lock_guard lock(space_mutex_);
    ownership_.add(*run, metadata_owner(MetadataKind::Journal, kSecondCopyOffset));
  }
  std::unique_lock quiet(gate_);
  auto written = write_checkpoint();  // both copies, and a version 2 superblock
  if (!written.has_value() && mounted_) {  // not switched: still version 1, as before
    sb_.journal_copy_start_block = 0;
    journal_ = std::move(single);
    std::lock_guard lock(space_mutex_);
    std::vector<DevRun> orphaned;
    ownership_.remove(*run, metadata_owner(MetadataKind::Journal, kSecondCopyOffset), &orphaned);
    for (const DevRun& r : orphaned) free_.add(r);
  }
  return written;
}

bool FsImpl::journal_wants_checkpoint() const {
  return journal_->used_bytes() > journal_->capacity_bytes() / 2;
}

Result<void> FsImpl::checkpoint(CheckpointMode mode) {
  TRY(check_writable());
  for (;;) {  // frozen for a removal: nothing may be written until the thaw (I4)
    TRY(wait_until_thawed());
    std::unique_lock quiet(gate_);
    if (frozen_flag_.load(std::memory_order_acquire)) continue;
    if (!mounted_) return fail(EIO, "filesystem has shut down");
    return write_checkpoint(mode);
  }
}

Result<void> FsImpl::unmount() {
  if (!mounted_) return fail(EIO, "filesystem is not mounted");
  if (mappings_->holds_any_pin()) {  // unmount waits for pins: this one would never go
    return fail(EBUSY, "this thread holds a pin of the filesystem: release it before unmounting");
  }
  if (options_.mode == MountMode::ReadWrite) {
    std::unique_lock quiet(gate_);
    mappings_->flush_writable(std::nullopt);
    // Everything is durable in the journal already: a checkpoint is written only
    // when the journal is filling up, so that an unmount costs what the session
    // changed, and the next mount replays a bounded log. No room for one is no
    // error: the journal keeps it all.
    if (journal_wants_checkpoint()) {
      if (auto written = write_checkpoint(); !written.has_value() && written.error().code != ENOSPC) return written;
    }
    TRY(sync_device());
    bool released = false;
    {
      std::lock_guard lock(space_mutex_);
      released = previous_released_;
    }
    if (released) TRY(rewrite_superblocks());  // stop naming a kept checkpoint whose blocks were let go
    // The log's end is marked written back too (the gap rule then covers this
    // session's last transactions; a mark only on an emulated device).
    TRY(journal_->seal_written_back());
  }
  stop_accepting();
  let_go_of_device();
  return {};
}

}  // namespace poise

namespace poise {

void FsImpl::stop_accepting() {
  {
    std::lock_guard lock(freeze_mutex_);
    mounted_ = false;  // frozen writers and waiting mapped accesses wake up to an error
  }
  thawed_.notify_all();
}

void FsImpl::shutdown() {
  stop_accepting();
  { std::unique_lock quiet(gate_); }  // operations in flight finish; nothing more is written
  std::vector<mapping::Notice> notices;
  mappings_->kill_all(MappingCause::Shutdown, &notices);  // every mapped access fails from now on
  mapping::MappingRegistry::deliver(notices);
}

}  // namespace poise
