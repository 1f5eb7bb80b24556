#include "fs/ownership.h"

#include <algorithm>

#include "poise/result.h"

namespace poise {

// B-tree iterators do not survive an insert or erase: every loop below seeks
// again after changing the map.
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
      uint64_t key = it->first;
      it->second.count += next->second.count;
      segments_.erase(next);
      it = segments_.find(key);
    } else {
      it = next;
    }
  }
}

std::pair<uint64_t, uint64_t> OwnershipMap::cut_around(DevRun run) {
  POISE_ASSERT(run.count > 0);
  split_at(run.start.value());
  split_at(run.end().value());
  return {run.start.value(), run.end().value()};
}

void OwnershipMap::add(DevRun run, Owner owner) {
  auto [start, end] = cut_around(run);
  uint64_t pos = start;
  while (pos < end) {
    auto it = segments_.lower_bound(pos);
    uint64_t next_start = (it == segments_.end()) ? end : std::min(end, it->first);
    Owner o{owner.id, owner.offset_blocks + (pos - start)};
    if (pos < next_start) {  // an unowned gap: a new segment
      Segment seg{next_start - pos, {}};
      seg.owners.push_back(o);
      segments_.emplace(pos, std::move(seg));
      owned_blocks_ += next_start - pos;
      pos = next_start;
      continue;
    }
    Segment& seg = it->second;
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
      segments_.erase(it);
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
    Map::value_type entry(pos, std::move(seg));
    if (!segments_.empty() && continues(*std::prev(segments_.end()), entry)) {
      std::prev(segments_.end())->second.count += entry.second.count;
    } else {
      segments_.emplace_hint(segments_.end(), std::move(entry));
    }
    pos = boundary;
    active.erase(std::remove_if(active.begin(), active.end(),
                                [&](const Claim* c) { return c->run.end().value() <= pos; }),
                 active.end());
  }
  return conflict;
}

uint32_t OwnershipMap::owners_of(DevBlock block, std::vector<Owner>* out, DevRun* segment) const {
  auto it = segments_.upper_bound(block.value());
  if (it == segments_.begin()) return 0;
  --it;
  if (block.value() >= it->first + it->second.count) return 0;
  uint64_t into = block.value() - it->first;
  for (const Owner& o : it->second.owners) out->push_back(Owner{o.id, o.offset_blocks + into});
  *segment = DevRun{DevBlock(it->first), it->second.count};
  return static_cast<uint32_t>(it->second.owners.size());
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
    clipped.assign(it->second.owners.begin(), it->second.owners.end());
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
        !std::equal(a->second.owners.begin(), a->second.owners.end(), b->second.owners.begin(),
                    b->second.owners.end())) {
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
