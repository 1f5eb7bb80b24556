// Sharing: the runs of device blocks that several file extents share, and the
// checks that tell sharing a reflink or clone made from a cross-link (an extent
// misdirected onto another file's blocks, with every checksum valid): the
// checkpoint's refcount records vouch for the base's sharing, the journal's
// sharing marks for the sharing made since.
#include <algorithm>

#include "fs/fs_impl.h"

namespace poise {

namespace {
// Appends a run of `count` sharers, merged with the one before when they touch
// and have the same count.
void append_shared(std::vector<format::RefcountRecord>* out, uint64_t start, uint64_t blocks, uint64_t count) {
  if (count < 2 || blocks == 0) return;
  if (!out->empty()) {
    auto& last = out->back();
    if (last.start_block + last.block_count == start && last.refcount == count) {
      last.block_count += blocks;
      return;
    }
  }
  out->push_back({start, blocks, count});
}
}  // namespace

std::vector<format::RefcountRecord> FsImpl::shared_runs() const {
  std::vector<format::RefcountRecord> out;
  std::lock_guard lock(space_mutex_);
  ownership_.visit(DevRun{DevBlock(0), sb_.size_blocks}, [&](DevRun r, const std::vector<Owner>& owners) {
    append_shared(&out, r.start.value(), r.count,
                  std::count_if(owners.begin(), owners.end(), [](const Owner& o) { return o.is_file(); }));
  });
  return out;
}

std::vector<format::RefcountRecord> FsImpl::shared_runs_of_extents() const {
  // A sweep over the extents' starts and ends, in device order.
  std::vector<std::pair<uint64_t, int64_t>> edges;
  edges.reserve(2 * extent_count_.load());
  for (const auto& [ino, inode] : inodes_) {
    inode->extents.for_each([&](const Extent& m) {
      edges.emplace_back(m.dev_block.value(), 1);
      edges.emplace_back(m.dev_block.value() + m.block_count, -1);
    });
  }
  std::sort(edges.begin(), edges.end());
  std::vector<format::RefcountRecord> out;
  int64_t depth = 0;
  for (size_t i = 0; i < edges.size();) {
    const uint64_t at = edges[i].first;
    while (i < edges.size() && edges[i].first == at) depth += edges[i++].second;
    if (i < edges.size()) append_shared(&out, at, edges[i].first - at, static_cast<uint64_t>(depth));
  }
  return out;
}

std::string FsImpl::claimants_of(uint64_t block) const {
  std::string claimants;
  for (const auto& [ino, inode] : inodes_) {
    const uint64_t owner = inode->ino.value();  // (clang 14 cannot capture a structured binding)
    inode->extents.for_each([&](const Extent& m) {
      if (m.dev_block.value() <= block && block < m.dev_block.value() + m.block_count) {
        claimants += (claimants.empty() ? "" : ", ") + std::string("inode ") + std::to_string(owner) + " at file block " +
                     std::to_string(m.file_block.value() + (block - m.dev_block.value()));
      }
    });
  }
  return claimants;
}

void FsImpl::compare_sharing(const std::vector<format::RefcountRecord>& recorded) {
  const std::vector<format::RefcountRecord> derived = shared_runs_of_extents();
  if (derived == recorded) return;
  // The first block whose count differs (the lists merge adjacent runs of one
  // count, so compare them as functions of the block, not record by record).
  auto count_at = [](const std::vector<format::RefcountRecord>& v, uint64_t block) -> uint64_t {
    auto it = std::upper_bound(v.begin(), v.end(), block,
                               [](uint64_t b, const format::RefcountRecord& r) { return b < r.start_block; });
    if (it == v.begin()) return 1;
    --it;
    return block < it->start_block + it->block_count ? it->refcount : 1;
  };
  std::vector<uint64_t> edges;
  for (const auto* v : {&derived, &recorded}) {
    for (const auto& r : *v) edges.insert(edges.end(), {r.start_block, r.start_block + r.block_count});
  }
  std::sort(edges.begin(), edges.end());
  uint64_t block = edges.empty() ? 0 : edges.front();
  for (uint64_t e : edges) {
    if (count_at(derived, e) != count_at(recorded, e)) {
      block = e;
      break;
    }
  }
  const std::string claimants = claimants_of(block);
  const uint64_t files = count_at(derived, block);
  const uint64_t recorded_count = count_at(recorded, block);
  sharing_problems_.push_back(
      "device block " + std::to_string(block) + " is claimed by " + std::to_string(files) +
      (files == 1 ? " file" : " files") + (claimants.empty() ? "" : " (" + claimants + ")") +
      " but the checkpoint's refcount records say " + std::to_string(recorded_count) +
      (files > recorded_count ? ": a cross-link (a misdirected extent), not a reflink"
                              : ": a refcount record without the sharing it records"));
}

void FsImpl::expect_replayed_sharing(const std::vector<format::RefcountRecord>& recorded) {
  if ((sb_.feature_incompat & format::kIncompatSharingMarks) == 0) return;  // older records carry no marks
  replayed_sharing_ = std::make_unique<ReplayedSharing>();
  for (const auto& r : recorded) replayed_sharing_->meant.add(Range{r.start_block, r.block_count});
}

Result<void> FsImpl::replay_record(const format::JournalRecord& record) {
  if (const auto* e = std::get_if<format::ExtentRecord>(&record); e != nullptr && replayed_sharing_ != nullptr) {
    RangeSet& set = (e->flags & format::kExtentShares) != 0 ? replayed_sharing_->meant : replayed_sharing_->unmarked;
    set.add(Range{e->dev_block, e->block_count});
  }
  return apply_loaded(record);
}

void FsImpl::check_replayed_sharing() {
  std::unique_ptr<ReplayedSharing> replayed = std::move(replayed_sharing_);
  if (replayed == nullptr) return;
  // An unmarked record maps new blocks, or a file's own unshared ones (unwritten
  // to written): if what it mapped is shared now, without a reflink, a clone or
  // a refcount record that shares it, the record was misdirected.
  std::optional<uint64_t> found;
  uint64_t files = 0;
  std::lock_guard lock(space_mutex_);
  for (const Range& u : replayed->unmarked.ranges()) {
    ownership_.visit(DevRun{DevBlock(u.start), u.length}, [&](DevRun r, const std::vector<Owner>& owners) {
      const auto n = static_cast<uint64_t>(std::count_if(owners.begin(), owners.end(), [](const Owner& o) { return o.is_file(); }));
      if (found || n < 2) return;
      for (uint64_t at = r.start.value(); at < r.end().value();) {
        auto meant = replayed->meant.first_overlap(Range{at, r.end().value() - at});
        if (!meant || meant->start > at) {
          found = at;
          files = n;
          return;
        }
        at = meant->end();
      }
    });
    if (found) break;
  }
  if (!found) return;
  sharing_problems_.push_back("device block " + std::to_string(*found) + " is claimed by " + std::to_string(files) +
                              " files (" + claimants_of(*found) +
                              ") but the journal mapped it as a new block, not by a reflink or clone: a cross-link "
                              "(a misdirected extent), not a reflink");
}

}  // namespace poise
