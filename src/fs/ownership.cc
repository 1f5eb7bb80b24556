#include "fs/ownership.h"

#include <algorithm>

#include "poise/result.h"

namespace poise {

// Hash-table references do not survive an insert or erase: the code below
// looks a segment up again after changing the map.
std::pair<uint64_t, const OwnershipMap::Segment*> OwnershipMap::containing(uint64_t block) const {
  auto start = starts_.at_or_before(block);
  if (!start) return {0, nullptr};
  const Segment& seg = segments_.find(*start)->second;
  if (block >= *start + seg.count) return {0, nullptr};
  return {*start, &seg};
}

void OwnershipMap::insert_segment(uint64_t start, Segment seg) {
  segments_.emplace(start, std::move(seg));
  starts_.insert(start);
}

void OwnershipMap::erase_segment(uint64_t start) {
  segments_.erase(start);
  starts_.erase(start);
}

void OwnershipMap::split_at(uint64_t block) {
  auto [start, found] = containing(block);
  if (found == nullptr || block == start) return;
  Segment& seg = segments_.find(start)->second;
  Segment tail{start + seg.count - block, seg.owners};
  for (Owner& o : tail.owners) o.offset_blocks += block - start;
  seg.count = block - start;
  insert_segment(block, std::move(tail));
}

bool OwnershipMap::continues(uint64_t a_start, const Segment& a, uint64_t b_start, const Segment& b) {
  if (a_start + a.count != b_start) return false;
  if (a.owners.size() != b.owners.size()) return false;
  for (size_t i = 0; i < a.owners.size(); ++i) {
    const Owner& x = a.owners[i];
    const Owner& y = b.owners[i];
    if (x.id != y.id || x.offset_blocks + a.count != y.offset_blocks) return false;
  }
  return true;
}

// Merges each segment in [start, end] with its successor where ownership
// continues, beginning with the segment before the one holding `start` (a
// change at `start` can make that one continue into the next).
void OwnershipMap::merge_range(uint64_t start, uint64_t end) {
  auto at = starts_.at_or_before(start);
  if (at) {
    if (auto before = starts_.before(*at)) at = before;
  } else {
    at = starts_.at_or_after(start);
  }
  while (at && *at <= end) {
    auto next = starts_.after(*at);
    if (!next) break;
    Segment& seg = segments_.find(*at)->second;
    const Segment& following = segments_.find(*next)->second;
    if (continues(*at, seg, *next, following)) {
      seg.count += following.count;
      erase_segment(*next);
    } else {
      at = next;
    }
  }
}

// The three segments sit in unrelated hash slots; asking for all of them at
// once overlaps their cache misses instead of paying them one after another.
void OwnershipMap::prefetch_around(DevRun run) const {
  auto first = starts_.at_or_before(run.start.value());
  if (first) {
    segments_.prefetch(*first);
    if (auto before = starts_.before(*first)) segments_.prefetch(*before);
  }
  if (auto next = starts_.at_or_after(run.end().value())) segments_.prefetch(*next);
}

std::pair<uint64_t, uint64_t> OwnershipMap::cut_around(DevRun run) {
  POISE_ASSERT(run.count > 0);
  prefetch_around(run);
  split_at(run.start.value());
  split_at(run.end().value());
  return {run.start.value(), run.end().value()};
}

void OwnershipMap::add(DevRun run, Owner owner) {
  auto [start, end] = cut_around(run);
  uint64_t pos = start;
  while (pos < end) {
    auto next = starts_.at_or_after(pos);
    uint64_t next_start = next ? std::min(end, *next) : end;
    Owner o{owner.id, owner.offset_blocks + (pos - start)};
    if (pos < next_start) {  // an unowned gap: a new segment
      Segment seg{next_start - pos, {}};
      seg.owners.push_back(o);
      insert_segment(pos, std::move(seg));
      owned_blocks_ += next_start - pos;
      pos = next_start;
      continue;
    }
    Segment& seg = segments_.find(pos)->second;
    seg.owners.insert(std::upper_bound(seg.owners.begin(), seg.owners.end(), o), o);
    pos += seg.count;
  }
  merge_range(start, end);
}

void OwnershipMap::remove(DevRun run, Owner owner, std::vector<DevRun>* orphaned) {
  auto [start, end] = cut_around(run);
  uint64_t pos = start;
  while (pos < end) {
    auto it = segments_.find(pos);
    POISE_ASSERT(it != segments_.end());  // the owner must own it all
    Segment& seg = it->second;
    Owner o{owner.id, owner.offset_blocks + (pos - start)};
    auto found = std::lower_bound(seg.owners.begin(), seg.owners.end(), o);
    POISE_ASSERT(found != seg.owners.end() && *found == o);
    seg.owners.erase(found);
    uint64_t count = seg.count;
    if (seg.owners.empty()) {
      if (orphaned != nullptr) {
        if (!orphaned->empty() && orphaned->back().end() == DevBlock(pos)) {
          orphaned->back().count += count;
        } else {
          orphaned->push_back(DevRun{DevBlock(pos), count});
        }
      }
      owned_blocks_ -= count;
      erase_segment(pos);
    }
    pos += count;
  }
  merge_range(start, end);
}

std::optional<OwnershipMap::Conflict> OwnershipMap::build(std::vector<Claim> claims) {
  POISE_ASSERT(segments_.empty());
  std::sort(claims.begin(), claims.end(),
            [](const Claim& a, const Claim& b) { return a.run.start < b.run.start; });
  std::optional<Conflict> conflict;
  segments_.reserve(claims.size());
  std::optional<uint64_t> last_start;  // the segment the sweep appended last
  std::vector<const Claim*> active;  // claims covering the sweep position
  size_t next_claim = 0;
  uint64_t pos = 0;
  while (next_claim < claims.size() || !active.empty()) {
    if (active.empty()) pos = std::max(pos, claims[next_claim].run.start.value());
    while (next_claim < claims.size() && claims[next_claim].run.start.value() <= pos) {
      if (claims[next_claim].run.count > 0) active.push_back(&claims[next_claim]);
      ++next_claim;
    }
    if (active.empty()) continue;
    uint64_t boundary = UINT64_MAX;  // where the set of owners next changes
    for (const Claim* c : active) boundary = std::min(boundary, c->run.end().value());
    if (next_claim < claims.size()) boundary = std::min(boundary, claims[next_claim].run.start.value());
    Segment seg{boundary - pos, {}};
    bool metadata = false;
    size_t real_owners = 0;  // files and metadata; bad markers do not count
    for (const Claim* c : active) {
      seg.owners.push_back(Owner{c->owner.id, c->owner.offset_blocks + (pos - c->run.start.value())});
      metadata = metadata || c->owner.is_metadata();
      real_owners += c->owner.is_bad() ? 0 : 1;
    }
    std::sort(seg.owners.begin(), seg.owners.end());
    if (metadata && real_owners > 1 && !conflict) {
      conflict = Conflict{DevRun{DevBlock(pos), seg.count}, {seg.owners.begin(), seg.owners.end()}};
    }
    owned_blocks_ += seg.count;
    Segment* last = last_start ? &segments_.find(*last_start)->second : nullptr;
    if (last != nullptr && continues(*last_start, *last, pos, seg)) {
      last->count += seg.count;
    } else {
      insert_segment(pos, std::move(seg));
      last_start = pos;
    }
    pos = boundary;
    active.erase(std::remove_if(active.begin(), active.end(),
                                [&](const Claim* c) { return c->run.end().value() <= pos; }),
                 active.end());
  }
  return conflict;
}

uint32_t OwnershipMap::owners_of(DevBlock block, std::vector<Owner>* out, DevRun* segment) const {
  auto [start, seg] = containing(block.value());
  if (seg == nullptr) return 0;
  uint64_t into = block.value() - start;
  for (const Owner& o : seg->owners) out->push_back(Owner{o.id, o.offset_blocks + into});
  *segment = DevRun{DevBlock(start), seg->count};
  return static_cast<uint32_t>(seg->owners.size());
}

void OwnershipMap::visit(DevRun range,
                         const std::function<void(DevRun, const std::vector<Owner>&)>& fn) const {
  uint64_t start = range.start.value();
  uint64_t end = start + range.count;
  auto at = starts_.at_or_before(start);
  if (!at) at = starts_.at_or_after(start);
  std::vector<Owner> clipped;
  for (; at && *at < end; at = starts_.after(*at)) {
    const Segment& seg = segments_.find(*at)->second;
    uint64_t s = std::max(start, *at);
    uint64_t t = std::min(end, *at + seg.count);
    if (s >= t) continue;
    clipped.assign(seg.owners.begin(), seg.owners.end());
    for (Owner& o : clipped) o.offset_blocks += s - *at;
    fn(DevRun{DevBlock(s), t - s}, clipped);
  }
}

uint32_t OwnershipMap::refcount(DevBlock block) const {
  const Segment* seg = containing(block.value()).second;
  return seg == nullptr ? 0 : static_cast<uint32_t>(seg->owners.size());
}

bool OwnershipMap::operator==(const OwnershipMap& o) const { return first_difference(o).empty(); }

std::string OwnershipMap::first_difference(const OwnershipMap& o) const {
  auto a = starts_.at_or_after(0);
  auto b = o.starts_.at_or_after(0);
  for (; a && b; a = starts_.after(*a), b = o.starts_.after(*b)) {
    const Segment& x = segments_.find(*a)->second;
    const Segment& y = o.segments_.find(*b)->second;
    if (*a != *b || x.count != y.count ||
        !std::equal(x.owners.begin(), x.owners.end(), y.owners.begin(), y.owners.end())) {
      return "ownership differs at device block " + std::to_string(std::min(*a, *b)) + ": " +
             std::to_string(x.owners.size()) + " owners over " + std::to_string(x.count) + " blocks vs " +
             std::to_string(y.owners.size()) + " owners over " + std::to_string(y.count) + " blocks";
    }
  }
  if (a) return "extra owned segment at device block " + std::to_string(*a);
  if (b) return "missing owned segment at device block " + std::to_string(*b);
  return "";
}

}  // namespace poise
