#include "format/checkpoint_format.h"

#include <algorithm>
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
    case kSectionRefcounts: return kBlockRefcountSection;
  }
  POISE_ASSERT(false);
  return 0;
}

namespace {
bool run_in_area(const BlockRun& run, uint64_t data_start, uint64_t data_end) {
  return run.block_count != 0 && run.start_block >= data_start && run.start_block < data_end &&
         run.block_count <= data_end - run.start_block;
}
}  // namespace

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
  root.refcount_count.set(in.refcount_count);
  for (uint32_t s = 0; s < kSectionCount; ++s) {
    const SectionInfo& info = in.sections[s];
    POISE_ASSERT(info.runs.size() <= UINT32_MAX);
    POISE_ASSERT(info.list_blocks.size() == run_list_blocks_needed(info.runs.size()));
    root.sections[s].records.set(info.records);
    root.sections[s].extent_count.set(static_cast<uint32_t>(info.runs.size()));
    for (size_t i = 0; i < info.runs.size() && i < kSectionExtentsMax; ++i) {
      root.sections[s].extents[i].start_block.set(info.runs[i].start_block);
      root.sections[s].extents[i].block_count.set(info.runs[i].block_count);
    }
    root.run_list_block[s].set(info.list_blocks.empty() ? 0 : info.list_blocks.front());
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
  out.refcount_count = root.refcount_count.get();
  const uint64_t counts[kSectionCount] = {out.inode_count, out.dirent_count, out.extent_count, out.bad_range_count,
                                          out.refcount_count};
  for (uint32_t s = 0; s < kSectionCount; ++s) {
    const SectionDescriptor& d = root.sections[s];
    SectionInfo& info = out.sections[s];
    info.records = d.records.get();
    if (info.records != counts[s]) return fail(EUCLEAN, where + "section record count mismatch");
    const uint32_t n = d.extent_count.get();
    if (n > data_end - data_start) {
      return fail(EUCLEAN, where + "section " + std::to_string(s) + " lists more runs than the data area has blocks");
    }
    for (uint32_t i = 0; i < n && i < kSectionExtentsMax; ++i) {
      BlockRun run{d.extents[i].start_block.get(), d.extents[i].block_count.get()};
      if (!run_in_area(run, data_start, data_end)) {
        return fail(EUCLEAN, where + "section " + std::to_string(s) + " extent " +
                                 std::to_string(i) + " lies outside the data area");
      }
      info.runs.push_back(run);
    }
    const uint64_t list = root.run_list_block[s].get();
    if (n > kSectionExtentsMax) {
      if (list < data_start || list >= data_end) {
        return fail(EUCLEAN, where + "section " + std::to_string(s) + " has " + std::to_string(n) +
                                 " runs but its run list lies outside the data area");
      }
      out.runs_to_read[s] = n - kSectionExtentsMax;
      out.run_list_start[s] = list;
    } else if (list != 0) {
      return fail(EUCLEAN, where + "section " + std::to_string(s) + " names a run list it does not need");
    }
  }
  if (out.next_ino < 2) return fail(EUCLEAN, where + "next inode number below 2");
  return out;
}

uint64_t run_list_blocks_needed(uint64_t runs) {
  if (runs <= kSectionExtentsMax) return 0;
  return (runs - kSectionExtentsMax + kRunListRunsMax - 1) / kRunListRunsMax;
}

void encode_run_lists(const SectionInfo& section, SectionId id, uint64_t generation,
                      const std::function<void(uint64_t block, const std::byte* image)>& store) {
  POISE_ASSERT(section.list_blocks.size() == run_list_blocks_needed(section.runs.size()));
  alignas(64) std::byte block[kBlockSize];
  size_t next_run = kSectionExtentsMax;
  for (size_t link = 0; link < section.list_blocks.size(); ++link) {
    RunListBlock list;
    std::memset(&list, 0, sizeof list);
    const size_t count = std::min<size_t>(kRunListRunsMax, section.runs.size() - next_run);
    list.next_block.set(link + 1 < section.list_blocks.size() ? section.list_blocks[link + 1] : 0);
    list.section.set(id);
    list.run_count.set(static_cast<uint32_t>(count));
    for (size_t i = 0; i < count; ++i, ++next_run) {
      list.runs[i].start_block.set(section.runs[next_run].start_block);
      list.runs[i].block_count.set(section.runs[next_run].block_count);
    }
    std::memset(block, 0, sizeof block);
    std::memcpy(block, &list, sizeof list);
    seal_block(block, kBlockRunList, section.list_blocks[link], generation, sizeof list);
    store(section.list_blocks[link], block);
  }
  POISE_ASSERT(next_run >= section.runs.size());
}

