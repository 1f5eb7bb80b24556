#include "fs/inode_table.h"

#include <algorithm>

#include "poise/result.h"

namespace poise {

void InodeTable::PageFree::operator()(Page* p) const {
  p->~Page();
  slab_for<sizeof(Page), alignof(Page)>().free(p);
}

InodeTable::~InodeTable() = default;

const InodePtr* InodeTable::find(uint64_t ino) const {
  auto it = pages_.find(ino / kPageSlots);
  if (it == pages_.end()) return nullptr;
  const InodePtr& slot = it->second->slots[ino % kPageSlots];
  return slot == nullptr ? nullptr : &slot;
}

void InodeTable::insert(uint64_t ino, InodePtr inode) {
  POISE_ASSERT(inode != nullptr);
  PagePtr& page = pages_[ino / kPageSlots];
  if (page == nullptr) page.reset(new (slab_for<sizeof(Page), alignof(Page)>().allocate()) Page());
  InodePtr& slot = page->slots[ino % kPageSlots];
  POISE_ASSERT(slot == nullptr);
  slot = std::move(inode);
  ++page->live;
  ++size_;
}

void InodeTable::erase(uint64_t ino) {
  auto it = pages_.find(ino / kPageSlots);
  if (it == pages_.end()) return;
  InodePtr& slot = it->second->slots[ino % kPageSlots];
  if (slot == nullptr) return;
  slot.reset();
  --size_;
  if (--it->second->live == 0) pages_.erase(it);
}

void InodeTable::clear() {
  pages_.clear();
  size_ = 0;
}

uint64_t InodeTable::max_ino() const {
  uint64_t best = 0;
  for (const auto& [page_no, page] : pages_) {
    if (page_no * kPageSlots + kPageSlots - 1 <= best) continue;
    for (uint32_t i = kPageSlots; i-- > 0;) {
      if (page->slots[i] != nullptr) {
        best = std::max(best, page_no * kPageSlots + i);
        break;
      }
    }
  }
  return best;
}

}  // namespace poise
