// The checkpoint: the whole metadata state (inodes, directory entries, extents)
// written to free blocks, then made current by the superblocks. Its root block
// lists, per section, the extents of blocks holding the records; each section
// block is a SectionBlockHeader and whole records.
//
// SectionWriter packs records into block images and hands each to the caller,
// who seals and stores it; read_section() verifies and walks them back.
// Thread-safety: SectionWriter is single-threaded; the rest are pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "format/ondisk.h"
#include "poise/result.h"

namespace poise::format {

enum SectionId : uint32_t {
  kSectionInodes = 0,
  kSectionDirents = 1,
  kSectionExtents = 2,
  kSectionBadRanges = 3,
  kSectionRefcounts = 4,  // version 2
};
uint32_t section_block_kind(SectionId id);

struct BlockRun {
  uint64_t start_block = 0;
  uint64_t block_count = 0;
};

struct SectionInfo {
  uint64_t records = 0;
  std::vector<BlockRun> runs;
  // Where runs past the root's kSectionExtentsMax are listed (RunListBlock
  // links, in chain order; feature kIncompatRunLists). The writer fills it in
  // (run_list_blocks_needed of them); decode_checkpoint_root leaves it empty
  // and read_run_lists follows the chain.
  std::vector<uint64_t> list_blocks;
  uint64_t blocks() const;
};

// Maps the block index of a section to its device block, walking the runs in order.
class RunCursor {
 public:
  explicit RunCursor(const std::vector<BlockRun>& runs) : runs_(runs) {}
  // REQUIRES: indices that never decrease, below the runs' total.
  uint64_t block_at(uint64_t index) {
    while (index >= base_ + runs_[run_].block_count) base_ += runs_[run_++].block_count;
    return runs_[run_].start_block + (index - base_);
  }

