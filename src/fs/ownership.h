// OwnershipMap: for every owned device block, every owner — the refcount and the
// reverse map in one index. The device is cut into non-overlapping segments,
// each listing its owners: a file (inode, file block at the segment start) or a
// named metadata structure. A block shared by reflink has several owners; its
// refcount is their number. Segments are kept maximally merged, so the map built
// incrementally and one rebuilt from the extent maps are equal exactly when they
// describe the same ownership — which is what the checker compares.
//
// Every query is O(1) per segment touched, whatever the number of segments:
// segments are found by start block in a hash table, and the order (which
// segment holds block b, which comes next) is kept by a bit tree of the start
// blocks (base/bit_tree.h). A lookup reads a few words of the bit tree and one
// hash slot, where a search tree of a million segments would read some twenty
// cache lines — so a one-block query on a large filesystem costs about what it
// costs on a small one. Nothing walks block by block.
//
// Thread-safety: none; the filesystem's space lock guards it.
#pragma once

#include <cstdint>
#include <functional>
#include <absl/container/flat_hash_map.h>
#include <absl/container/inlined_vector.h>
#include <string>
#include <vector>

#include "base/bit_tree.h"
#include "base/huge_pages.h"
#include "fs/free_space.h"
#include "poise/types.h"

namespace poise {

inline constexpr uint64_t kMetadataOwnerBit = 1ull << 63;
inline constexpr uint64_t kBadOwnerId = 1ull << 62;  // failed memory: fenced off for good

struct Owner {
  uint64_t id = 0;             // inode number, kMetadataOwnerBit | MetadataKind, or kBadOwnerId
  uint64_t offset_blocks = 0;  // file block (or block within the structure) at segment start
  bool is_metadata() const { return (id & kMetadataOwnerBit) != 0; }
  bool is_bad() const { return id == kBadOwnerId; }
  bool is_file() const { return !is_metadata() && !is_bad(); }
  auto operator<=>(const Owner&) const = default;
};

inline Owner file_owner(InodeNumber ino, FileBlock at) { return Owner{ino.value(), at.value()}; }
// The second copy of a metadata structure: its owners' offsets start here.
inline constexpr uint64_t kSecondCopyOffset = 1ull << 40;
inline Owner metadata_owner(MetadataKind kind, uint64_t offset_blocks = 0) {
  return Owner{kMetadataOwnerBit | static_cast<uint64_t>(kind), offset_blocks};
}
// The bad marker's offset is the device block itself, so a bad run stays one segment.
inline Owner bad_owner(DevBlock at) { return Owner{kBadOwnerId, at.value()}; }

// One owner's claim on a run of blocks, for building a map in one pass.
struct Claim {
  DevRun run;
  Owner owner;  // offset at run.start
};

class OwnershipMap {
 public:
  // Builds the map from claims in any order: sorts them by device address and
  // sweeps once, so a mount with millions of extents appends instead of
  // searching. The map must be empty. A stretch claimed by a metadata owner and
  // any other file or metadata owner is a conflict (a bad marker is not): the
  // first is returned (owners at its start).
  struct Conflict {
    DevRun run;
    std::vector<Owner> owners;
  };
  std::optional<Conflict> build(std::vector<Claim> claims);

  // Adds `owner` (whose offset is for `run.start`) to every block of the run.
  void add(DevRun run, Owner owner);
  // Removes that owner from every block of the run; the runs left with no owner
  // are appended to *orphaned. REQUIRES: the owner owns every block of the run.
  void remove(DevRun run, Owner owner, std::vector<DevRun>* orphaned);
  // Starts loading the segments a change of `run` reads — the one holding its
  // first block, the one before it, the one after its end — so that their
  // cache misses overlap. add() and remove() do it themselves; a caller that
  // reads the run first (visit) and changes it next calls it before reading.
  void prefetch_around(DevRun run) const;

  // Calls fn for each owned stretch overlapping the range, clipped, with the
  // owners' offsets adjusted to the stretch start. Unowned gaps are skipped.
  void visit(DevRun range,
             const std::function<void(DevRun, const std::vector<Owner>&)>& fn) const;
  // The owners of one block, appended to *out (no callback: the fsmap fast path).
  uint32_t owners_of(DevBlock block, std::vector<Owner>* out, DevRun* segment) const;
  uint32_t refcount(DevBlock block) const;

  uint64_t segment_count() const { return segments_.size(); }
  uint64_t owned_blocks() const { return owned_blocks_; }
  bool operator==(const OwnershipMap& o) const;
  // The first difference from `o`, for the checker's report ("" when equal).
  std::string first_difference(const OwnershipMap& o) const;

 private:
  // Owners sorted; one owner (the common case) lives inline, with no allocation.
  using Owners = absl::InlinedVector<Owner, 1>;
  struct Segment {
    uint64_t count;
    Owners owners;
  };
  using Map = absl::flat_hash_map<uint64_t, Segment, absl::Hash<uint64_t>, std::equal_to<uint64_t>,
                                  IndexAllocator<std::pair<const uint64_t, Segment>>>;
  // The segment holding `block`: its start and the segment, or nullptr.
  std::pair<uint64_t, const Segment*> containing(uint64_t block) const;
  void insert_segment(uint64_t start, Segment seg);
  void erase_segment(uint64_t start);
  void split_at(uint64_t block);
  // Splits segments at both ends of the run; returns its [start, end).
  std::pair<uint64_t, uint64_t> cut_around(DevRun run);
  void merge_range(uint64_t start, uint64_t end);
  static bool continues(uint64_t a_start, const Segment& a, uint64_t b_start, const Segment& b);

  Map segments_;    // start block -> segment
  BitTree starts_;  // the keys of segments_, in order
  uint64_t owned_blocks_ = 0;
};

}  // namespace poise
