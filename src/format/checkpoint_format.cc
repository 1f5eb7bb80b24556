#include "format/checkpoint_format.h"

#include <cstring>
#include <string>

#include "format/block.h"
#include "poise/types.h"

namespace poise::format {

uint32_t section_block_kind(SectionId id) {
  switch (id) {
    case kSectionInodes: return kBlockInodeSection;
    case kSectionDirents: return kBlockDirentSection;
    case kSectionExtents: return kBlockExtentSection;
    case kSectionBadRanges: return kBlockBadRangeSection;
  }
  POISE_ASSERT(false);
  return 0;
}

uint64_t SectionInfo::blocks() const {
  uint64_t n = 0;
  for (const BlockRun& r : runs) n += r.block_count;
  return n;
}

void encode_checkpoint_root(const CheckpointRootInfo& in, uint64_t self_block, std::byte* block) {
  std::memset(block, 0, kBlockSize);
  CheckpointRoot root;
  std::memset(&root, 0, sizeof root);
  root.next_ino.set(in.next_ino);
  root.inode_count.set(in.inode_count);
  root.dirent_count.set(in.dirent_count);
  root.extent_count.set(in.extent_count);
  root.bad_range_count.set(in.bad_range_count);
  for (uint32_t s = 0; s < kSectionCount; ++s) {
    const SectionInfo& info = in.sections[s];
    POISE_ASSERT(info.runs.size() <= kSectionExtentsMax);
    root.sections[s].records.set(info.records);
    root.sections[s].extent_count.set(static_cast<uint32_t>(info.runs.size()));
    for (size_t i = 0; i < info.runs.size(); ++i) {
      root.sections[s].extents[i].start_block.set(info.runs[i].start_block);
      root.sections[s].extents[i].block_count.set(info.runs[i].block_count);
    }
  }
  std::memcpy(block, &root, sizeof root);
  seal_block(block, kBlockCheckpointRoot, self_block, in.generation, sizeof root);
}

Result<CheckpointRootInfo> decode_checkpoint_root(const std::byte* block, uint64_t self_block,
                                                  uint64_t generation, uint64_t data_start,
                                                  uint64_t data_end) {
  TRY(verify_block(block, kBlockCheckpointRoot, self_block, "checkpoint root"));
  CheckpointRoot root;
  std::memcpy(&root, block, sizeof root);
  std::string where = "checkpoint root at block " + std::to_string(self_block) + ": ";
  if (root.header.generation.get() != generation) {
    return fail(EUCLEAN, where + "generation " + std::to_string(root.header.generation.get()) +
                             " does not match the superblock's " + std::to_string(generation));
  }
  CheckpointRootInfo out;
  out.generation = generation;
  out.next_ino = root.next_ino.get();
  out.inode_count = root.inode_count.get();
  out.dirent_count = root.dirent_count.get();
  out.extent_count = root.extent_count.get();
  out.bad_range_count = root.bad_range_count.get();
  const uint64_t counts[kSectionCount] = {out.inode_count, out.dirent_count, out.extent_count, out.bad_range_count};
  for (uint32_t s = 0; s < kSectionCount; ++s) {
    const SectionDescriptor& d = root.sections[s];
    SectionInfo& info = out.sections[s];
    info.records = d.records.get();
    if (info.records != counts[s]) return fail(EUCLEAN, where + "section record count mismatch");
    uint32_t n = d.extent_count.get();
    if (n > kSectionExtentsMax) return fail(EUCLEAN, where + "too many section extents");
    for (uint32_t i = 0; i < n; ++i) {
      BlockRun run{d.extents[i].start_block.get(), d.extents[i].block_count.get()};
      if (run.block_count == 0 || run.start_block < data_start || run.start_block >= data_end ||
          run.block_count > data_end - run.start_block) {
        return fail(EUCLEAN, where + "section " + std::to_string(s) + " extent " +
                                 std::to_string(i) + " lies outside the data area");
      }
      info.runs.push_back(run);
    }
  }
  if (out.next_ino < 2) return fail(EUCLEAN, where + "next inode number below 2");
  return out;
}

uint64_t fixed_section_blocks(uint64_t records, size_t record_bytes) {
  uint64_t per_block = kSectionPayloadBytes / record_bytes;
  return (records + per_block - 1) / per_block;
}

SectionWriter::SectionWriter(Emit emit) : emit_(std::move(emit)) {
  std::memset(block_, 0, sizeof block_);
}

void SectionWriter::add(const void* record, size_t bytes) {
  POISE_ASSERT(bytes <= kSectionPayloadBytes);
  if (used_ + bytes > kBlockSize) flush_block();
  std::memcpy(block_ + used_, record, bytes);
  used_ += bytes;
  ++records_in_block_;
  ++records_total_;
}

void SectionWriter::finish() {
  if (records_in_block_ > 0) flush_block();
}

void SectionWriter::flush_block() {
  SectionBlockHeader h;
  std::memset(&h, 0, sizeof h);
  h.index.set(index_);
  h.records.set(records_in_block_);
  std::memcpy(block_, &h, sizeof h);
  emit_(index_, block_, static_cast<uint32_t>(used_));
  ++index_;
  std::memset(block_, 0, sizeof block_);
  used_ = sizeof(SectionBlockHeader);
  records_in_block_ = 0;
}

Result<void> read_section(const ReadBlock& read, const SectionInfo& section, SectionId id,
                          uint64_t generation, const VisitPayload& visit) {
  alignas(64) std::byte block[kBlockSize];
  uint32_t kind = section_block_kind(id);
  uint32_t index = 0;
  uint64_t records = 0;
  for (const BlockRun& run : section.runs) {
    for (uint64_t b = run.start_block; b < run.start_block + run.block_count; ++b, ++index) {
      TRY(read(b, block));
      TRY(verify_block(block, kind, b, block_kind_name(kind)));
      SectionBlockHeader h;
      std::memcpy(&h, block, sizeof h);
      std::string where = std::string(block_kind_name(kind)) + " block " + std::to_string(b) + ": ";
      if (h.header.generation.get() != generation) {
        return fail(EUCLEAN, where + "written for checkpoint generation " +
                                 std::to_string(h.header.generation.get()) + ", expected " +
                                 std::to_string(generation));
      }
      if (h.index.get() != index) return fail(EUCLEAN, where + "out of sequence");
      size_t used = h.header.used_bytes.get();
      if (used < sizeof h) return fail(EUCLEAN, where + "used_bytes below the header size");
      records += h.records.get();
      TRY(visit(reinterpret_cast<const unsigned char*>(block) + sizeof h, used - sizeof h,
                h.records.get()));
    }
  }
  if (records != section.records) {
    return fail(EUCLEAN, std::string(block_kind_name(kind)) + " section holds " +
                             std::to_string(records) + " records, root says " +
                             std::to_string(section.records));
  }
  return {};
}

}  // namespace poise::format
