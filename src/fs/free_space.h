// FreeSpace: the free device blocks as coalesced runs, indexed by start (for
// neighbours and fsmap) and by length (for best fit). The allocation policy lives
// here: continue at the caller's hint when possible, give large requests 2 MiB
// aligned runs, best-fit small ones.
//
// Thread-safety: none; the filesystem's space lock guards it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <absl/container/btree_map.h>
#include <absl/container/btree_set.h>
#include <optional>
#include <utility>

#include "poise/types.h"

namespace poise {

struct DevRun {
  DevBlock start;
  uint64_t count = 0;
  DevBlock end() const { return start + count; }
  bool operator==(const DevRun&) const = default;
};

// The blocks that hold any byte of [offset, +length), clipped to `limit_blocks`
// (an empty run when none of it lies below the limit).
inline DevRun blocks_covering(uint64_t offset, uint64_t length, uint64_t limit_blocks) {
  uint64_t first = offset / kBlockSize;
  uint64_t end = std::min(limit_blocks, (offset + length + kBlockSize - 1) / kBlockSize);
  return first < end ? DevRun{DevBlock(first), end - first} : DevRun{DevBlock(first), 0};
}

class FreeSpace {
 public:
  // REQUIRES: none of the range is free already.
  void add(DevRun run);
  // REQUIRES: all of the range is free.
  void remove(DevRun run);
  // Up to `want` blocks (at least one), or nothing when no block is free.
  std::optional<DevRun> allocate(uint64_t want, std::optional<DevBlock> hint);

  // The first free block at or after `at` (wrapping to the first free block).
  std::optional<DevBlock> free_block_from(DevBlock at) const;

  uint64_t free_blocks() const { return free_blocks_; }
  uint64_t run_count() const { return by_start_.size(); }
  bool is_free(DevRun run) const;
  // The free runs overlapping [start, +count), clipped to it, in order.
  void visit(DevRun range, const std::function<void(DevRun)>& fn) const;
  bool operator==(const FreeSpace& o) const { return by_start_ == o.by_start_; }

 private:
  void insert_run(uint64_t start, uint64_t count);
  void erase_run(uint64_t start, uint64_t count);
  DevRun take(uint64_t from, uint64_t count);

  // B-trees; their iterators do not survive changes, so the code seeks again.
  absl::btree_map<uint64_t, uint64_t> by_start_;           // start -> count
  absl::btree_set<std::pair<uint64_t, uint64_t>> by_size_;  // (count, start)
  uint64_t free_blocks_ = 0;
};

}  // namespace poise
