// The previous checkpoint, kept one more generation, and the journal carried
// with the newest. Two copies survive any one bad block; where the same block
// is lost in both copies of the newest checkpoint, a mount loads the previous
// one, replays the carried journal (what was written between the two), then the
// current journal: the same state, nothing lost.
#include <algorithm>
#include <functional>

#include "base/range_set.h"
#include "format/block.h"
#include "format/journal_format.h"
#include "fs/fs_impl.h"

namespace poise {

uint64_t FsImpl::previous_claims(std::vector<Claim>* claims) const {
  uint64_t blocks = 0;
  if (previous_) {
    // What the current checkpoint shares with it (an incremental checkpoint
    // keeps its base and delta) is the current one's.
    std::vector<Claim> kept;
    for (uint32_t c = 0; c < 2; ++c) {
      if (previous_->read[c]) claims_of_copy(previous_->roots[c], previous_->root_blocks[c], c, &kept);
    }
    RangeSet held;
    for (const Claim& k : kept) held.add(Range{k.run.start.value(), k.run.count});
    std::vector<Claim> current;
    checkpoint_claims(&current);
    for (const Claim& c : current) held.remove(Range{c.run.start.value(), c.run.count});
    for (const Range& r : held.ranges()) {  // the offset is the block itself: pieces merge as they lie
      claims->push_back({DevRun{DevBlock(r.start), r.length}, metadata_owner(MetadataKind::PreviousCheckpoint, r.start)});
      blocks += r.length;
    }
  }
  if (carried_ && carried_->blocks != 0) {
    for (uint32_t c = 0; c < 2; ++c) {
      claims->push_back({DevRun{DevBlock(carried_->start[c]), carried_->blocks},
                         metadata_owner(MetadataKind::CarriedJournal, c == 0 ? 0 : kSecondCopyOffset)});
    }
    if (previous_) blocks += 2 * carried_->blocks;  // a fallback mount needs its own until its checkpoint
  }
  return blocks;
}

bool FsImpl::place_carried_journal(CheckpointPlacement* placed, CarriedJournal* carry) {
  const uint64_t journal_generation = checkpoint_.generation;
  const std::vector<std::byte>* journal = verified_log(placed);  // the delta's own, when there is one
  if (journal == nullptr) return false;
  const uint64_t blocks = format::delta_blocks_for(journal->size());
  {
    std::lock_guard lock(space_mutex_);
    // After the switch the kept checkpoint holds what the new one does not use,
    // and the one kept until now is freed: keep only with room for two more
    // checkpoints beside it (operations let it go when they need its blocks).
    const uint64_t free_after = free_.free_blocks() + previous_blocks_;
    if (free_after < reserved_blocks_ + 2 * checkpoint_reserve_blocks() + 2 * blocks) return false;
    std::vector<DevRun> taken;
    auto give_back = [&] {
      for (const DevRun& run : taken) free_.add(run);
      return false;
    };
    for (uint32_t c = 0; c < 2 && blocks != 0; ++c) {
      // One run each, after its copy's root (the copies lie apart as the roots do).
      auto run = allocate_checkpoint_run(blocks, DevBlock(placed->root_blocks[c]));
      if (run && run->count != blocks) {
        free_.add(*run);
        run.reset();
      }
      if (!run) return give_back();
      taken.push_back(*run);
      carry->start[c] = run->start.value();
    }
    placed->allocated.insert(placed->allocated.end(), taken.begin(), taken.end());
  }
  carry->blocks = blocks;
  format::encode_delta_segment(journal->data(), journal->size(), 0,
                               [&](uint32_t index, std::byte* block, uint32_t used) {
    for (uint64_t start : carry->start) {
      const uint64_t at = start + index;
      format::seal_block(block, format::kBlockDelta, at, journal_generation, used);
      device_.write(at * kBlockSize, block, kBlockSize);
    }
  });
  return true;
}

void FsImpl::name_previous_in_superblock(const std::optional<KeptCheckpoint>& kept,
                                         const std::optional<CarriedJournal>& carry) {
  sb_.previous_root_block = kept ? kept->root_blocks[0] : 0;
  sb_.previous_copy_root_block = kept ? kept->root_blocks[1] : 0;
  sb_.carry_block = kept && carry ? carry->start[0] : 0;
  sb_.carry_copy_block = kept && carry ? carry->start[1] : 0;
  sb_.carry_blocks = kept && carry ? carry->blocks : 0;
  if (kept) sb_.feature_compat |= format::kCompatPreviousCheckpoint;
}

void FsImpl::read_previous_roots() {
  if (!sb_.has_previous() || repairing_) return;  // a repair writes a checkpoint of its own, keeping none
  KeptCheckpoint kept;
  std::string why;
  for (uint32_t c = 0; c < 2; ++c) {
    const uint64_t at = c == 0 ? sb_.previous_root_block : sb_.previous_copy_root_block;
    auto root = read_checkpoint_root(at, sb_.checkpoint_generation - 1);
    if (root.has_value()) {
      kept.roots[c] = *root;
      kept.root_blocks[c] = at;
      kept.read[c] = true;
    } else {
      why += (why.empty() ? "" : "; ") + std::string("root copy ") + std::to_string(c + 1) + " (block " +
             std::to_string(at) + "): " + root.error().message;
    }
  }
  if (!kept.read[0] && !kept.read[1]) {
    // Let go for space before a crash, or damaged: nothing to fall back to.
    previous_notes_.push_back("the previous checkpoint, kept for a fallback, cannot be read (" + why + ")");
    mount_notes_.push_back(previous_notes_.back() + "; it is let go");
    previous_released_ = true;
    return;
  }
  previous_ = kept;
  carried_ = CarriedJournal{{sb_.carry_block, sb_.carry_copy_block}, sb_.carry_blocks};
}

Result<void> FsImpl::load_previous_checkpoint() {
  const uint64_t generation = sb_.checkpoint_generation;
  const uint64_t previous_generation = generation - 1;
  TRY(load_checkpoint(sb_.previous_root_block, sb_.previous_copy_root_block, previous_generation));
  // The journal of the previous generation, carried with the newest checkpoint:
  // one segment, each block from the copy where it verifies.
  carried_ = CarriedJournal{{sb_.carry_block, sb_.carry_copy_block}, sb_.carry_blocks};
  if (carried_->blocks != 0) {
    format::SectionInfo copies[2];
    for (uint32_t c = 0; c < 2; ++c) {
      copies[c].records = carried_->blocks;
      copies[c].runs.push_back(format::BlockRun{carried_->start[c], carried_->blocks});
    }
    auto read = [this](uint64_t b, std::byte* out) { return read_block(b, out); };
    auto replay = [&](uint64_t g, const std::vector<std::byte>& journal) {
      return format::decode_log(journal, g, [&](const format::DecodedTx& tx) -> Result<void> {
        for (const auto& record : tx.records) TRY(replay_record(record));
        return {};
      });
    };
    auto note = [&](uint32_t copy, uint64_t block, const std::string& why) {
      copy_notes_.push_back("carried journal copy " + std::to_string(copy + 1) + ": " + why + " (block " +
                            std::to_string(block) + "); the other copy is used");
    };
    auto replayed = format::read_delta_copies(read, {&copies[0], &copies[1]}, previous_generation, generation, replay,
                                              note);
    if (!replayed.has_value()) {
      return fail(replayed.error().code, "the journal carried with the newest checkpoint: " + replayed.error().message);
    }
  }
  // The journal goes on in the newest checkpoint's generation; the next
  // checkpoint (a full one, at once for a read-write mount) follows it.
  checkpoint_.generation = checkpoint_copy_.generation = generation;
  generation_shown_.store(generation, std::memory_order_relaxed);
  full_checkpoint_due_.store(true, std::memory_order_relaxed);
  copy_notes_.push_back("the newest checkpoint (generation " + std::to_string(generation) + ") cannot be read: " +
                        fallback_reason_ + "; the previous one (generation " + std::to_string(previous_generation) +
                        ") and the journal carried with the newest stand in, and nothing is lost");
  // Every command says so (a fallback is redundancy used up), as for a journal gap.
  mount_warnings_.push_back("the newest checkpoint could not be read; the previous one stood in (nothing is lost; "
                            "poise check says more)");
  return {};
}

void FsImpl::find_stale_previous() {
  RangeSet mapped;
  for (const auto& [ino, inode] : inodes_) {
    inode->extents.for_each([&](const Extent& m) { mapped.add(Range{m.dev_block.value(), m.block_count}); });
  }
  std::vector<Claim> loaded;
  checkpoint_claims(&loaded);
  previous_claims(&loaded);
  uint64_t blocks = 0;
  for (const Claim& c : loaded) {
    for (uint64_t at = c.run.start.value(); at < c.run.end().value();) {
      auto hit = mapped.first_overlap(Range{at, c.run.end().value() - at});
      if (!hit) break;
      const uint64_t from = std::max(at, hit->start);
      const uint64_t to = std::min(c.run.end().value(), hit->end());
      for (const Range& fresh : stale_previous_.add(Range{from, to - from})) blocks += fresh.length;
      at = to;
    }
  }
  if (blocks != 0) {
    previous_notes_.push_back(std::to_string(blocks) + " blocks of the previous checkpoint (or of the journal "
                              "carried with the newest) lie under files now: it was let go for space before a "
                              "crash, and the copy that was read stood in");
    mount_notes_.push_back(previous_notes_.back());
  }
}

void FsImpl::drop_stale_previous(std::vector<Claim>* claims) const {
  if (stale_previous_.empty()) return;
  std::vector<Claim> kept;
  for (const Claim& c : *claims) {
    uint64_t at = c.run.start.value();
    const uint64_t end = c.run.end().value();
    auto keep = [&](uint64_t from, uint64_t to) {
      if (from < to) kept.push_back({DevRun{DevBlock(from), to - from}, Owner{c.owner.id, c.owner.offset_blocks + (from - c.run.start.value())}});
    };
    while (at < end) {
      auto hit = stale_previous_.first_overlap(Range{at, end - at});
      if (!hit) break;
      keep(at, std::max(at, hit->start));
      at = std::min(end, hit->end());
    }
    keep(at, end);
  }
  *claims = std::move(kept);
}

void FsImpl::note_previous_held_locked() {
  previous_held_.clear();
  previous_blocks_ = previous_claims(&previous_held_);
  drop_stale_previous(&previous_held_);
}

void FsImpl::release_previous_locked() {
  if (!previous_) return;
  // The claims as they were made: the current checkpoint may be changing.
  std::vector<DevRun> orphaned;
  for (const Claim& c : previous_held_) ownership_.remove(c.run, c.owner, &orphaned);
  for (const DevRun& run : orphaned) free_.add(run);
  previous_held_.clear();
  previous_.reset();
  carried_.reset();
  previous_blocks_ = 0;
  previous_released_ = true;
}

std::vector<std::pair<uint64_t, uint64_t>> FsImpl::state_digest() const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  std::string bytes;
  auto put = [&](const auto& v) { bytes.append(reinterpret_cast<const char*>(&v), sizeof v); };
  auto put_named = [&](const std::string& name, uint64_t n) {
    put(name.size());
    bytes += name;
    put(n);
  };
  for (const auto& [ino, inode] : inodes_) {
    bytes.clear();
    const format::InodeCore& c = inode->core;
    put(c.ino), put(c.mode), put(c.nlink), put(c.uid), put(c.gid), put(c.size_bytes);
    put(c.atime_ns), put(c.mtime_ns), put(c.ctime_ns);
    // Extents merged where they continue: how a map is cut is not state.
    std::optional<Extent> run;
    auto flush = [&] {
      if (run) put(run->file_block.value()), put(run->dev_block.value()), put(run->block_count), put(run->flags);
    };
    inode->extents.for_each([&](const Extent& m) {
      if (run && run->file_block.value() + run->block_count == m.file_block.value() &&
          run->dev_block.value() + run->block_count == m.dev_block.value() && run->flags == m.flags) {
        run->block_count += m.block_count;
        return;
      }
      flush();
      run = m;
    });
    flush();
    if (inode->entries) {
      std::vector<std::pair<std::string, uint64_t>> names;
      for (const auto& [name, child] : *inode->entries) names.emplace_back(name, child->ino.value());
      std::sort(names.begin(), names.end());
      for (const auto& [name, child] : names) put_named(name, child);
    }
    if (inode->xattrs) {
      for (const auto& [name, value] : *inode->xattrs) {
        put_named(name, value.size());
        bytes += value;
      }
    }
    out.emplace_back(inode->ino.value(), std::hash<std::string>{}(bytes));
  }
  bytes.clear();
  for (const Range& r : bad_blocks_.ranges()) put(r.start), put(r.length);
  out.emplace_back(0, std::hash<std::string>{}(bytes));
  std::sort(out.begin(), out.end());
  return out;
}

