#include "base/range_set.h"

#include <algorithm>

namespace poise {

RangeSet::RangeSet(RangeSet&& o) noexcept {
  std::lock_guard lock(o.mutex_);
  ranges_ = std::move(o.ranges_);
  any_ = !ranges_.empty();
}

RangeSet& RangeSet::operator=(RangeSet&& o) noexcept {
  if (this == &o) return *this;
  std::scoped_lock lock(mutex_, o.mutex_);
  ranges_ = std::move(o.ranges_);
  any_ = !ranges_.empty();
  return *this;
}

std::vector<Range> RangeSet::add(Range range) {
  std::vector<Range> fresh;
  if (range.length == 0) return fresh;
  std::lock_guard lock(mutex_);
  uint64_t start = range.start;
  uint64_t end = range.end();
  // What the set lacks of [start, end), before merging.
  uint64_t pos = start;
  auto it = ranges_.upper_bound(start);
  if (it != ranges_.begin() && std::prev(it)->second > start) --it;
  for (; it != ranges_.end() && it->first < end; ++it) {
    if (it->first > pos) fresh.push_back(Range{pos, it->first - pos});
    pos = std::max(pos, it->second);
  }
  if (pos < end) fresh.push_back(Range{pos, end - pos});
  // Absorb every range touching [start, end); seek again after each erase.
  for (;;) {
    auto last = ranges_.upper_bound(end);
    if (last == ranges_.begin()) break;
    --last;
    if (last->second < start) break;
    start = std::min(start, last->first);
    end = std::max(end, last->second);
    ranges_.erase(last);
  }
  ranges_.emplace(start, end);
  any_ = true;
  return fresh;
}

void RangeSet::remove(Range range) {
  if (range.length == 0) return;
  std::lock_guard lock(mutex_);
  uint64_t start = range.start;
  uint64_t end = range.end();
  for (;;) {
    auto it = ranges_.upper_bound(end - 1);
    if (it == ranges_.begin()) break;
    --it;
    if (it->second <= start) break;
    uint64_t r_start = it->first;
    uint64_t r_end = it->second;
    ranges_.erase(it);
    if (r_end > end) ranges_.emplace(end, r_end);
    if (r_start < start) {
      ranges_.emplace(r_start, start);
      break;
    }
  }
  any_ = !ranges_.empty();
}

std::optional<Range> RangeSet::first_overlap(Range range) const {
  if (empty() || range.length == 0) return std::nullopt;
  std::lock_guard lock(mutex_);
  uint64_t end = range.end();
  auto it = ranges_.upper_bound(range.start);
  if (it != ranges_.begin() && std::prev(it)->second > range.start) --it;
  if (it == ranges_.end() || it->first >= end) return std::nullopt;
  uint64_t s = std::max(range.start, it->first);
  uint64_t e = std::min(end, it->second);
  return Range{s, e - s};
}

std::vector<Range> RangeSet::ranges() const {
  std::lock_guard lock(mutex_);
  std::vector<Range> out;
  for (const auto& [start, end] : ranges_) out.push_back(Range{start, end - start});
  return out;
}

}  // namespace poise
