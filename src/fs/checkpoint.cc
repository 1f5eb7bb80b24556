// Checkpoints: the whole metadata state written to free blocks, made current by
// rewriting both superblocks, after which the old checkpoint's blocks are freed
// and the journal starts a new generation. A crash at any point leaves either the
// old checkpoint with its journal or the new one with an empty journal.
#include <cstring>

#include "format/block.h"
#include "fs/fs_impl.h"

namespace poise {

namespace {
using format::BlockRun;
using format::SectionId;

MetadataKind section_metadata_kind(uint32_t section) {
  switch (section) {
    case format::kSectionInodes: return MetadataKind::InodeTable;
    case format::kSectionDirents: return MetadataKind::Directory;
    case format::kSectionExtents: return MetadataKind::ExtentMap;
    default: return MetadataKind::BadRangeList;
  }
}

// Reads a section of fixed-size records, handing each one to `each`.
template <class Disk, class Each>
Result<void> read_fixed_records(const format::ReadBlock& read, const format::SectionInfo& section,
                                SectionId id, uint64_t generation, Each&& each) {
  return format::read_section(read, section, id, generation,
                              [&](const unsigned char* p, size_t bytes, uint32_t records) -> Result<void> {
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

// Maps the sequential block index of a section to its device block.
class RunCursor {
 public:
  explicit RunCursor(const std::vector<BlockRun>& runs) : runs_(runs) {}
  uint64_t block_at(uint32_t index) {
    while (index >= base_ + runs_[run_].block_count) {
      base_ += runs_[run_].block_count;
      ++run_;
      POISE_ASSERT(run_ < runs_.size());
    }
    return runs_[run_].start_block + (index - base_);
  }

 private:
  const std::vector<BlockRun>& runs_;
  size_t run_ = 0;
  uint64_t base_ = 0;
};
}  // namespace

Result<void> FsImpl::read_block(uint64_t block, std::byte* out) const {
  return device_.read(block * kBlockSize, out, kBlockSize);
}

Result<void> FsImpl::write_superblocks(uint64_t root_block, uint64_t generation) {
  alignas(64) std::byte block[kBlockSize];
  sb_.sequence += 1;
  sb_.checkpoint_root_block = root_block;
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
  superblock_notes_.clear();
  return {};
}

void FsImpl::add_checkpoint_owners(const format::CheckpointRootInfo& root, uint64_t root_block,
                                   OwnershipMap* ownership) const {
  ownership->add(DevRun{DevBlock(root_block), 1}, metadata_owner(MetadataKind::CheckpointRoot));
  for (uint32_t s = 0; s < format::kSectionCount; ++s) {
    uint64_t offset = 0;
    for (const BlockRun& run : root.sections[s].runs) {
      ownership->add(DevRun{DevBlock(run.start_block), run.block_count},
                     metadata_owner(section_metadata_kind(s), offset));
      offset += run.block_count;
    }
  }
}

void FsImpl::count_checkpoint_blocks() {
  uint64_t blocks = 1;  // the root
  for (const auto& section : checkpoint_.sections) {
    for (const BlockRun& run : section.runs) blocks += run.block_count;
  }
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

Result<void> FsImpl::write_checkpoint() {
  std::shared_lock ns(ns_mutex_);
  const uint64_t generation = checkpoint_.generation + 1;
  format::CheckpointRootInfo root;
  root.generation = generation;
  root.next_ino = next_ino_;

  // Pass 1: how many blocks each section needs.
  Records extent_records;
  uint64_t dirent_bytes_in_blocks = 0;
  format::SectionWriter dirent_counter([&](uint32_t, std::byte*, uint32_t) { ++dirent_bytes_in_blocks; });
  std::vector<unsigned char> scratch(format::dirent_bytes(format::kNameBytesMax));
  for (const auto& [ino, inode] : inodes_) {
    const InodeNumber owner = inode->ino;  // (clang 14 cannot capture a structured binding)
    inode->extents.for_each([&](const Extent& m) { append_extent_records(owner, m, &extent_records); });
    if (!inode->is_dir()) continue;
    for (const auto& [name, child] : *inode->entries) {
      dirent_counter.add(scratch.data(), format::dirent_bytes(name.size()));
    }
  }
  dirent_counter.finish();
  std::vector<Range> bad = bad_blocks_.ranges();
  const uint64_t needed[format::kSectionCount] = {
      format::fixed_section_blocks(inodes_.size(), sizeof(format::DiskInode)),
      dirent_bytes_in_blocks,
      format::fixed_section_blocks(extent_records.size(), sizeof(format::DiskExtent)),
      format::fixed_section_blocks(bad.size(), sizeof(format::DiskBadRange))};
  root.inode_count = root.sections[format::kSectionInodes].records = inodes_.size();
  root.dirent_count = root.sections[format::kSectionDirents].records = dirent_counter.records();
  root.extent_count = root.sections[format::kSectionExtents].records = extent_records.size();
  root.bad_range_count = root.sections[format::kSectionBadRanges].records = bad.size();

  // Allocate the root and the sections from free space (the reserve is theirs).
  std::vector<DevRun> allocated;
  auto give_back = [&] {
    std::lock_guard lock(space_mutex_);
    for (const DevRun& run : allocated) free_.add(run);
  };
  uint64_t root_block = 0;
  {
    std::lock_guard lock(space_mutex_);
    auto r = free_.allocate(1, std::nullopt);
    if (!r) return fail(ENOSPC, "no free block for a checkpoint");
    allocated.push_back(*r);
    root_block = r->start.value();
    std::optional<DevBlock> hint = r->end();
    for (uint32_t s = 0; s < format::kSectionCount; ++s) {
      for (uint64_t got = 0; got < needed[s];) {
        auto run = allocate_checkpoint_run(needed[s] - got, hint);
        if (!run || root.sections[s].runs.size() == format::kSectionExtentsMax) {
          if (run) free_.add(*run);
          for (const DevRun& a : allocated) free_.add(a);
          return fail(ENOSPC, "not enough free space for a checkpoint: section " + std::to_string(s) + " needs " +
                                  std::to_string(needed[s]) + " blocks, " + std::to_string(got) + " found in " +
                                  std::to_string(root.sections[s].runs.size()) + " runs; " +
                                  std::to_string(free_.free_blocks()) + " blocks free");
        }
        allocated.push_back(*run);
        root.sections[s].runs.push_back(BlockRun{run->start.value(), run->count});
        got += run->count;
        hint = run->end();
      }
    }
  }

  // Pass 2: write the sections, then the root, then make them durable.
  auto writer_for = [&](SectionId id, RunCursor* cursor) {
    return format::SectionWriter([this, id, cursor, generation](uint32_t index, std::byte* block, uint32_t used) {
      uint64_t at = cursor->block_at(index);
      format::seal_block(block, format::section_block_kind(id), at, generation, used);
      device_.write(at * kBlockSize, block, kBlockSize);
    });
  };
  RunCursor inode_cursor(root.sections[format::kSectionInodes].runs);
  RunCursor dirent_cursor(root.sections[format::kSectionDirents].runs);
  RunCursor extent_cursor(root.sections[format::kSectionExtents].runs);
  RunCursor bad_cursor(root.sections[format::kSectionBadRanges].runs);
  auto inode_writer = writer_for(format::kSectionInodes, &inode_cursor);
  auto dirent_writer = writer_for(format::kSectionDirents, &dirent_cursor);
  auto extent_writer = writer_for(format::kSectionExtents, &extent_cursor);
  auto bad_writer = writer_for(format::kSectionBadRanges, &bad_cursor);
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
    if (!inode->is_dir()) continue;
    for (const auto& [name, child] : *inode->entries) {
      format::DirentRecord r{ino, child->ino.value(), name};
      size_t bytes = format::dirent_bytes(name.size());
      format::encode_dirent(r, scratch.data());
      dirent_writer.add(scratch.data(), bytes);
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
  alignas(64) std::byte block[kBlockSize];
  format::encode_checkpoint_root(root, root_block, block);
  device_.write(root_block * kBlockSize, block, kBlockSize);
  device_.drain();
  if (device_.domain() == PersistenceDomain::PageCache) {  // the checkpoint is on the backing file first
    auto synced = [&]() -> Result<void> {
      TRY(device_.sync_range(root_block * kBlockSize, kBlockSize));
      for (const auto& section : root.sections) {
        for (const BlockRun& run : section.runs) {
          TRY(device_.sync_range(run.start_block * kBlockSize, run.block_count * kBlockSize));
        }
      }
      return {};
    }();
    if (!synced.has_value()) {
      give_back();
      return synced;
    }
  }
  auto switched = write_superblocks(root_block, generation);
  if (!switched.has_value()) {
    // A superblock copy naming the new checkpoint may already be in memory (or on
    // media): its blocks can never be given back, and the old generation's journal
    // can never be trusted again. Stop here; the next mount sorts it out.
    stop_accepting();
    return switched;
  }

  // The new checkpoint is current: retire the old one and start a new journal.
  {
    std::lock_guard lock(space_mutex_);
    std::vector<DevRun> orphaned;
    if (checkpoint_.generation != 0) {
      OwnershipMap old;
      add_checkpoint_owners(checkpoint_, checkpoint_root_block_, &old);
      old.visit(DevRun{DevBlock(0), sb_.size_blocks}, [&](DevRun r, const std::vector<Owner>& owners) {
        for (const Owner& o : owners) ownership_.remove(r, o, &orphaned);
      });
    }
    for (const DevRun& run : orphaned) free_.add(run);
    add_checkpoint_owners(root, root_block, &ownership_);
  }
  checkpoint_ = std::move(root);
  checkpoint_root_block_ = root_block;
  count_checkpoint_blocks();
  journal_->reset(generation);
  return {};
}

Result<void> FsImpl::load_checkpoint(const format::SuperblockInfo& sb) {
  alignas(64) std::byte block[kBlockSize];
  TRY(read_block(sb.checkpoint_root_block, block));
  checkpoint_ = TRY(format::decode_checkpoint_root(block, sb.checkpoint_root_block, sb.checkpoint_generation,
                                                   data_start_, data_end_));
  checkpoint_root_block_ = sb.checkpoint_root_block;
  count_checkpoint_blocks();
  auto read = [this](uint64_t b, std::byte* out) { return read_block(b, out); };
  TRY(read_fixed_records<format::DiskInode>(read, checkpoint_.sections[format::kSectionInodes],
                                            format::kSectionInodes, checkpoint_.generation,
                                            [&](const format::DiskInode& d) -> Result<void> {
    auto core = TRY(format::decode_inode(d));
    if (inodes_.contains(core.ino)) {
      return fail(EUCLEAN, "inode " + std::to_string(core.ino) + " appears twice in the inode table");
    }
    return apply(core, {});
  }));
  InodePtr root = find_inode(kRootInode);
  if (root == nullptr || !root->is_dir()) return fail(EUCLEAN, "the root directory (inode 1) is missing");
  root->parent = kRootInode;
  root_ = root.get();
  TRY(format::read_section(read, checkpoint_.sections[format::kSectionDirents], format::kSectionDirents,
                           checkpoint_.generation,
                           [&](const unsigned char* p, size_t bytes, uint32_t records) -> Result<void> {
    size_t pos = 0;
    for (uint32_t i = 0; i < records; ++i) {
      size_t used = 0;
      auto d = TRY(format::decode_dirent(p + pos, bytes - pos, &used));
      TRY(apply(d, {}));
      pos += used;
    }
    return {};
  }));
  TRY(read_fixed_records<format::DiskExtent>(read, checkpoint_.sections[format::kSectionExtents],
                                             format::kSectionExtents, checkpoint_.generation,
                                             [&](const format::DiskExtent& d) -> Result<void> {
    auto extent = TRY(format::decode_extent(d));
    // A checkpoint holds each file's extents once, in file order: a record that
    // starts before the end of the ones already read overlaps them (or is out of
    // order). That is damage, never merged away.
    if (InodePtr inode = find_inode(InodeNumber(extent.ino));
        inode != nullptr && extent.file_block < inode->extents.end().value()) {
      return fail(EUCLEAN, "extent records of inode " + std::to_string(extent.ino) +
                               " overlap (or are out of order) at file block " + std::to_string(extent.file_block));
    }
    return apply(extent, {});
  }));
  TRY(read_fixed_records<format::DiskBadRange>(read, checkpoint_.sections[format::kSectionBadRanges],
                                               format::kSectionBadRanges, checkpoint_.generation,
                                               [&](const format::DiskBadRange& d) -> Result<void> {
    return apply(TRY(format::decode_bad_range(d)), {});
  }));
  if (checkpoint_.next_ino < next_ino_) {
    return fail(EUCLEAN, "checkpoint's next inode number is below an inode in use");
  }
  next_ino_ = checkpoint_.next_ino;
  return {};
}

Result<void> FsImpl::rebuild_space(OwnershipMap* ownership, FreeSpace* free) const {
  const uint64_t size = sb_.size_blocks;
  std::vector<Claim> claims;
  claims.reserve(extent_count_.load() + 8);
  claims.push_back({DevRun{DevBlock(format::primary_superblock_block()), 1}, metadata_owner(MetadataKind::Superblock)});
  claims.push_back({DevRun{DevBlock(format::secondary_superblock_block(size)), 1},
                    metadata_owner(MetadataKind::Superblock, 1)});
  claims.push_back({DevRun{DevBlock(sb_.journal_start_block), sb_.journal_blocks}, metadata_owner(MetadataKind::Journal)});
  if (checkpoint_.generation != 0) {
    claims.push_back({DevRun{DevBlock(checkpoint_root_block_), 1}, metadata_owner(MetadataKind::CheckpointRoot)});
    for (uint32_t s = 0; s < format::kSectionCount; ++s) {
      uint64_t offset = 0;
      for (const BlockRun& run : checkpoint_.sections[s].runs) {
        claims.push_back({DevRun{DevBlock(run.start_block), run.block_count},
                          metadata_owner(section_metadata_kind(s), offset)});
        offset += run.block_count;
      }
    }
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