Result<void> read_run_lists(const ReadBlock& read, CheckpointRootInfo* root, uint64_t data_start, uint64_t data_end) {
  alignas(64) std::byte block[kBlockSize];
  for (uint32_t s = 0; s < kSectionCount; ++s) {
    SectionInfo& info = root->sections[s];
    uint64_t left = root->runs_to_read[s];
    uint64_t at = root->run_list_start[s];
    const std::string what = "run list of checkpoint section " + std::to_string(s);
    while (left > 0) {
      // Each link lists at least one run, so a chain that loops ends here too.
      if (at < data_start || at >= data_end) {
        return fail(EUCLEAN, what + ": ends (or leaves the data area) with " + std::to_string(left) +
                                 " runs still to list");
      }
      TRY(read(at, block));
      TRY(verify_block(block, kBlockRunList, at, what.c_str()));
      RunListBlock list;
      std::memcpy(&list, block, sizeof list);
      const std::string where = what + " at block " + std::to_string(at) + ": ";
      if (list.header.generation.get() != root->generation) {
        return fail(EUCLEAN, where + "written for checkpoint generation " +
                                 std::to_string(list.header.generation.get()) + ", expected " +
                                 std::to_string(root->generation));
      }
      if (list.section.get() != s) {
        return fail(EUCLEAN, where + "belongs to section " + std::to_string(list.section.get()));
      }
      const uint32_t count = list.run_count.get();
      if (count == 0 || count > kRunListRunsMax || count > left) {
        return fail(EUCLEAN, where + "lists " + std::to_string(count) + " runs");
      }
      for (uint32_t i = 0; i < count; ++i) {
        BlockRun run{list.runs[i].start_block.get(), list.runs[i].block_count.get()};
        if (!run_in_area(run, data_start, data_end)) return fail(EUCLEAN, where + "a run lies outside the data area");
        info.runs.push_back(run);
      }
      info.list_blocks.push_back(at);
      left -= count;
      at = list.next_block.get();
    }
    if (root->runs_to_read[s] > 0 && at != 0) return fail(EUCLEAN, what + ": continues past its last run");
    root->runs_to_read[s] = 0;
  }
  return {};
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

namespace {

// Reads and verifies the `index`-th block of one copy of a section.
Result<void> fetch_section_block(const ReadBlock& read, uint64_t b, uint32_t kind, uint32_t index,
                                 uint64_t generation, std::byte* block) {
  TRY(read(b, block));
  TRY(verify_block(block, kind, b, block_kind_name(kind)));
  SectionBlockHeader h;
  std::memcpy(&h, block, sizeof h);
  std::string where = std::string(block_kind_name(kind)) + " block " + std::to_string(b) + ": ";
  if (h.header.generation.get() != generation) {
    return fail(EUCLEAN, where + "written for checkpoint generation " + std::to_string(h.header.generation.get()) +
                             ", expected " + std::to_string(generation));
  }
  if (h.index.get() != index) return fail(EUCLEAN, where + "out of sequence");
  if (h.header.used_bytes.get() < sizeof h) return fail(EUCLEAN, where + "used_bytes below the header size");
  return {};
}
}  // namespace

Result<void> read_section(const ReadBlock& read, const SectionInfo& section, SectionId id,
                          uint64_t generation, const VisitPayload& visit) {
  return read_section_copies(read, {&section}, id, generation, visit, {});
}

Result<void> read_section_copies(const ReadBlock& read, const std::vector<const SectionInfo*>& copies,
                                 SectionId id, uint64_t generation, const VisitPayload& visit,
                                 const CopyNote& note) {
  POISE_ASSERT(!copies.empty());
  const SectionInfo& first = *copies.front();
  const uint32_t kind = section_block_kind(id);
  for (const SectionInfo* copy : copies) {
    if (copy->blocks() != first.blocks() || copy->records != first.records) {
      return fail(EUCLEAN, std::string(block_kind_name(kind)) + " section copies differ in size");
    }
  }
  alignas(64) std::byte block[kBlockSize];
  uint64_t records = 0;
  const uint64_t blocks = first.blocks();
  std::vector<RunCursor> walks;
  for (const SectionInfo* copy : copies) walks.emplace_back(copy->runs);
  for (uint64_t index = 0; index < blocks; ++index) {
    Result<void> got = fail(EIO, "no copy");
    uint32_t used = 0;
    for (uint32_t c = 0; c < copies.size(); ++c) {
      const uint64_t b = walks[c].block_at(index);
      auto fetched = fetch_section_block(read, b, kind, static_cast<uint32_t>(index), generation, block);
      if (fetched.has_value()) {
        got = {};
        used = c;
        break;
      }
      if (c == 0) got = fetched;
      else got = fail(got.error().code, got.error().message + "; copy " + std::to_string(c + 1) + ": " +
                                            fetched.error().message);
      if (c + 1 < copies.size() && note) note(c, b, fetched.error().message);
    }
    if (!got.has_value()) return got;
    // The copies after the one used: damaged ones are told too.
    alignas(64) std::byte other[kBlockSize];
    for (uint32_t c = used + 1; c < copies.size() && note; ++c) {
      const uint64_t b = walks[c].block_at(index);
      auto checked = fetch_section_block(read, b, kind, static_cast<uint32_t>(index), generation, other);
      if (!checked.has_value()) note(c, b, checked.error().message);
    }
    SectionBlockHeader h;
    std::memcpy(&h, block, sizeof h);
    records += h.records.get();
    TRY(visit(reinterpret_cast<const unsigned char*>(block) + sizeof h, h.header.used_bytes.get() - sizeof h,
              h.records.get()));
  }
  if (records != first.records) {
    return fail(EUCLEAN, std::string(block_kind_name(kind)) + " section holds " + std::to_string(records) +
                             " records, root says " + std::to_string(first.records));
  }
  return {};
}

}  // namespace poise::format
