// RangeSet: a set of [start, start + length) ranges of one integer space (bytes
// or blocks), kept merged and in order, with an overlap query.
// Thread-safety: all members are safe to call concurrently; when the set is
// empty (the common case) a query costs one atomic load.
#pragma once

#include <absl/container/btree_map.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

namespace poise {

struct Range {
  uint64_t start = 0;
  uint64_t length = 0;
  uint64_t end() const { return start + length; }
  bool operator==(const Range&) const = default;
};

class RangeSet {
 public:
  RangeSet() = default;
  RangeSet(RangeSet&& o) noexcept;
  RangeSet& operator=(RangeSet&& o) noexcept;

  // Adds the range; returns the parts that were not in the set before.
  std::vector<Range> add(Range range);
  void remove(Range range);
  // The first range of the set overlapping `range`, clipped to it.
  std::optional<Range> first_overlap(Range range) const;
  std::vector<Range> ranges() const;
  bool empty() const { return !any_.load(std::memory_order_acquire); }

 private:
  mutable std::mutex mutex_;
  absl::btree_map<uint64_t, uint64_t> ranges_;  // start -> end (exclusive)
  std::atomic<bool> any_{false};
};

}  // namespace poise
