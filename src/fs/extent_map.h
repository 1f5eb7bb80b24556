// ExtentMap: one file's mapping from file blocks to device blocks, as ordered,
// non-overlapping extents. Adjacent extents that continue each other on the
// device with the same flags are merged, so a contiguous file is one extent.
//
// Thread-safety: none; the owning inode's lock guards it.
#pragma once

#include <cstdint>
#include <functional>
#include <absl/container/btree_map.h>
#include <vector>

#include "poise/types.h"

namespace poise {

struct Extent {
  FileBlock file_block;
  DevBlock dev_block;
  uint64_t block_count = 0;
  uint32_t flags = 0;  // format::kExtentUnwritten
  bool operator==(const Extent&) const = default;
};

// What covers a file block: a mapping, or a hole running up to the next mapping.
struct Lookup {
  bool mapped = false;
  Extent mapping;          // when mapped: the part from the asked block onwards
  uint64_t hole_blocks = 0; // when not mapped: blocks until the next mapping (or "infinite")
};

class ExtentMap {
 public:
  Lookup lookup(FileBlock block) const;

  // Maps [file_block, +count) to [dev_block, +count); whatever was mapped there
  // before is appended to *removed.
  void set(const Extent& mapping, std::vector<Extent>* removed);
  // Unmaps [file_block, +count), appending what was there to *removed.
  void clear(FileBlock file_block, uint64_t count, std::vector<Extent>* removed);

  void for_each(const std::function<void(const Extent&)>& visit) const;
  // The mappings that overlap [file_block, +count), clipped to it.
  std::vector<Extent> range(FileBlock file_block, uint64_t count) const;

  uint64_t extent_count() const { return extents_.size(); }
  uint64_t mapped_blocks() const { return mapped_blocks_; }
  bool empty() const { return extents_.empty(); }
  // One past the last mapped file block (0 when empty).
  FileBlock end() const;

 private:
  struct Stored {
    uint64_t dev_block;
    uint64_t block_count;
    uint32_t flags;
  };
  void try_merge_around(uint64_t key);

  // A B-tree: compact for the one-extent files that dominate, and shallow for
  // fragmented ones. Its iterators do not survive changes; the code seeks again.
  absl::btree_map<uint64_t, Stored> extents_;  // keyed by first file block
  uint64_t mapped_blocks_ = 0;
};

}  // namespace poise