void FsImpl::check_previous_stands_in(std::unique_ptr<FsImpl> fs, CheckReport* report) {
  if (!fs->fallback_reason_.empty() || !fs->previous_) return;
  const auto newest = fs->state_digest();
  Device& device = fs->device_;
  const MountOptions options = fs->options_;
  fs.reset();  // one load in memory at a time
  FsImpl previous(device, options);
  previous.fallback_reason_ = "(not read: poise check loads the previous checkpoint to see that it could stand in)";
  if (auto loaded = previous.load(); !loaded.has_value()) {
    report->notes.push_back("the previous checkpoint, kept for a fallback, could not stand in for the newest: " +
                            loaded.error().message);
    return;
  }
  const auto fallen_back = previous.state_digest();
  if (fallen_back == newest) return;
  const auto [a, b] = std::mismatch(newest.begin(), newest.end(), fallen_back.begin(), fallen_back.end());
  const uint64_t first = a != newest.end() ? a->first : b->first;
  report->problems.push_back("the previous checkpoint with the journal carried with the newest gives another state "
                             "than the newest checkpoint (first at inode " + std::to_string(first) +
                             "): a fallback would not give what was committed");
}

Result<std::unique_ptr<FsImpl>> FsImpl::open(Device& device, const MountOptions& options, bool repairing) {
  auto fs = std::make_unique<FsImpl>(device, options);
  if (repairing) fs->set_repairing();
  auto loaded = fs->load();
  if (loaded.has_value()) return fs;
  if (!fs->newest_unreadable_ || !fs->sb_.has_previous()) return Unexpected<Error>(loaded.error());
  // A fresh load, from the previous checkpoint: nothing of the failed one stays
  // in memory but the machine checks it met (still to be fenced).
  auto again = std::make_unique<FsImpl>(device, options);
  if (repairing) again->set_repairing();
  again->fallback_reason_ = loaded.error().message;
  again->failed_at_load_ = fs->failed_at_load_;
  fs.reset();
  auto second = again->load();
  if (!second.has_value()) {
    return fail(loaded.error().code, loaded.error().message + "; the previous checkpoint cannot stand in: " +
                                         second.error().message);
  }
  return again;
}

}  // namespace poise
