#include "fs/extent_map.h"

#include <limits>

#include "poise/result.h"

namespace poise {

Lookup ExtentMap::lookup(FileBlock block) const {
  uint64_t b = block.value();
  auto it = extents_.upper_bound(b);
  if (it != extents_.begin()) {
    auto prev = std::prev(it);
    uint64_t into = b - prev->first;
    if (into < prev->second.block_count) {
      Lookup l;
      l.mapped = true;
      l.mapping = Extent{block, DevBlock(prev->second.dev_block + into),
                          prev->second.block_count - into, prev->second.flags};
      return l;
    }
  }
  Lookup l;
  l.hole_blocks = it == extents_.end() ? std::numeric_limits<uint64_t>::max() - b : it->first - b;
  return l;
}

void ExtentMap::clear(FileBlock file_block, uint64_t count, std::vector<Extent>* removed) {
  if (count == 0) return;
  uint64_t start = file_block.value();
  uint64_t end = start + count;
  uint64_t pos = start;  // everything below pos is done
  for (;;) {
    auto it = extents_.upper_bound(pos);
    if (it != extents_.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second.block_count > pos) it = prev;
    }
    if (it == extents_.end() || it->first >= end) return;
    uint64_t e_start = it->first;
    Stored e = it->second;
    uint64_t e_end = e_start + e.block_count;
    extents_.erase(it);
    uint64_t cut_start = std::max(start, e_start);
    uint64_t cut_end = std::min(end, e_end);
    if (e_start < cut_start) extents_.emplace(e_start, Stored{e.dev_block, cut_start - e_start, e.flags});
    if (cut_end < e_end) {
      extents_.emplace(cut_end, Stored{e.dev_block + (cut_end - e_start), e_end - cut_end, e.flags});
    }
    mapped_blocks_ -= cut_end - cut_start;
    if (removed != nullptr) {
      removed->push_back(Extent{FileBlock(cut_start), DevBlock(e.dev_block + (cut_start - e_start)),
                                 cut_end - cut_start, e.flags});
    }
    pos = cut_end;
  }
}

void ExtentMap::set(const Extent& m, std::vector<Extent>* removed) {
  POISE_ASSERT(m.block_count > 0);
  clear(m.file_block, m.block_count, removed);
  bool inserted = extents_.emplace(m.file_block.value(), Stored{m.dev_block.value(), m.block_count, m.flags}).second;
  POISE_ASSERT(inserted);
  mapped_blocks_ += m.block_count;
  try_merge_around(m.file_block.value());
}

void ExtentMap::try_merge_around(uint64_t key) {
  auto continues = [](const std::pair<const uint64_t, Stored>& a, const std::pair<const uint64_t, Stored>& b) {
    return a.first + a.second.block_count == b.first &&
           a.second.dev_block + a.second.block_count == b.second.dev_block && a.second.flags == b.second.flags;
  };
  auto it = extents_.find(key);
  auto next = std::next(it);
  if (next != extents_.end() && continues(*it, *next)) {
    it->second.block_count += next->second.block_count;
    extents_.erase(next);
    it = extents_.find(key);
  }
  if (it != extents_.begin()) {
    auto prev = std::prev(it);
    if (continues(*prev, *it)) {
      prev->second.block_count += it->second.block_count;
      extents_.erase(it);
    }
  }
}

void ExtentMap::for_each(const std::function<void(const Extent&)>& visit) const {
  for (const auto& [start, e] : extents_) {
    visit(Extent{FileBlock(start), DevBlock(e.dev_block), e.block_count, e.flags});
  }
}

std::vector<Extent> ExtentMap::range(FileBlock file_block, uint64_t count) const {
  std::vector<Extent> out;
  uint64_t start = file_block.value();
  uint64_t end = start + count;
  auto it = extents_.upper_bound(start);
  if (it != extents_.begin()) --it;
  for (; it != extents_.end() && it->first < end; ++it) {
    uint64_t e_end = it->first + it->second.block_count;
    if (e_end <= start) continue;
    uint64_t s = std::max(start, it->first);
    uint64_t t = std::min(end, e_end);
    out.push_back(Extent{FileBlock(s), DevBlock(it->second.dev_block + (s - it->first)), t - s,
                          it->second.flags});
  }
  return out;
}

FileBlock ExtentMap::end() const {
  if (extents_.empty()) return FileBlock(0);
  auto last = std::prev(extents_.end());
  return FileBlock(last->first + last->second.block_count);
}

}  // namespace poise
