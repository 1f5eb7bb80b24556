#include "fs/ownership.h"

#include <algorithm>

#include "poise/result.h"

namespace poise {

void OwnershipMap::split_at(uint64_t block) {
  auto it = segments_.upper_bound(block);
  if (it == segments_.begin()) return;
  --it;
  uint64_t start = it->first;
  uint64_t end = start + it->second.count;
  if (block <= start || block >= end) return;
  Segment tail{end - block, it->second.owners};
  for (Owner& o : tail.owners) o.offset_blocks += block - start;
  it->second.count = block - start;
  segments_.emplace(block, std::move(tail));
}

bool OwnershipMap::continues(const Map::value_type& a, const Map::value_type& b) {
  if (a.first + a.second.count != b.first) return false;
  if (a.second.owners.size() != b.second.owners.size()) return false;
  for (size_t i = 0; i < a.second.owners.size(); ++i) {
    const Owner& x = a.second.owners[i];
    const Owner& y = b.second.owners[i];
    if (x.id != y.id || x.offset_blocks + a.second.count != y.offset_blocks) return false;
  }
  return true;
}

void OwnershipMap::merge_range(uint64_t start, uint64_t end) {
  auto it = segments_.upper_bound(start);
  if (it != segments_.begin()) --it;
  if (it != segments_.begin()) --it;
  while (it != segments_.end() && it->first <= end) {
    auto next = std::next(it);
    if (next != segments_.end() && continues(*it, *next)) {
      it->second.count += next->second.count;
      segments_.erase(next);
    } else {
      it = next;
    }
  }
}

void OwnershipMap::add(DevRun run, Owner owner) {
  POISE_ASSERT(run.count > 0);
  uint64_t start = run.start.value();
  uint64_t end = start + run.count;
  split_at(start);
  split_at(end);
  uint64_t pos = start;
  auto it = segments_.lower_bound(start);
  while (pos < end) {
    uint64_t next_start = (it == segments_.end()) ? end : std::min(end, it->first);
    if (pos < next_start) {  // an unowned gap: a new segment
      segments_.emplace(pos, Segment{next_start - pos,
                                     {Owner{owner.id, owner.offset_blocks + (pos - start)}}});
      owned_blocks_ += next_start - pos;
      pos = next_start;
      continue;
    }
    Segment& seg = it->second;
    Owner o{owner.id, owner.offset_blocks + (pos - start)};
    seg.owners.insert(std::upper_bound(seg.owners.begin(), seg.owners.end(), o), o);
    pos += seg.count;
    ++it;
  }
  merge_range(start, end);
}

void OwnershipMap::remove(DevRun run, Owner owner, std::vector<DevRun>* orphaned) {
  POISE_ASSERT(run.count > 0);
  uint64_t start = run.start.value();
  uint64_t end = start + run.count;
  split_at(start);
  split_at(end);
  uint64_t pos = start;
  auto it = segments_.find(start);
  while (pos < end) {
    POISE_ASSERT(it != segments_.end() && it->first == pos);  // the owner must own it all
    Segment& seg = it->second;
    Owner o{owner.id, owner.offset_blocks + (pos - start)};
    auto found = std::lower_bound(seg.owners.begin(), seg.owners.end(), o);
    POISE_ASSERT(found != seg.owners.end() && *found == o);
    seg.owners.erase(found);
    pos += seg.count;
    if (seg.owners.empty()) {
      if (orphaned != nullptr) {
        if (!orphaned->empty() && orphaned->back().end() == DevBlock(it->first)) {
          orphaned->back().count += seg.count;
        } else {
          orphaned->push_back(DevRun{DevBlock(it->first), seg.count});
        }
      }
      owned_blocks_ -= seg.count;
      it = segments_.erase(it);
    } else {
      ++it;
    }
  }
  merge_range(start, end);
}

void OwnershipMap::visit(DevRun range,
                         const std::function<void(DevRun, const std::vector<Owner>&)>& fn) const {
  uint64_t start = range.start.value();
  uint64_t end = start + range.count;
  auto it = segments_.upper_bound(start);
  if (it != segments_.begin()) --it;
  std::vector<Owner> clipped;
  for (; it != segments_.end() && it->first < end; ++it) {
    uint64_t s = std::max(start, it->first);
    uint64_t t = std::min(end, it->first + it->second.count);
    if (s >= t) continue;
    clipped = it->second.owners;
    for (Owner& o : clipped) o.offset_blocks += s - it->first;
    fn(DevRun{DevBlock(s), t - s}, clipped);
  }
}

uint32_t OwnershipMap::refcount(DevBlock block) const {
  auto it = segments_.upper_bound(block.value());
  if (it == segments_.begin()) return 0;
  --it;
  if (block.value() >= it->first + it->second.count) return 0;
  return static_cast<uint32_t>(it->second.owners.size());
}

bool OwnershipMap::operator==(const OwnershipMap& o) const { return first_difference(o).empty(); }

std::string OwnershipMap::first_difference(const OwnershipMap& o) const {
  auto a = segments_.begin();
  auto b = o.segments_.begin();
  for (; a != segments_.end() && b != o.segments_.end(); ++a, ++b) {
    if (a->first != b->first || a->second.count != b->second.count ||
        a->second.owners != b->second.owners) {
      uint64_t at = std::min(a->first, b->first);
      return "ownership differs at device block " + std::to_string(at) + ": " +
             std::to_string(a->second.owners.size()) + " owners over " +
             std::to_string(a->second.count) + " blocks vs " +
             std::to_string(b->second.owners.size()) + " owners over " +
             std::to_string(b->second.count) + " blocks";
    }
  }
  if (a != segments_.end()) return "extra owned segment at device block " + std::to_string(a->first);
  if (b != o.segments_.end()) return "missing owned segment at device block " + std::to_string(b->first);
  return "";
}

}  // namespace poise
