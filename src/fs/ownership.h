// OwnershipMap: for every owned device block, every owner — the refcount and the
// reverse map in one index. The device is cut into non-overlapping segments,
// each listing its owners: a file (inode, file block at the segment start) or a
// named metadata structure. A block shared by reflink has several owners; its
// refcount is their number. Segments are kept maximally merged, so the map built
// incrementally and one rebuilt from the extent maps are equal exactly when they
// describe the same ownership — which is what the checker compares.
//
// Every query is O(log n + segments returned): nothing walks block by block.
//
// Thread-safety: none; the filesystem's space lock guards it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "fs/free_space.h"
#include "poise/types.h"

namespace poise {

inline constexpr uint64_t kMetadataOwnerBit = 1ull << 63;

struct Owner {
  uint64_t id = 0;             // inode number, or kMetadataOwnerBit | MetadataKind
  uint64_t offset_blocks = 0;  // file block (or block within the structure) at segment start
  bool is_metadata() const { return (id & kMetadataOwnerBit) != 0; }
  auto operator<=>(const Owner&) const = default;
};

inline Owner file_owner(InodeNumber ino, FileBlock at) { return Owner{ino.value(), at.value()}; }
inline Owner metadata_owner(MetadataKind kind, uint64_t offset_blocks = 0) {
  return Owner{kMetadataOwnerBit | static_cast<uint64_t>(kind), offset_blocks};
}

class OwnershipMap {
 public:
  // Adds `owner` (whose offset is for `run.start`) to every block of the run.
  void add(DevRun run, Owner owner);
  // Removes that owner from every block of the run; the runs left with no owner
  // are appended to *orphaned. REQUIRES: the owner owns every block of the run.
  void remove(DevRun run, Owner owner, std::vector<DevRun>* orphaned);

  // Calls fn for each owned stretch overlapping the range, clipped, with the
  // owners' offsets adjusted to the stretch start. Unowned gaps are skipped.
  void visit(DevRun range,
             const std::function<void(DevRun, const std::vector<Owner>&)>& fn) const;
  uint32_t refcount(DevBlock block) const;

  uint64_t segment_count() const { return segments_.size(); }
  uint64_t owned_blocks() const { return owned_blocks_; }
  bool operator==(const OwnershipMap& o) const;
  // The first difference from `o`, for the checker's report ("" when equal).
  std::string first_difference(const OwnershipMap& o) const;

 private:
  struct Segment {
    uint64_t count;
    std::vector<Owner> owners;  // sorted
  };
  using Map = std::map<uint64_t, Segment>;
  void split_at(uint64_t block);
  void merge_range(uint64_t start, uint64_t end);
  static bool continues(const Map::value_type& a, const Map::value_type& b);

  Map segments_;
  uint64_t owned_blocks_ = 0;
};

}  // namespace poise
