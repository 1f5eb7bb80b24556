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
  POISE_ASSERT(in.base_generation <= in.generation);  // zero: a full checkpoint, as its own generation
  root.base_generation.set(in.base_generation == in.generation ? 0 : in.base_generation);
  POISE_ASSERT(in.delta.list_blocks.size() == run_list_blocks_needed(in.delta.runs.size(), 0));
  root.delta_blocks.set(in.delta.blocks());
  root.delta_list_block.set(in.delta.list_blocks.empty() ? 0 : in.delta.list_blocks.front());
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
  out.base_generation = root.base_generation.get() == 0 ? generation : root.base_generation.get();
  if (out.base_generation > generation) {
    return fail(EUCLEAN, where + "base generation " + std::to_string(out.base_generation) + " is after its own");
  }
  out.delta.records = root.delta_blocks.get();
  const uint64_t delta_list = root.delta_list_block.get();
  if (out.delta.records > data_end - data_start) return fail(EUCLEAN, where + "delta longer than the data area");
  if ((out.delta.records == 0) != (delta_list == 0) ||
      (delta_list != 0 && (delta_list < data_start || delta_list >= data_end))) {
    return fail(EUCLEAN, where + "delta run list does not match the delta's length");
  }
  if (out.delta.records != 0 && out.base_generation == generation) {
    return fail(EUCLEAN, where + "a delta without a base checkpoint");
  }
  out.delta_list_start = delta_list;
  if (out.next_ino < 2) return fail(EUCLEAN, where + "next inode number below 2");
  return out;
}

uint64_t run_list_blocks_needed(uint64_t runs, uint64_t root_slots) {
  if (runs <= root_slots) return 0;
  return (runs - root_slots + kRunListRunsMax - 1) / kRunListRunsMax;
}

