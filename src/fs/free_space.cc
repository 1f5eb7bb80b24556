#include "fs/free_space.h"

#include "poise/result.h"

namespace poise {

void FreeSpace::insert_run(uint64_t start, uint64_t count) {
  by_start_.emplace(start, count);
  by_size_.emplace(count, start);
}

void FreeSpace::erase_run(uint64_t start, uint64_t count) {
  by_size_.erase({count, start});
  by_start_.erase(start);
}

void FreeSpace::add(DevRun run) {
  POISE_ASSERT(run.count > 0);
  uint64_t start = run.start.value();
  uint64_t count = run.count;
  auto next = by_start_.lower_bound(start);
  POISE_ASSERT(next == by_start_.end() || next->first >= start + count);
  std::optional<std::pair<uint64_t, uint64_t>> before, after;
  if (next != by_start_.end() && next->first == start + count) after = *next;
  if (next != by_start_.begin()) {
    auto prev = std::prev(next);
    POISE_ASSERT(prev->first + prev->second <= start);
    if (prev->first + prev->second == start) before = *prev;
  }
  if (before) {
    erase_run(before->first, before->second);
    start = before->first;
    count += before->second;
  }
  if (after) {
    erase_run(after->first, after->second);
    count += after->second;
  }
  insert_run(start, count);
  free_blocks_ += run.count;
}

void FreeSpace::remove(DevRun run) {
  POISE_ASSERT(run.count > 0);
  uint64_t start = run.start.value();
  auto it = by_start_.upper_bound(start);
  POISE_ASSERT(it != by_start_.begin());
  --it;
  uint64_t r_start = it->first;
  uint64_t r_count = it->second;
  uint64_t r_end = r_start + r_count;
  POISE_ASSERT(start + run.count <= r_end);
  erase_run(r_start, r_count);
  if (r_start < start) insert_run(r_start, start - r_start);
  if (start + run.count < r_end) insert_run(start + run.count, r_end - start - run.count);
  free_blocks_ -= run.count;
}

DevRun FreeSpace::take(uint64_t from, uint64_t count) {
  remove(DevRun{DevBlock(from), count});
  return DevRun{DevBlock(from), count};
}

std::optional<DevBlock> FreeSpace::free_block_from(DevBlock at) const {
  if (by_start_.empty()) return std::nullopt;
  auto it = by_start_.upper_bound(at.value());
  if (it != by_start_.begin()) {
    auto before = std::prev(it);
    if (at.value() < before->first + before->second) return at;
  }
  if (it == by_start_.end()) it = by_start_.begin();
  return DevBlock(it->first);
}

std::optional<DevRun> FreeSpace::allocate(uint64_t want, std::optional<DevBlock> hint) {
  POISE_ASSERT(want > 0);
  if (by_start_.empty()) return std::nullopt;
  // 1. Continue where the file left off, so appends stay contiguous.
  if (hint) {
    auto it = by_start_.upper_bound(hint->value());
    if (it != by_start_.begin()) {
      --it;
      uint64_t end = it->first + it->second;
      if (hint->value() < end) {
        return take(hint->value(), std::min(want, end - hint->value()));
      }
    }
  }
  // 2. Large requests: a 2 MiB aligned run, the smallest free run that holds one.
  if (want >= kHugeBlocks) {
    for (auto it = by_size_.lower_bound({want, 0}); it != by_size_.end(); ++it) {
      uint64_t start = it->second;
      uint64_t aligned = (start + kHugeBlocks - 1) / kHugeBlocks * kHugeBlocks;
      if (aligned + want <= start + it->first) return take(aligned, want);
      if (it->first >= want + kHugeBlocks) break;  // cannot happen; keeps the loop bounded
    }
    // No aligned run of the full length: the largest run, from an aligned start if it has one.
    auto largest = std::prev(by_size_.end());
    uint64_t start = largest->second;
    uint64_t end = start + largest->first;
    uint64_t aligned = (start + kHugeBlocks - 1) / kHugeBlocks * kHugeBlocks;
    if (aligned + kHugeBlocks <= end) return take(aligned, std::min(want, end - aligned));
    return take(start, std::min(want, largest->first));
  }
  // 3. Small requests: best fit, or the largest run when none holds it all.
  auto it = by_size_.lower_bound({want, 0});
  if (it != by_size_.end()) return take(it->second, want);
  auto largest = std::prev(by_size_.end());
  uint64_t largest_start = largest->second;
  uint64_t largest_count = largest->first;
  return take(largest_start, largest_count);
}

bool FreeSpace::is_free(DevRun run) const {
  auto it = by_start_.upper_bound(run.start.value());
  if (it == by_start_.begin()) return false;
  --it;
  return run.start.value() + run.count <= it->first + it->second;
}

void FreeSpace::visit(DevRun range, const std::function<void(DevRun)>& fn) const {
  uint64_t start = range.start.value();
  uint64_t end = start + range.count;
  auto it = by_start_.upper_bound(start);
  if (it != by_start_.begin()) --it;
  for (; it != by_start_.end() && it->first < end; ++it) {
    uint64_t s = std::max(start, it->first);
    uint64_t t = std::min(end, it->first + it->second);
    if (s < t) fn(DevRun{DevBlock(s), t - s});
  }
}

}  // namespace poise
