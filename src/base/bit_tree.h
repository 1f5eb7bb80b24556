// BitTree: an ordered set of 64-bit integers kept as a tree of bitmaps, 64-ary:
// bit k of level 0 says whether k is in the set, and bit j of a word at level
// l+1 says whether word j below it is non-zero. Finding the nearest member at or
// before (or after) a key reads one word per level on the way up and one on the
// way down — a handful of words whatever the number of members, where a search
// tree of a million members reads twenty cache lines or more.
//
// It is the ordering half of an O(1) sorted map: keep the values in a hash
// table keyed by the same integers, and ask the BitTree for neighbours.
//
// Memory: each level is stored in 4 KiB pages, allocated when a bit in them is
// first set and kept until the set is destroyed, so the cost is bounded by one
// bit per integer of the key range actually used (32 MiB for keys below 2^28,
// the blocks of a 1 TiB device), and is far less when members cluster. Pages
// of the first 2^31 keys of a level are found in an array; pages beyond (keys
// far away, such as any 64-bit integer) in a hash table.
//
// Thread-safety: none (like a standard container).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <absl/container/flat_hash_map.h>

namespace poise {

class BitTree {
 public:
  BitTree();

  // True when x was not a member.
  bool insert(uint64_t x);
  // True when x was a member.
  bool erase(uint64_t x);
  bool contains(uint64_t x) const;
  uint64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // The largest member <= x, or the smallest member >= x.
  std::optional<uint64_t> at_or_before(uint64_t x) const;
  std::optional<uint64_t> at_or_after(uint64_t x) const;
  // Strict neighbours, for walking the set in order.
  std::optional<uint64_t> before(uint64_t x) const {
    return x == 0 ? std::nullopt : at_or_before(x - 1);
  }
  std::optional<uint64_t> after(uint64_t x) const {
    return x == UINT64_MAX ? std::nullopt : at_or_after(x + 1);
  }

 private:
  static constexpr unsigned kPageWords = 512;  // 4 KiB
  static constexpr uint64_t kArrayPages = 1u << 16;  // pages found by index; more in `far`
  using Page = std::unique_ptr<uint64_t[]>;
  struct Level {
    std::vector<Page> pages;
    absl::flat_hash_map<uint64_t, Page> far;
  };
  const uint64_t* page(size_t level, uint64_t index) const;
  uint64_t word(size_t level, uint64_t index) const;
  uint64_t& word_for_write(size_t level, uint64_t index);
  // Whether x fits below the top level (levels_.size() levels hold 64^levels keys).
  bool fits(uint64_t x) const;
  // The largest member of the subtree under bit `bit` of level `level`.
  uint64_t last_under(size_t level, uint64_t bit) const;
  uint64_t first_under(size_t level, uint64_t bit) const;

  std::vector<Level> levels_;
  uint64_t size_ = 0;
};

}  // namespace poise