void encode_run_lists(const SectionInfo& section, uint32_t id, uint64_t generation,
                      const std::function<void(uint64_t block, const std::byte* image)>& store, uint64_t root_slots) {
  POISE_ASSERT(section.list_blocks.size() == run_list_blocks_needed(section.runs.size(), root_slots));
  alignas(64) std::byte block[kBlockSize];
  size_t next_run = root_slots;
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

namespace {
// Follows one run-list chain from `at` into `info`: exactly `runs` more runs,
// or (runs == 0) links up to the one whose next is zero, their runs holding
// exactly `blocks` blocks.
Result<void> follow_run_list(const ReadBlock& read, uint32_t section, uint64_t at, uint64_t generation,
                             uint64_t runs, uint64_t blocks, SectionInfo* info, uint64_t data_start,
                             uint64_t data_end) {
  alignas(64) std::byte block[kBlockSize];
  const std::string what = section == kSectionDeltaId ? std::string("run list of the checkpoint delta")
                                                      : "run list of checkpoint section " + std::to_string(section);
  const bool by_runs = runs != 0;
  uint64_t blocks_seen = 0;
  while (by_runs ? runs > 0 : at != 0) {
    // Each link lists at least one run of at least one block, so a chain that
    // loops ends here too.
    if (at < data_start || at >= data_end) {
      return fail(EUCLEAN, what + ": ends early (or leaves the data area)");
    }
    TRY(read(at, block));
    TRY(verify_block(block, kBlockRunList, at, what.c_str()));
    RunListBlock list;
    std::memcpy(&list, block, sizeof list);
    const std::string where = what + " at block " + std::to_string(at) + ": ";
    if (list.header.generation.get() != generation) {
      return fail(EUCLEAN, where + "written for checkpoint generation " +
                               std::to_string(list.header.generation.get()) + ", expected " + std::to_string(generation));
    }
    if (list.section.get() != section) {
      return fail(EUCLEAN, where + "belongs to section " + std::to_string(list.section.get()));
    }
    const uint32_t count = list.run_count.get();
    if (count == 0 || count > kRunListRunsMax || (by_runs && count > runs)) {
      return fail(EUCLEAN, where + "lists " + std::to_string(count) + " runs");
    }
    for (uint32_t i = 0; i < count; ++i) {
      BlockRun run{list.runs[i].start_block.get(), list.runs[i].block_count.get()};
      if (!run_in_area(run, data_start, data_end)) return fail(EUCLEAN, where + "a run lies outside the data area");
      blocks_seen += run.block_count;
      if (!by_runs && blocks_seen > blocks) return fail(EUCLEAN, where + "lists more blocks than the root says");
      info->runs.push_back(run);
    }
    info->list_blocks.push_back(at);
    if (by_runs) runs -= count;
    at = list.next_block.get();
  }
  if (by_runs && at != 0) return fail(EUCLEAN, what + ": continues past its last run");
  if (!by_runs && blocks_seen != blocks) {
    return fail(EUCLEAN, what + ": lists " + std::to_string(blocks_seen) + " blocks, the root says " +
                             std::to_string(blocks));
  }
  return {};
}
}  // namespace

Result<void> read_run_lists(const ReadBlock& read, CheckpointRootInfo* root, uint64_t data_start, uint64_t data_end) {
  for (uint32_t s = 0; s < kSectionCount; ++s) {
    if (root->runs_to_read[s] == 0) continue;
    TRY(follow_run_list(read, s, root->run_list_start[s], root->base_generation, root->runs_to_read[s], 0,
                        &root->sections[s], data_start, data_end));
    root->runs_to_read[s] = 0;
  }
  if (root->delta_list_start != 0) {
    TRY(follow_run_list(read, kSectionDeltaId, root->delta_list_start, root->generation, 0, root->delta.records,
                        &root->delta, data_start, data_end));
    root->delta_list_start = 0;
  }
  return {};
}

uint64_t delta_blocks_for(uint64_t bytes) { return (bytes + kSectionPayloadBytes - 1) / kSectionPayloadBytes; }

void encode_delta_segment(const std::byte* journal, uint64_t bytes, uint64_t first_index,
                          const std::function<void(uint32_t index, std::byte* block, uint32_t used_bytes)>& emit) {
  alignas(64) std::byte block[kBlockSize];
  for (uint64_t at = 0, index = first_index; at < bytes; at += kSectionPayloadBytes, ++index) {
    const uint64_t n = std::min<uint64_t>(kSectionPayloadBytes, bytes - at);
    std::memset(block, 0, sizeof block);
    SectionBlockHeader h;
    std::memset(&h, 0, sizeof h);
    POISE_ASSERT(index <= UINT32_MAX);
    h.index.set(static_cast<uint32_t>(index));
    std::memcpy(block, &h, sizeof h);
    std::memcpy(block + sizeof h, journal + at, n);
    emit(static_cast<uint32_t>(index), block, static_cast<uint32_t>(sizeof h + n));
  }
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

// Reads and verifies the `index`-th block of one copy of a section, written
// for a generation in [generations.first, generations.second].
Result<void> fetch_section_block(const ReadBlock& read, uint64_t b, uint32_t kind, uint32_t index,
                                 std::pair<uint64_t, uint64_t> generations, std::byte* block) {
  TRY(read(b, block));
  TRY(verify_block(block, kind, b, block_kind_name(kind)));
  SectionBlockHeader h;
  std::memcpy(&h, block, sizeof h);
  std::string where = std::string(block_kind_name(kind)) + " block " + std::to_string(b) + ": ";
  const uint64_t g = h.header.generation.get();
  if (g < generations.first || g > generations.second) {
    return fail(EUCLEAN, where + "written for checkpoint generation " + std::to_string(g) + ", expected " +
                             (generations.first == generations.second
                                  ? std::to_string(generations.first)
                                  : std::to_string(generations.first) + " to " + std::to_string(generations.second)));
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

namespace {
// Each block of a section kept in copies, from the first copy where it reads
// and verifies (see read_section_copies), handed to `visit` whole.
using VisitBlock = std::function<Result<void>(const SectionBlockHeader& header, const unsigned char* payload)>;
Result<void> read_blocks_copies(const ReadBlock& read, const std::vector<const SectionInfo*>& copies, uint32_t kind,
                                std::pair<uint64_t, uint64_t> generations, const VisitBlock& visit,
                                const CopyNote& note) {
  POISE_ASSERT(!copies.empty());
  const SectionInfo& first = *copies.front();
  for (const SectionInfo* copy : copies) {
    if (copy->blocks() != first.blocks() || copy->records != first.records) {
      return fail(EUCLEAN, std::string(block_kind_name(kind)) + " section copies differ in size");
    }
  }
  alignas(64) std::byte block[kBlockSize];
  const uint64_t blocks = first.blocks();
  std::vector<RunCursor> walks;
  for (const SectionInfo* copy : copies) walks.emplace_back(copy->runs);
  for (uint64_t index = 0; index < blocks; ++index) {
    Result<void> got = fail(EIO, "no copy");
    uint32_t used = 0;
    for (uint32_t c = 0; c < copies.size(); ++c) {
      const uint64_t b = walks[c].block_at(index);
      auto fetched = fetch_section_block(read, b, kind, static_cast<uint32_t>(index), generations, block);
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
      auto checked = fetch_section_block(read, b, kind, static_cast<uint32_t>(index), generations, other);
      if (!checked.has_value()) note(c, b, checked.error().message);
    }
    SectionBlockHeader h;
    std::memcpy(&h, block, sizeof h);
    TRY(visit(h, reinterpret_cast<const unsigned char*>(block) + sizeof h));
  }
  return {};
}
}  // namespace

Result<void> read_section_copies(const ReadBlock& read, const std::vector<const SectionInfo*>& copies,
                                 SectionId id, uint64_t generation, const VisitPayload& visit,
                                 const CopyNote& note) {
  const uint32_t kind = section_block_kind(id);
  uint64_t records = 0;
  TRY(read_blocks_copies(read, copies, kind, {generation, generation},
                         [&](const SectionBlockHeader& h, const unsigned char* payload) -> Result<void> {
    records += h.records.get();
    return visit(payload, h.header.used_bytes.get() - sizeof h, h.records.get());
  }, note));
  const SectionInfo& first = *copies.front();
  if (records != first.records) {
    return fail(EUCLEAN, std::string(block_kind_name(kind)) + " section holds " + std::to_string(records) +
                             " records, root says " + std::to_string(first.records));
  }
  return {};
}

Result<void> read_delta_copies(const ReadBlock& read, const std::vector<const SectionInfo*>& copies,
                               uint64_t base_generation, uint64_t generation, const VisitSegment& visit,
                               const CopyNote& note) {
  if (generation == base_generation) return {};  // no delta can be
  std::vector<std::byte> segment;
  uint64_t segment_generation = 0;
  auto finish = [&]() -> Result<void> {
    if (segment.empty()) return {};
    TRY(visit(segment_generation, segment));
    segment.clear();
    return {};
  };
  TRY(read_blocks_copies(read, copies, kBlockDelta, {base_generation, generation - 1},
                         [&](const SectionBlockHeader& h, const unsigned char* payload) -> Result<void> {
    const uint64_t g = h.header.generation.get();
    if (g < segment_generation) {
      return fail(EUCLEAN, "checkpoint delta block " + std::to_string(h.index.get()) + " is of generation " +
                               std::to_string(g) + ", after one of " + std::to_string(segment_generation));
    }
    if (g != segment_generation) TRY(finish());
    segment_generation = g;
    const auto* bytes = reinterpret_cast<const std::byte*>(payload);
    segment.insert(segment.end(), bytes, bytes + (h.header.used_bytes.get() - sizeof h));
    return {};
  }, note));
  return finish();
}

}  // namespace poise::format
