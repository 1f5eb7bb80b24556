#include "base/bit_tree.h"

#include <bit>

namespace poise {

// Level l has one bit per word of level l-1; the top level is a single word.
BitTree::BitTree() : levels_(1) {}

bool BitTree::fits(uint64_t x) const {
  size_t bits = 6 * levels_.size();
  return bits >= 64 || (x >> bits) == 0;
}

const uint64_t* BitTree::page(size_t level, uint64_t index) const {
  const Level& l = levels_[level];
  uint64_t p = index / kPageWords;
  if (p < kArrayPages) return p < l.pages.size() ? l.pages[p].get() : nullptr;
  auto it = l.far.find(p);
  return it == l.far.end() ? nullptr : it->second.get();
}

uint64_t BitTree::word(size_t level, uint64_t index) const {
  const uint64_t* words = page(level, index);
  return words == nullptr ? 0 : words[index % kPageWords];
}

uint64_t& BitTree::word_for_write(size_t level, uint64_t index) {
  Level& l = levels_[level];
  uint64_t p = index / kPageWords;
  Page* slot;
  if (p < kArrayPages) {
    if (p >= l.pages.size()) l.pages.resize(p + 1);
    slot = &l.pages[p];
  } else {
    slot = &l.far[p];
  }
  if (*slot == nullptr) *slot = std::make_unique<uint64_t[]>(kPageWords);  // zeroed
  return (*slot)[index % kPageWords];
}

bool BitTree::insert(uint64_t x) {
  while (!fits(x)) {  // grow on top: the new root's bit 0 covers the old root
    bool occupied = word(levels_.size() - 1, 0) != 0;
    levels_.emplace_back();
    if (occupied) word_for_write(levels_.size() - 1, 0) = 1;
  }
  for (size_t level = 0; level < levels_.size(); ++level) {
    uint64_t& w = word_for_write(level, x / 64);
    uint64_t bit = uint64_t{1} << (x % 64);
    if (level == 0 && (w & bit) != 0) return false;
    bool was_empty = w == 0;
    w |= bit;
    if (!was_empty) break;  // the levels above already see this word
    x /= 64;
  }
  ++size_;
  return true;
}

bool BitTree::erase(uint64_t x) {
  if (!contains(x)) return false;
  for (size_t level = 0; level < levels_.size(); ++level) {
    uint64_t& w = word_for_write(level, x / 64);
    w &= ~(uint64_t{1} << (x % 64));
    if (w != 0) break;  // the word still has members: the levels above stay
    x /= 64;
  }
  --size_;
  return true;
}

bool BitTree::contains(uint64_t x) const {
  return fits(x) && (word(0, x / 64) >> (x % 64) & 1) != 0;
}

uint64_t BitTree::last_under(size_t level, uint64_t bit) const {
  while (level > 0) {
    --level;
    bit = bit * 64 + (63 - std::countl_zero(word(level, bit)));
  }
  return bit;
}

uint64_t BitTree::first_under(size_t level, uint64_t bit) const {
  while (level > 0) {
    --level;
    bit = bit * 64 + std::countr_zero(word(level, bit));
  }
  return bit;
}

std::optional<uint64_t> BitTree::at_or_before(uint64_t x) const {
  if (!fits(x)) x = (uint64_t{1} << (6 * levels_.size())) - 1;  // the largest key the tree can hold
  // Climb until a word holds a member at or before the position, then descend
  // along the last set bits.
  for (size_t level = 0; level < levels_.size(); ++level) {
    unsigned b = x % 64;
    uint64_t mask = b == 63 ? ~uint64_t{0} : (uint64_t{2} << b) - 1;  // bits 0..b
    uint64_t m = word(level, x / 64) & mask;
    if (m != 0) return last_under(level, (x / 64) * 64 + (63 - std::countl_zero(m)));
    if (x / 64 == 0) return std::nullopt;
    x = x / 64 - 1;  // the words strictly before this one
  }
  return std::nullopt;
}

std::optional<uint64_t> BitTree::at_or_after(uint64_t x) const {
  if (!fits(x)) return std::nullopt;
  for (size_t level = 0; level < levels_.size(); ++level) {
    uint64_t m = word(level, x / 64) & (~uint64_t{0} << (x % 64));  // bits b..63
    if (m != 0) return first_under(level, (x / 64) * 64 + std::countr_zero(m));
    x = x / 64 + 1;  // the words strictly after this one (past the end they read as zero)
  }
  return std::nullopt;
}

}  // namespace poise
