// InodeTable: the in-memory inodes by number. Inode numbers are handed out in
// increasing order, so the table is a radix of pages of 512 slots: a create
// appends to the page the previous create touched (no cache miss, no rehash of
// a million entries), a lookup is one small hash probe for the page and one
// index, and a page whose inodes are all gone is freed. Pages come from the
// index slab (base/huge_pages.h).
//
// Thread-safety: none; the filesystem's ns_mutex_ guards it.
#pragma once

#include <cstdint>
#include <memory>

#include <absl/container/flat_hash_map.h>

#include "base/huge_pages.h"

namespace poise {

struct Inode;
using InodePtr = std::shared_ptr<Inode>;

class InodeTable {
 public:
  InodeTable() = default;
  ~InodeTable();
  InodeTable(const InodeTable&) = delete;
  InodeTable& operator=(const InodeTable&) = delete;

  // The inode, or nullptr.
  const InodePtr* find(uint64_t ino) const;
  bool contains(uint64_t ino) const { return find(ino) != nullptr; }
  // REQUIRES: no inode with that number; inode != nullptr.
  void insert(uint64_t ino, InodePtr inode);
  // Removes it (no-op when absent).
  void erase(uint64_t ino);
  void clear();

  uint64_t size() const { return size_; }
  // The largest number in the table; 0 when empty.
  uint64_t max_ino() const;

  // Iteration in no particular order: `for (const auto& [ino, inode] : table)`.
  class const_iterator;
  const_iterator begin() const;
  const_iterator end() const;

 private:
  static constexpr uint32_t kPageSlots = 512;
  struct Page {
    uint32_t live = 0;
    InodePtr slots[kPageSlots];
  };
  struct PageFree {
    void operator()(Page* p) const;
  };
  using PagePtr = std::unique_ptr<Page, PageFree>;

  using Pages = absl::flat_hash_map<uint64_t, PagePtr>;
  Pages pages_;  // page number -> page
  uint64_t size_ = 0;
};

class InodeTable::const_iterator {
 public:
  using value_type = std::pair<uint64_t, const InodePtr&>;
  value_type operator*() const { return {page_->first * kPageSlots + slot_, page_->second->slots[slot_]}; }
  const_iterator& operator++() {
    ++slot_;
    settle();
    return *this;
  }
  bool operator==(const const_iterator& o) const { return page_ == o.page_ && slot_ == o.slot_; }

 private:
  friend class InodeTable;
  const_iterator(Pages::const_iterator page, Pages::const_iterator end) : page_(page), end_(end) { settle(); }
  // Moves to the next occupied slot at or after the current one.
  void settle() {
    for (; page_ != end_; ++page_, slot_ = 0) {
      for (; slot_ < kPageSlots; ++slot_) {
        if (page_->second->slots[slot_] != nullptr) return;
      }
    }
    slot_ = 0;
  }
  Pages::const_iterator page_;
  Pages::const_iterator end_;
  uint32_t slot_ = 0;
};

inline InodeTable::const_iterator InodeTable::begin() const { return {pages_.begin(), pages_.end()}; }
inline InodeTable::const_iterator InodeTable::end() const { return {pages_.end(), pages_.end()}; }

}  // namespace poise
