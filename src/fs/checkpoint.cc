// Checkpoints: the whole metadata state written to free blocks, made current by
// rewriting both superblocks, after which the old checkpoint's blocks are freed
// and the journal starts a new generation. A crash at any point leaves either the
// old checkpoint with its journal or the new one with an empty journal.
#include <algorithm>
#include <cstring>

#include "format/block.h"
#include "format/journal_format.h"
#include "fs/fs_impl.h"

namespace poise {

namespace {
using format::BlockRun;
using format::RunCursor;
using format::SectionId;

MetadataKind section_metadata_kind(uint32_t section) {
  switch (section) {
    case format::kSectionInodes: return MetadataKind::InodeTable;
    case format::kSectionDirents: return MetadataKind::Directory;
    case format::kSectionExtents: return MetadataKind::ExtentMap;
    case format::kSectionBadRanges: return MetadataKind::BadRangeList;
    default: return MetadataKind::RefcountList;
  }
}

// Reads a section of fixed-size records, handing each one to `each`.
template <class Disk, class ReadCopies, class Each>
Result<void> read_fixed_records(const ReadCopies& read_copies, SectionId id, Each&& each) {
  return read_copies(id, [&](const unsigned char* p, size_t bytes, uint32_t records) -> Result<void> {
    if (records * sizeof(Disk) > bytes) {
      return fail(EUCLEAN, std::string(format::block_kind_name(format::section_block_kind(id))) + " block overfull");
    }
    for (uint32_t i = 0; i < records; ++i) {
      Disk d;
      std::memcpy(&d, p + i * sizeof d, sizeof d);
      TRY(each(d));
    }
    return {};
  });
}

}  // namespace

Result<void> FsImpl::read_block(uint64_t block, std::byte* out) const {
  auto r = device_.read(block * kBlockSize, out, kBlockSize);
  if (!r.has_value()) {
    // Memory that failed under the copy: told to the failure flow once the mount
    // can take it (the other copy stands in meanwhile).
    if (auto failed = Device::take_failed_read()) failed_at_load_.push_back(*failed);
  }
  return r;
}

Result<void> FsImpl::write_superblocks(uint64_t root_block, uint64_t copy_root_block, uint64_t generation) {
  alignas(64) std::byte block[kBlockSize];
  {
    std::lock_guard lock(space_mutex_);
    if (previous_released_) name_previous_in_superblock(std::nullopt, std::nullopt);
  }
  sb_.sequence += 1;
  sb_.checkpoint_root_block = root_block;
  sb_.checkpoint_copy_root_block = copy_root_block;
  sb_.checkpoint_generation = generation;
  sb_.written_ns = now();
  // One copy at a time: a crash tears at most one, and the other stays valid.
  // sync_range, not just drain: on an emulated device the page cache could
  // otherwise write the superblock back before the checkpoint it points at.
  encode_superblock(sb_, format::primary_superblock_block(), block);
  device_.write(format::primary_superblock_block() * kBlockSize, block, kBlockSize);
  TRY(device_.sync_range(format::primary_superblock_block() * kBlockSize, kBlockSize));
  uint64_t secondary = format::secondary_superblock_block(sb_.size_blocks);
  encode_superblock(sb_, secondary, block);
  device_.write(secondary * kBlockSize, block, kBlockSize);
  TRY(device_.sync_range(secondary * kBlockSize, kBlockSize));
  for (const std::string& note : superblock_notes_) mount_notes_.push_back(note + " [both copies rewritten]");
  superblock_notes_.clear();
  std::lock_guard lock(space_mutex_);
  previous_released_ = false;
  return {};
}

// The claims of one copy of a checkpoint: its root and every section run.
void claims_of_copy(const format::CheckpointRootInfo& root, uint64_t root_block, uint32_t copy,
                    std::vector<Claim>* claims) {
  const uint64_t base = copy == 0 ? 0 : kSecondCopyOffset;
  claims->push_back({DevRun{DevBlock(root_block), 1}, metadata_owner(MetadataKind::CheckpointRoot, base)});
  uint64_t root_offset = base + 1;  // run-list links count as the root's continuation
  for (uint32_t s = 0; s < format::kSectionCount; ++s) {
    uint64_t offset = base;
    for (const BlockRun& run : root.sections[s].runs) {
      claims->push_back({DevRun{DevBlock(run.start_block), run.block_count},
                         metadata_owner(section_metadata_kind(s), offset)});
      offset += run.block_count;
    }
    for (uint64_t link : root.sections[s].list_blocks) {
      claims->push_back({DevRun{DevBlock(link), 1}, metadata_owner(MetadataKind::CheckpointRoot, root_offset++)});
    }
  }
  uint64_t offset = base;
  for (const BlockRun& run : root.delta.runs) {
    claims->push_back({DevRun{DevBlock(run.start_block), run.block_count},
                       metadata_owner(MetadataKind::CheckpointDelta, offset)});
    offset += run.block_count;
  }
  for (uint64_t link : root.delta.list_blocks) {
    claims->push_back({DevRun{DevBlock(link), 1}, metadata_owner(MetadataKind::CheckpointRoot, root_offset++)});
  }
}

void FsImpl::checkpoint_claims(std::vector<Claim>* claims) const {
  if (checkpoint_root_block_ != 0) claims_of_copy(checkpoint_, checkpoint_root_block_, 0, claims);
  if (checkpoint_copy_root_block_ != 0) claims_of_copy(checkpoint_copy_, checkpoint_copy_root_block_, 1, claims);
}

void FsImpl::count_checkpoint_blocks() {
  std::vector<Claim> claims;
  checkpoint_claims(&claims);
  uint64_t blocks = 0;
  for (const Claim& c : claims) blocks += c.run.count;
  std::lock_guard lock(space_mutex_);
  checkpoint_blocks_ = blocks;
}

// A section may hold only kSectionExtentsMax runs: continue at the hint only if
// the whole rest fits there, otherwise take the best-fitting (or largest) run.
std::optional<DevRun> FsImpl::allocate_checkpoint_run(uint64_t want, std::optional<DevBlock> hint) {
  auto run = free_.allocate(want, hint);
  if (!run || run->count == want || !hint) return run;
  free_.add(*run);
  return free_.allocate(want, std::nullopt);
}

// Half the data area away from copy 1's root (wrapping), or the next free
// block after that: one failing stretch of memory is unlikely to hold both.
std::optional<DevBlock> FsImpl::second_copy_hint(uint64_t first_root) const {
  const uint64_t area = data_end_ - data_start_;
  uint64_t target = first_root + area / 2;
  if (target >= data_end_) target -= area;
  return free_.free_block_from(DevBlock(target));
}

// An incremental checkpoint keeps the current one's sections (its base) and
// appends this generation's journal to its delta: it writes what changed since
// the last checkpoint, not what the filesystem holds. A full one is written
// instead when one is due (failed or damaged metadata, a format upgrade, a
// repair), when the delta would outgrow a quarter of its base, or when the
// space it takes could leave too little for the full checkpoint after it.
const std::vector<std::byte>* FsImpl::verified_log(CheckpointPlacement* placed) {
  if (!placed->log_read) {
    placed->log_read = true;
    auto log = journal_->copy_log();
    auto verified = [this](const std::vector<std::byte>& l) {
      return format::decode_log(l, checkpoint_.generation, [](const format::DecodedTx&) -> Result<void> { return {}; })
          .has_value();
    };
    if (log.has_value() && verified(*log)) placed->log = std::move(*log);
  }
  return placed->log ? &*placed->log : nullptr;
}

Result<bool> FsImpl::place_delta_checkpoint(uint64_t generation, CheckpointPlacement* placed) {
  if (!sb_.has_copies() || sb_.version != format::kFormatVersion || !copy_notes_.empty() ||
      !superblock_notes_.empty() || checkpoint_root_block_ == 0 || checkpoint_copy_root_block_ == 0 ||
      checkpoint_.base_generation == 0 || journal_->generation() != checkpoint_.generation || repairing_) {
    return false;
  }
  // Both copies must hold the same base and delta: a delta extends each copy
  // where it lies, so a copy known only in part is written anew, in full.
  {
    bool same = checkpoint_copy_.base_generation == checkpoint_.base_generation &&
                checkpoint_copy_.delta.blocks() == checkpoint_.delta.blocks();
    for (uint32_t s = 0; s < format::kSectionCount; ++s) {
      same = same && checkpoint_copy_.sections[s].blocks() == checkpoint_.sections[s].blocks();
    }
    if (!same) return false;
  }
  const uint64_t journal_bytes = journal_->used_bytes();
  const uint64_t added = format::delta_blocks_for(journal_bytes);
  uint64_t base_blocks = 0;
  for (const auto& section : checkpoint_.sections) base_blocks += section.blocks();
  constexpr uint64_t kDeltaBlocksMin = 64;
  if (checkpoint_.delta.blocks() + added > std::max(kDeltaBlocksMin, base_blocks / 4)) return false;
  // A log that no longer decodes takes a full checkpoint (built from memory).
  const std::vector<std::byte>* journal = verified_log(placed);
  if (journal == nullptr) return false;

  const format::CheckpointRootInfo* current[2] = {&checkpoint_, &checkpoint_copy_};
  const uint64_t old_blocks = checkpoint_.delta.blocks();
  std::lock_guard lock(space_mutex_);
  {
    // Each copy: a root, the new delta blocks, a run list for the whole delta.
    const uint64_t links = format::run_list_blocks_needed(checkpoint_.delta.runs.size() + added, 0);
    const uint64_t need = 2 * (1 + added + links);
    const uint64_t keep = reserved_blocks_ + 2 * checkpoint_reserve_blocks();
    if (free_.free_blocks() < need + keep) return false;
  }
  placed->copies = 2;
  auto undo = [&] {
    for (const DevRun& a : placed->allocated) free_.add(a);
    placed->allocated.clear();
    return false;
  };
  for (uint32_t c = 0; c < 2; ++c) {
    format::CheckpointRootInfo& root = placed->roots[c];
    root = *current[c];
    root.generation = generation;
    root.next_ino = next_ino_;
    root.delta.list_blocks.clear();
    std::optional<DevBlock> hint = c == 1 ? second_copy_hint(placed->root_blocks[0]) : std::nullopt;
    auto r = free_.allocate(1, hint);
    if (!r) return undo();
    placed->allocated.push_back(*r);
    placed->root_blocks[c] = r->start.value();
    hint = r->end();
    for (uint64_t got = 0; got < added;) {
      auto run = allocate_checkpoint_run(added - got, hint);
      if (!run) return undo();
      placed->allocated.push_back(*run);
      root.delta.runs.push_back(BlockRun{run->start.value(), run->count});
      got += run->count;
      hint = run->end();
    }
    root.delta.records = old_blocks + added;
    for (uint64_t n = format::run_list_blocks_needed(root.delta.runs.size(), 0); n > 0; --n) {
      auto link = free_.allocate(1, hint);
      if (!link) return undo();
      placed->allocated.push_back(*link);
      root.delta.list_blocks.push_back(link->start.value());
      hint = link->end();
    }
  }
  // The new delta blocks hold this generation's journal as it lies in the log,
  // sealed for the generation it was written in.
  const uint64_t journal_generation = checkpoint_.generation;
  std::vector<RunCursor> cursors{RunCursor(placed->roots[0].delta.runs), RunCursor(placed->roots[1].delta.runs)};
  format::encode_delta_segment(journal->data(), journal->size(), old_blocks,
                               [&](uint32_t index, std::byte* block, uint32_t used) {
    for (RunCursor& cursor : cursors) {
      const uint64_t at = cursor.block_at(index);
      format::seal_block(block, format::kBlockDelta, at, journal_generation, used);
      device_.write(at * kBlockSize, block, kBlockSize);
    }
  });
  return true;
}

Result<void> FsImpl::write_checkpoint(CheckpointMode mode) {
  std::shared_lock ns(ns_mutex_);
  const uint64_t generation = checkpoint_.generation + 1;
  // Taken now: a range fenced while this checkpoint is built sets it again.
  const bool due = full_checkpoint_due_.exchange(false, std::memory_order_relaxed);
  // The current checkpoint may be kept as the previous one only where it and
  // this generation's journal say all that memory holds: not when something
  // was changed in memory only (a repair, a fence without a journal record, an
  // upgrade: `due`), nor when a copy of it or of the superblock was found bad
  // or it was itself loaded in a fallback.
  // An image gaining sharing marks now keeps none: the journal it would carry
  // has reflinks without their marks, which a fallback would take for
  // cross-links.
  const bool may_keep = !due && !repairing_ && copy_notes_.empty() && superblock_notes_.empty() &&
                        (sb_.feature_incompat & format::kIncompatSharingMarks) != 0 &&
                        sb_.version == format::kFormatVersion && sb_.has_copies() && checkpoint_root_block_ != 0 &&
                        checkpoint_copy_root_block_ != 0 && fallback_reason_.empty() &&
                        journal_->generation() == checkpoint_.generation;
  {
    // The kept checkpoint goes first when space is short.
    std::lock_guard lock(space_mutex_);
    if (free_.free_blocks() < reserved_blocks_ + 2 * checkpoint_reserve_blocks()) release_previous_locked();
  }
  auto attempt = [&]() -> Result<void> {
    CheckpointPlacement placed;
    placed.may_keep_previous = may_keep;
    if (mode == CheckpointMode::Auto && !due && TRY(place_delta_checkpoint(generation, &placed))) {
      return make_checkpoint_current(generation, &placed);
    }
    TRY(place_full_checkpoint(generation, &placed));
    return make_checkpoint_current(generation, &placed);
  };
  auto written = attempt();
  if (!written.has_value() && written.error().code == ENOSPC) {
    bool released = false;
    {
      std::lock_guard lock(space_mutex_);
      released = previous_.has_value();
      release_previous_locked();
    }
    if (released) written = attempt();
  }
  if (!written.has_value() && due) full_checkpoint_due_.store(true, std::memory_order_relaxed);
  return written;
}

Result<void> FsImpl::place_full_checkpoint(uint64_t generation, CheckpointPlacement* placed) {
  format::CheckpointRootInfo base_root;  // what both copies' roots say, but where their blocks are
  base_root.generation = generation;
  base_root.base_generation = generation;
  base_root.next_ino = next_ino_;

  // Pass 1: how many blocks each section needs.
  Records extent_records;
  uint64_t dirent_bytes_in_blocks = 0;
  format::SectionWriter dirent_counter([&](uint32_t, std::byte*, uint32_t) { ++dirent_bytes_in_blocks; });
  // The directory section holds each inode's entries, then its attributes.
  std::vector<unsigned char> scratch(
      std::max(format::dirent_bytes(format::kNameBytesMax),
               format::xattr_bytes(format::kXattrNameBytesMax, format::kXattrValueBytesMax)));
  for (const auto& [ino, inode] : inodes_) {
    const InodeNumber owner = inode->ino;  // (clang 14 cannot capture a structured binding)
    inode->extents.for_each([&](const Extent& m) { append_extent_records(owner, m, &extent_records); });
    if (inode->is_dir()) {
      for (const auto& [name, child] : *inode->entries) {
        dirent_counter.add(scratch.data(), format::dirent_bytes(name.size()));
      }
    }
    if (inode->xattrs) {
      for (const auto& [name, value] : *inode->xattrs) {
        dirent_counter.add(scratch.data(), format::xattr_bytes(name.size(), value.size()));
      }
    }
  }
  dirent_counter.finish();
  std::vector<Range> bad = bad_blocks_.ranges();
  // Version 1 images (kept so by the mount options) carry no refcount section,
  // which an older reader would not know to keep.
  const std::vector<format::RefcountRecord> shared =
      sb_.has_copies() ? shared_runs() : std::vector<format::RefcountRecord>{};
  const uint64_t needed[format::kSectionCount] = {
      format::fixed_section_blocks(inodes_.size(), sizeof(format::DiskInode)),
      dirent_bytes_in_blocks,
      format::fixed_section_blocks(extent_records.size(), sizeof(format::DiskExtent)),
      format::fixed_section_blocks(bad.size(), sizeof(format::DiskBadRange)),
      format::fixed_section_blocks(shared.size(), sizeof(format::DiskRefcount))};
  base_root.inode_count = base_root.sections[format::kSectionInodes].records = inodes_.size();
  base_root.dirent_count = base_root.sections[format::kSectionDirents].records = dirent_counter.records();
  base_root.extent_count = base_root.sections[format::kSectionExtents].records = extent_records.size();
  base_root.bad_range_count = base_root.sections[format::kSectionBadRanges].records = bad.size();
  base_root.refcount_count = base_root.sections[format::kSectionRefcounts].records = shared.size();

  // Allocate each copy's root and sections from free space (the reserve is
  // theirs). The second copy starts from the middle of the data area, so that
  // one failing stretch of memory is unlikely to hold both.
  const uint32_t copies = placed->copies = metadata_copies();
  std::vector<DevRun>& allocated = placed->allocated;
  format::CheckpointRootInfo(&roots)[2] = placed->roots;
  uint64_t(&root_blocks)[2] = placed->root_blocks;
  {
    std::lock_guard lock(space_mutex_);
    for (uint32_t c = 0; c < copies; ++c) {
      format::CheckpointRootInfo& root = roots[c];
      root = base_root;
      std::optional<DevBlock> hint;
      if (c == 1) hint = second_copy_hint(root_blocks[0]);
      auto r = free_.allocate(1, hint);
      if (!r) {
        for (const DevRun& a : allocated) free_.add(a);
        return fail(ENOSPC, "no free block for a checkpoint");
      }
      allocated.push_back(*r);
      root_blocks[c] = r->start.value();
      hint = r->end();
      for (uint32_t s = 0; s < format::kSectionCount; ++s) {
        for (uint64_t got = 0; got < needed[s];) {
          auto run = allocate_checkpoint_run(needed[s] - got, hint);
          if (!run) {
            for (const DevRun& a : allocated) free_.add(a);
            return fail(ENOSPC, "not enough free space for a checkpoint: section " + std::to_string(s) + " needs " +
                                    std::to_string(needed[s]) + " blocks, " + std::to_string(got) + " found; " +
                                    std::to_string(free_.free_blocks()) + " blocks free");
          }
          allocated.push_back(*run);
          root.sections[s].runs.push_back(BlockRun{run->start.value(), run->count});
          got += run->count;
          hint = run->end();
        }
      }
      // Free space in small pieces: a section of more runs than the root lists
      // continues them in run-list blocks, one block each.
      for (uint32_t s = 0; s < format::kSectionCount; ++s) {
        format::SectionInfo& section = root.sections[s];
        for (uint64_t n = format::run_list_blocks_needed(section.runs.size()); n > 0; --n) {
          auto link = free_.allocate(1, hint);
          if (!link) {
            for (const DevRun& a : allocated) free_.add(a);
            return fail(ENOSPC, "not enough free space for a checkpoint's run lists");
          }
          allocated.push_back(*link);
          section.list_blocks.push_back(link->start.value());
          hint = link->end();
        }
      }
    }
  }

  // Pass 2: write the sections, then the root, then make them durable.
  // Each block image is encoded once and stored into every copy, sealed for
  // its place there: the copies hold the same records at the same index.
  struct Cursors {
    std::vector<RunCursor> copy;
  };
  auto writer_for = [&](SectionId id, Cursors* cursors) {
    for (uint32_t c = 0; c < copies; ++c) cursors->copy.emplace_back(roots[c].sections[id].runs);
    return format::SectionWriter([this, id, cursors, generation](uint32_t index, std::byte* block, uint32_t used) {
      for (RunCursor& cursor : cursors->copy) {
        uint64_t at = cursor.block_at(index);
        format::seal_block(block, format::section_block_kind(id), at, generation, used);
        device_.write(at * kBlockSize, block, kBlockSize);
      }
    });
  };
  Cursors inode_cursors, dirent_cursors, extent_cursors, bad_cursors, refcount_cursors;
  auto inode_writer = writer_for(format::kSectionInodes, &inode_cursors);
  auto dirent_writer = writer_for(format::kSectionDirents, &dirent_cursors);
  auto extent_writer = writer_for(format::kSectionExtents, &extent_cursors);
  auto bad_writer = writer_for(format::kSectionBadRanges, &bad_cursors);
  auto refcount_writer = writer_for(format::kSectionRefcounts, &refcount_cursors);
  for (const format::RefcountRecord& r : shared) {
    format::DiskRefcount d;
    format::encode_refcount(r, d);
    refcount_writer.add(&d, sizeof d);
  }
  refcount_writer.finish();
  POISE_ASSERT(refcount_writer.blocks() == needed[format::kSectionRefcounts]);
  for (const Range& r : bad) {
    format::DiskBadRange d;
    format::encode_bad_range(format::BadRangeRecord{r.start, r.length}, d);
    bad_writer.add(&d, sizeof d);
  }
  bad_writer.finish();
  POISE_ASSERT(bad_writer.blocks() == needed[3]);
  for (const auto& [ino, inode] : inodes_) {
    format::DiskInode d;
    format::encode_inode(inode->core, d);
    inode_writer.add(&d, sizeof d);
    if (inode->is_dir()) {
      for (const auto& [name, child] : *inode->entries) {
        format::DirentRecord r{ino, child->ino.value(), name};
        size_t bytes = format::dirent_bytes(name.size());
        format::encode_dirent(r, scratch.data());
        dirent_writer.add(scratch.data(), bytes);
      }
    }
    if (inode->xattrs) {
      for (const auto& [name, value] : *inode->xattrs) {
        format::encode_xattr(format::XattrRecord{ino, name, value}, scratch.data());
        dirent_writer.add(scratch.data(), format::xattr_bytes(name.size(), value.size()));
      }
    }
  }
  for (const auto& record : extent_records) {
    format::DiskExtent d;
    format::encode_extent(std::get<format::ExtentRecord>(record), d);
    extent_writer.add(&d, sizeof d);
  }
  inode_writer.finish();
  dirent_writer.finish();
  extent_writer.finish();
  POISE_ASSERT(inode_writer.blocks() == needed[0]);
  POISE_ASSERT(dirent_writer.blocks() == needed[1]);
  POISE_ASSERT(extent_writer.blocks() == needed[2]);
  for (uint32_t c = 0; c < copies; ++c) {
    for (uint32_t s = 0; s < format::kSectionCount; ++s) {
      format::encode_run_lists(roots[c].sections[s], s, generation, [&](uint64_t at, const std::byte* image) {
        device_.write(at * kBlockSize, image, kBlockSize);
      });
    }
  }
  return {};
}

// The root of each copy (and the delta's run list): written last, as the
// superblocks then point at them.
Result<void> FsImpl::make_checkpoint_current(uint64_t generation, CheckpointPlacement* placed) {
  const uint32_t copies = placed->copies;
  std::vector<DevRun>& allocated = placed->allocated;
  format::CheckpointRootInfo(&roots)[2] = placed->roots;
  uint64_t(&root_blocks)[2] = placed->root_blocks;
  auto give_back = [&] {
    std::lock_guard lock(space_mutex_);
    for (const DevRun& run : allocated) free_.add(run);
  };
  bool run_lists = false;
  bool delta = false;
  alignas(64) std::byte block[kBlockSize];
  for (uint32_t c = 0; c < copies; ++c) {
    for (const auto& section : roots[c].sections) run_lists = run_lists || !section.list_blocks.empty();
    delta = delta || roots[c].base_generation != generation;
    format::encode_run_lists(roots[c].delta, format::kSectionDeltaId, generation,
                             [&](uint64_t at, const std::byte* image) { device_.write(at * kBlockSize, image, kBlockSize); },
                             0);
    format::encode_checkpoint_root(roots[c], root_blocks[c], block);
    device_.write(root_blocks[c] * kBlockSize, block, kBlockSize);
  }
  // The current checkpoint stays as the previous one, with this generation's
  // journal carried, where it may (its blocks are then made durable with ours).
  std::optional<CarriedJournal> carry;
  if (placed->may_keep_previous && copies == 2) {
    CarriedJournal c;
    if (place_carried_journal(placed, &c)) carry = c;
  }
  std::optional<KeptCheckpoint> kept;
  if (carry) {
    kept.emplace();
    kept->roots[0] = checkpoint_;
    kept->roots[1] = checkpoint_copy_;
    kept->root_blocks[0] = checkpoint_root_block_;
    kept->root_blocks[1] = checkpoint_copy_root_block_;
    kept->read[0] = kept->read[1] = true;
  }
  device_.drain();
  if (device_.domain() == PersistenceDomain::PageCache) {  // the checkpoint is on the backing file first
    auto synced = [&]() -> Result<void> {
      for (const DevRun& run : allocated) TRY(device_.sync_range(run.start.value() * kBlockSize, run.count * kBlockSize));
      return {};
    }();
    if (!synced.has_value()) {
      give_back();
      return synced;
    }
  }
  if (copies == 2 && sb_.version == format::kFormatVersionSingleCopy) sb_.version = format::kFormatVersion;  // upgraded
  // The superblocks that make this checkpoint current say that it needs run lists
  // (the bit stays: a later checkpoint may need them again).
  if (run_lists) sb_.feature_incompat |= format::kIncompatRunLists;
  if (delta) sb_.feature_incompat |= format::kIncompatDeltas;
  // The journal starts empty and there is no delta: every extent record from
  // here on is written with its sharing mark, so replay may check them.
  if (!delta && copies == 2) sb_.feature_incompat |= format::kIncompatSharingMarks;
  {
    std::lock_guard lock(space_mutex_);
    previous_released_ = false;  // what follows names what this checkpoint keeps
  }
  name_previous_in_superblock(kept, carry);
  auto switched = write_superblocks(root_blocks[0], root_blocks[1], generation);
  if (!switched.has_value()) {
    // A superblock copy naming the new checkpoint may already be in memory (or on
    // media): its blocks can never be given back, and the old generation's journal
    // can never be trusted again. Stop here; the next mount sorts it out.
    stop_accepting();
    return switched;
  }

  // The new checkpoint is current: retire the old one (or keep it as the
  // previous one) and start a new journal.
  {
    std::lock_guard lock(space_mutex_);
    std::vector<DevRun> orphaned;
    std::vector<Claim> old_claims;
    checkpoint_claims(&old_claims);
    old_claims.insert(old_claims.end(), previous_held_.begin(), previous_held_.end());
    drop_stale_previous(&old_claims);
    checkpoint_ = std::move(roots[0]);
    checkpoint_root_block_ = root_blocks[0];
    checkpoint_copy_ = copies == 2 ? std::move(roots[1]) : format::CheckpointRootInfo{};
    checkpoint_copy_root_block_ = root_blocks[1];
    previous_ = std::move(kept);
    carried_ = carry;
    fallback_reason_.clear();
    std::vector<Claim> new_claims;
    checkpoint_claims(&new_claims);
    // The new claims first: an incremental checkpoint keeps the old one's
    // sections and delta blocks, which must never be orphaned on the way.
    for (const Claim& c : new_claims) ownership_.add(c.run, c.owner);
    note_previous_held_locked();
    for (const Claim& c : previous_held_) ownership_.add(c.run, c.owner);
    for (const Claim& c : old_claims) ownership_.remove(c.run, c.owner, &orphaned);
    stale_previous_ = RangeSet{};
    for (const DevRun& run : orphaned) free_.add(run);
  }
  generation_shown_.store(checkpoint_.generation, std::memory_order_relaxed);
  // Every damaged copy met at mount has just been written anew; check() still
  // says what was found.
  for (const std::string& note : copy_notes_) mount_notes_.push_back(note + " [rewritten by a checkpoint]");
  copy_notes_.clear();
  count_checkpoint_blocks();
  journal_->reset(generation);
  return {};
}

Result<format::CheckpointRootInfo> FsImpl::read_checkpoint_root(uint64_t at, uint64_t generation) const {
  alignas(64) std::byte block[kBlockSize];
  TRY(read_block(at, block));
  auto root = TRY(format::decode_checkpoint_root(block, at, generation, data_start_, data_end_));
  TRY(format::read_run_lists([this](uint64_t b, std::byte* out) { return read_block(b, out); }, &root, data_start_,
                             data_end_));
  return root;
}

Result<void> FsImpl::load_checkpoint(uint64_t root_block, uint64_t copy_root_block, uint64_t generation) {
  const format::SuperblockInfo& sb = sb_;
  // Both copies' roots: a root that cannot be read leaves its copy out (noted;
  // a read-write mount writes a new checkpoint at once), and two readable roots
  // must describe the same checkpoint.
  auto read_root = [&](uint64_t at) { return read_checkpoint_root(at, generation); };
  checkpoint_root_block_ = root_block;
  checkpoint_copy_root_block_ = copy_root_block;
  auto first = read_root(root_block);
  Result<format::CheckpointRootInfo> second = fail(ENOENT, "no second copy (format version 1)");
  if (sb.has_copies()) second = read_root(copy_root_block);
  if (!first.has_value() && !second.has_value()) {
    if (!sb.has_copies()) return Unexpected<Error>(first.error());
    return fail(first.error().code, "no checkpoint root can be read: " + first.error().message +
                                        "; copy 2: " + second.error().message);
  }
  bool disagrees = false;  // noted where it is found
  if (first.has_value() && second.has_value()) {
    const auto& a = *first;
    const auto& b = *second;
    bool same = a.next_ino == b.next_ino && a.inode_count == b.inode_count && a.dirent_count == b.dirent_count &&
                a.extent_count == b.extent_count && a.bad_range_count == b.bad_range_count &&
                a.base_generation == b.base_generation && a.delta.blocks() == b.delta.blocks();
    for (uint32_t s = 0; s < format::kSectionCount; ++s) {
      same = same && a.sections[s].records == b.sections[s].records && a.sections[s].blocks() == b.sections[s].blocks();
    }
    if (!same) {
      copy_notes_.push_back("checkpoint root copy 2 (block " + std::to_string(copy_root_block) +
                            ") disagrees with copy 1; copy 1 is used");
      second = fail(EUCLEAN, "disagrees with copy 1");
      disagrees = true;
    }
  }
  if (!first.has_value()) {
    copy_notes_.push_back("checkpoint root copy 1 (block " + std::to_string(root_block) +
                          ") is bad: " + first.error().message + "; copy 2 is used");
  } else if (sb.has_copies() && !second.has_value() && !disagrees) {
    copy_notes_.push_back("checkpoint root copy 2 (block " + std::to_string(copy_root_block) +
                          ") is bad: " + second.error().message + "; copy 1 is used");
  }
  // A copy whose root cannot be read claims its root block only: its sections are unknown.
  checkpoint_ = first.has_value() ? *first : format::CheckpointRootInfo{};
  checkpoint_copy_ = second.has_value() ? *second : format::CheckpointRootInfo{};
  checkpoint_.generation = checkpoint_copy_.generation = generation;
  generation_shown_.store(generation, std::memory_order_relaxed);
  const format::CheckpointRootInfo& known = first.has_value() ? *first : *second;
  count_checkpoint_blocks();

  // Every section block from the first copy where it verifies.
  std::vector<const format::CheckpointRootInfo*> copies;
  std::vector<uint32_t> copy_numbers;
  if (first.has_value()) copies.push_back(&checkpoint_), copy_numbers.push_back(1);
  if (second.has_value()) copies.push_back(&checkpoint_copy_), copy_numbers.push_back(2);
  auto read = [this](uint64_t b, std::byte* out) { return read_block(b, out); };
  constexpr uint64_t kBlockNotesMax = 16;  // a badly damaged copy gives a readable report
  uint64_t damaged_blocks = 0;
  auto note_damage = [&](uint32_t copy, uint64_t b, const std::string& why) {
    if (++damaged_blocks > kBlockNotesMax) return;
    copy_notes_.push_back("checkpoint copy " + std::to_string(copy_numbers[copy]) + ": " + why + " (block " +
                          std::to_string(b) + "); the other copy is used");
  };
  auto read_copies = [&](SectionId id, const format::VisitPayload& visit) {
    std::vector<const format::SectionInfo*> sections;
    for (const auto* c : copies) sections.push_back(&c->sections[id]);
    return format::read_section_copies(read, sections, id, known.base_generation, visit, note_damage);
  };
  TRY(read_fixed_records<format::DiskInode>(read_copies, format::kSectionInodes,
                                            [&](const format::DiskInode& d) -> Result<void> {
    auto core = TRY(format::decode_inode(d));
    if (inodes_.contains(core.ino)) {
      return fail(EUCLEAN, "inode " + std::to_string(core.ino) + " appears twice in the inode table");
    }
    return apply_loaded(core);
  }));
  InodePtr root = find_inode(kRootInode);
  if (root == nullptr || !root->is_dir()) return fail(EUCLEAN, "the root directory (inode 1) is missing");
  root->parent = kRootInode;
  root_ = root.get();
  TRY(read_copies(format::kSectionDirents, [&](const unsigned char* p, size_t bytes, uint32_t records) -> Result<void> {
    size_t pos = 0;
    for (uint32_t i = 0; i < records; ++i) {
      size_t used = 0;
      if (format::named_kind(p + pos, bytes - pos) == format::kNamedXattr) {
        auto x = TRY(format::decode_xattr(p + pos, bytes - pos, &used));
        if (InodePtr inode = find_inode(InodeNumber(x.ino)); inode != nullptr && inode->xattrs &&
                                                            inode->xattrs->count(x.name) != 0) {
          return fail(EUCLEAN, "inode " + std::to_string(x.ino) + " has attribute " + x.name + " twice");
        }
        TRY(apply_loaded(x));
      } else {
        auto d = TRY(format::decode_dirent(p + pos, bytes - pos, &used));
        TRY(apply_loaded(d));
      }
      pos += used;
    }
    return {};
  }));
  TRY(read_fixed_records<format::DiskExtent>(read_copies, format::kSectionExtents,
                                             [&](const format::DiskExtent& d) -> Result<void> {
    auto extent = TRY(format::decode_extent(d));
    if ((extent.flags & format::kExtentShares) != 0) {
      return fail(EUCLEAN, "extent of inode " + std::to_string(extent.ino) + " at file block " +
                               std::to_string(extent.file_block) + " carries the journal's sharing mark");
    }
    // A checkpoint holds each file's extents once, in file order: a record that
    // starts before the end of the ones already read overlaps them (or is out of
    // order). That is damage, never merged away.
    if (InodePtr inode = find_inode(InodeNumber(extent.ino));
        inode != nullptr && extent.file_block < inode->extents.end().value()) {
      return fail(EUCLEAN, "extent records of inode " + std::to_string(extent.ino) +
                               " overlap (or are out of order) at file block " + std::to_string(extent.file_block));
    }
    return apply_loaded(extent);
  }));
  TRY(read_fixed_records<format::DiskBadRange>(read_copies, format::kSectionBadRanges,
                                               [&](const format::DiskBadRange& d) -> Result<void> {
    return apply_loaded(TRY(format::decode_bad_range(d)));
  }));
  std::vector<format::RefcountRecord> recorded;
  auto note_the_rest = [&] {
    if (damaged_blocks > kBlockNotesMax) {
      copy_notes_.push_back("... and " + std::to_string(damaged_blocks - kBlockNotesMax) +
                            " more damaged checkpoint blocks in one copy");
    }
  };
  TRY(read_fixed_records<format::DiskRefcount>(read_copies, format::kSectionRefcounts,
                                               [&](const format::DiskRefcount& d) -> Result<void> {
    auto r = TRY(format::decode_refcount(d));
    if (!recorded.empty() && r.start_block < recorded.back().start_block + recorded.back().block_count) {
      return fail(EUCLEAN, "refcount records overlap (or are out of order) at device block " +
                               std::to_string(r.start_block));
    }
    recorded.push_back(r);
    return {};
  }));
  if (sb.version != format::kFormatVersionSingleCopy) compare_sharing(recorded);  // of the base: refcounts are its
  expect_replayed_sharing(recorded);
  // An incremental checkpoint's delta: the journals written since the base,
  // one segment per generation, each replayed as the journal is at mount.
  std::vector<const format::SectionInfo*> deltas;
  for (const auto* c : copies) deltas.push_back(&c->delta);
  TRY(format::read_delta_copies(read, deltas, known.base_generation, known.generation,
                                [&](uint64_t g, const std::vector<std::byte>& journal) {
    return format::decode_log(journal, g, [&](const format::DecodedTx& tx) -> Result<void> {
      for (const auto& record : tx.records) TRY(replay_record(record));
      return {};
    });
  }, note_damage));
  note_the_rest();
  if (known.next_ino < next_ino_) {
    return fail(EUCLEAN, "checkpoint's next inode number is below an inode in use");
  }
  next_ino_ = known.next_ino;
  return {};
}

Result<void> FsImpl::rebuild_space(OwnershipMap* ownership, FreeSpace* free,
                                   std::optional<OwnershipMap::Conflict>* conflict_out) const {
  const uint64_t size = sb_.size_blocks;
  std::vector<Claim> claims;
  claims.reserve(extent_count_.load() + 8);
  claims.push_back({DevRun{DevBlock(format::primary_superblock_block()), 1}, metadata_owner(MetadataKind::Superblock)});
  claims.push_back({DevRun{DevBlock(format::secondary_superblock_block(size)), 1},
                    metadata_owner(MetadataKind::Superblock, 1)});
  claims.push_back({DevRun{DevBlock(sb_.journal_start_block), sb_.journal_blocks}, metadata_owner(MetadataKind::Journal)});
  if (sb_.has_copies()) {
    claims.push_back({DevRun{DevBlock(sb_.journal_copy_start_block), sb_.journal_blocks},
                      metadata_owner(MetadataKind::Journal, kSecondCopyOffset)});
  }
  {
    std::vector<Claim> checkpoints;
    checkpoint_claims(&checkpoints);
    previous_claims(&checkpoints);
    drop_stale_previous(&checkpoints);
    claims.insert(claims.end(), checkpoints.begin(), checkpoints.end());
  }
  // File extents may share blocks with each other (reflink), never with metadata.
  for (const auto& [ino, inode] : inodes_) {
    const InodeNumber owner = inode->ino;
    inode->extents.for_each([&](const Extent& m) {
      claims.push_back({DevRun{m.dev_block, m.block_count}, file_owner(owner, m.file_block)});
    });
  }
  for (const Range& r : bad_blocks_.ranges()) {
    claims.push_back({DevRun{DevBlock(r.start), r.length}, bad_owner(DevBlock(r.start))});
  }
  if (auto conflict = ownership->build(std::move(claims))) {
    if (conflict_out != nullptr) *conflict_out = conflict;
    std::string who;
    for (const Owner& o : conflict->owners) {
      if (o.is_bad()) continue;
      if (!who.empty()) who += " and ";
      who += o.is_metadata() ? std::string(to_string(static_cast<MetadataKind>(o.id & 0xFF)))
                             : "inode " + std::to_string(o.id) + " at file block " + std::to_string(o.offset_blocks);
    }
    return fail(EUCLEAN, "device block " + std::to_string(conflict->run.start.value()) + " is claimed by " + who);
  }
  uint64_t pos = 0;
  ownership->visit(DevRun{DevBlock(0), size}, [&](DevRun r, const std::vector<Owner>&) {
    if (r.start.value() > pos) free->add(DevRun{DevBlock(pos), r.start.value() - pos});
    pos = r.end().value();
  });
  if (pos < size) free->add(DevRun{DevBlock(pos), size - pos});
  return {};
}

}  // namespace poise