 private:
  const std::vector<BlockRun>& runs_;
  size_t run_ = 0;
  uint64_t base_ = 0;
};

struct CheckpointRootInfo {
  uint64_t generation = 0;
  // The generation the sections (and their run lists) were written for: this
  // root's own, or for an incremental checkpoint the base checkpoint's. The
  // encoder takes zero for "this root's own"; the decoder always fills it in.
  uint64_t base_generation = 0;
  // Incremental checkpoints (feature kIncompatDeltas): the journals of the
  // generations from base_generation on, in delta blocks (records = blocks);
  // all its runs are in its run list.
  SectionInfo delta;
  // Set by decode_checkpoint_root: per section, runs still to be read from its
  // run list, and the chain's first link (the delta's too).
  uint64_t runs_to_read[kSectionCount] = {};
  uint64_t run_list_start[kSectionCount] = {};
  uint64_t delta_list_start = 0;
  uint64_t next_ino = 0;
  uint64_t inode_count = 0;
  uint64_t dirent_count = 0;
  uint64_t extent_count = 0;
  uint64_t bad_range_count = 0;
  uint64_t refcount_count = 0;
  SectionInfo sections[kSectionCount];
};

void encode_checkpoint_root(const CheckpointRootInfo& root, uint64_t self_block, std::byte* block);
// Verifies the block and that every section run lies inside [data_start, data_end).
// Runs past the root's own are read by read_run_lists.
Result<CheckpointRootInfo> decode_checkpoint_root(const std::byte* block, uint64_t self_block,
                                                  uint64_t generation, uint64_t data_start,
                                                  uint64_t data_end);

// Run lists (feature kIncompatRunLists): the RunListBlock links a section of
// `runs` runs needs beyond the `root_slots` its root lists (kSectionExtentsMax
// for a section, none for a delta).
uint64_t run_list_blocks_needed(uint64_t runs, uint64_t root_slots = kSectionExtentsMax);
// Encodes each link of `section`'s run list (runs past the root's, chained
// through section.list_blocks) and hands it to `store` with its device block.
// `id` is a SectionId, or kSectionDeltaId for a delta (root_slots 0).
void encode_run_lists(const SectionInfo& section, uint32_t id, uint64_t generation,
                      const std::function<void(uint64_t block, const std::byte* image)>& store,
                      uint64_t root_slots = kSectionExtentsMax);
using ReadBlock = std::function<Result<void>(uint64_t block, std::byte* out)>;
// Follows every run list of a decoded root (each section's, sealed for
// base_generation, and the delta's, sealed for the root's own), appending the
// runs and the links (list_blocks). Each link must verify, belong to its
// section and generation, lie in the data area, and the chain must hold
// exactly the runs (the delta: the blocks) the root counts.
Result<void> read_run_lists(const ReadBlock& read, CheckpointRootInfo* root, uint64_t data_start, uint64_t data_end);

// Deltas (feature kIncompatDeltas). A delta is a list of segments, oldest
// first; a segment is the journal of one generation copied verbatim (its
// sealed transactions, from offset 0), spread over delta blocks sealed for that
// generation (SectionBlockHeader: the index within the whole delta, records
// zero). Segments' generations rise, from the base generation to below the
// root's.
//
// The blocks `bytes` of journal need.
uint64_t delta_blocks_for(uint64_t bytes);
// Splits one segment into block images, indexed from `first_index`; `emit`
// seals and stores each (kind kBlockDelta).
void encode_delta_segment(const std::byte* journal, uint64_t bytes, uint64_t first_index,
                          const std::function<void(uint32_t index, std::byte* block, uint32_t used_bytes)>& emit);
// Reads a delta kept in copies (as read_section_copies does) and hands each
// whole segment to `visit` with its generation. `note` as for sections.
using CopyNote = std::function<void(uint32_t copy, uint64_t block, const std::string& why)>;
using VisitSegment = std::function<Result<void>(uint64_t generation, const std::vector<std::byte>& journal)>;
Result<void> read_delta_copies(const ReadBlock& read, const std::vector<const SectionInfo*>& copies,
                               uint64_t base_generation, uint64_t generation, const VisitSegment& visit,
                               const CopyNote& note);

inline constexpr size_t kSectionPayloadBytes = 4096 - sizeof(SectionBlockHeader);

// Blocks a section of `records` fixed-size records needs.
uint64_t fixed_section_blocks(uint64_t records, size_t record_bytes);

class SectionWriter {
 public:
  // Called with each finished block image (payload and SectionBlockHeader index
  // and record count filled in); the callee seals and stores it.
  using Emit = std::function<void(uint32_t index, std::byte* block, uint32_t used_bytes)>;
  explicit SectionWriter(Emit emit);
  // REQUIRES: bytes <= kSectionPayloadBytes.
  void add(const void* record, size_t bytes);
  void finish();
  uint32_t blocks() const { return index_; }
  uint64_t records() const { return records_total_; }

 private:
  void flush_block();
  Emit emit_;
  alignas(64) std::byte block_[4096];
  size_t used_ = sizeof(SectionBlockHeader);
  uint32_t records_in_block_ = 0;
  uint32_t index_ = 0;
  uint64_t records_total_ = 0;
};

// ReadBlock (above) reads one block of the device into `out` (the poison-aware seam).
// Called per verified block with its payload and record count.
using VisitPayload = std::function<Result<void>(const unsigned char* payload, size_t bytes,
                                                uint32_t records)>;

Result<void> read_section(const ReadBlock& read, const SectionInfo& section, SectionId id,
                          uint64_t generation, const VisitPayload& visit);

// A section kept in several copies (version 2 keeps two), which hold the same
// block images at the same index. Each block is taken from the first copy whose
// block reads and verifies, and the same block of every other copy is verified
// too: `note` hears of every damaged copy of a block (the copy, its device
// block, why), so that redundancy is never lost unnoticed. The copies must list the
// same number of blocks and records. Fails only where no copy of a block is good.
Result<void> read_section_copies(const ReadBlock& read, const std::vector<const SectionInfo*>& copies,
                                 SectionId id, uint64_t generation, const VisitPayload& visit,
                                 const CopyNote& note);

}  // namespace poise::format
