#include "base/huge_pages.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "poise/result.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISE_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define POISE_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISE_POISON(p, n) ((void)(p), (void)(n))
#define POISE_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace poise {

namespace {

std::atomic<size_t> g_mapped_bytes{0};

size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

}  // namespace

void* map_index_memory(size_t bytes) {
  size_t length = round_up(bytes, kHugePageBytes);
  // Map one huge page more than needed and trim, so the range is aligned and
  // the kernel can back all of it with huge pages.
  size_t padded = length + kHugePageBytes;
  void* raw = ::mmap(nullptr, padded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  auto base = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = round_up(base, kHugePageBytes);
  if (aligned > base) ::munmap(raw, aligned - base);
  size_t tail = base + padded - (aligned + length);
  if (tail > 0) ::munmap(reinterpret_cast<void*>(aligned + length), tail);
  void* p = reinterpret_cast<void*>(aligned);
  (void)::madvise(p, length, MADV_HUGEPAGE);  // advice only: EINVAL when THP is compiled out
  g_mapped_bytes.fetch_add(length, std::memory_order_relaxed);
  return p;
}

void unmap_index_memory(void* p, size_t bytes) {
  size_t length = round_up(bytes, kHugePageBytes);
  ::munmap(p, length);
  g_mapped_bytes.fetch_sub(length, std::memory_order_relaxed);
}

size_t index_memory_bytes() { return g_mapped_bytes.load(std::memory_order_relaxed); }

// A chunk is one aligned huge page; its header sits at the start, so the chunk
// of an object is found by masking its address.
struct Slab::Chunk {
  Chunk* prev = nullptr;  // on the partial list
  Chunk* next = nullptr;
  void* free_list = nullptr;  // freed slots, linked through their first word
  size_t live = 0;            // objects handed out
  size_t fresh = 0;           // slots never handed out start at this index
  bool on_partial = false;
};

namespace {
size_t slot_bytes(size_t object_bytes, size_t align) {
  return round_up(std::max(object_bytes, sizeof(void*)), std::max(align, alignof(void*)));
}
}  // namespace

Slab::Slab(size_t object_bytes, size_t align)
    : object_bytes_(slot_bytes(object_bytes, align)),
      first_offset_(round_up(sizeof(Chunk), std::max(align, alignof(void*)))),
      per_chunk_((kHugePageBytes - first_offset_) / object_bytes_) {
  POISE_ASSERT(align <= 4096 && per_chunk_ >= 1);
}

Slab::~Slab() {
  // Only reached for slabs owned by a test: every object must be back.
  std::lock_guard lock(mu_);
  for (Chunk* c = partial_; c != nullptr;) {
    Chunk* next = c->next;
    unmap_index_memory(c, kHugePageBytes);
    c = next;
  }
  if (spare_ != nullptr) unmap_index_memory(spare_, kHugePageBytes);
}

void Slab::push_partial(Chunk* c) {
  c->prev = nullptr;
  c->next = partial_;
  if (partial_ != nullptr) partial_->prev = c;
  partial_ = c;
  c->on_partial = true;
}

void Slab::unlink_partial(Chunk* c) {
  if (c->prev != nullptr) c->prev->next = c->next;
  else partial_ = c->next;
  if (c->next != nullptr) c->next->prev = c->prev;
  c->prev = c->next = nullptr;
  c->on_partial = false;
}

void* Slab::allocate() {
  std::lock_guard lock(mu_);
  Chunk* c = partial_;
  if (c == nullptr) {
    if (spare_ != nullptr) {
      c = spare_;
      spare_ = nullptr;
    } else {
      c = new (map_index_memory(kHugePageBytes)) Chunk();
      POISE_POISON(reinterpret_cast<std::byte*>(c) + first_offset_, kHugePageBytes - first_offset_);
      ++chunks_;
    }
    push_partial(c);
  }
  void* p;
  if (c->free_list != nullptr) {
    p = c->free_list;
    POISE_UNPOISON(p, object_bytes_);
    std::memcpy(&c->free_list, p, sizeof(void*));
  } else {
    p = reinterpret_cast<std::byte*>(c) + first_offset_ + c->fresh * object_bytes_;
    POISE_UNPOISON(p, object_bytes_);
    ++c->fresh;
  }
  if (++c->live == per_chunk_) unlink_partial(c);
  return p;
}

void Slab::free(void* p) {
  if (p == nullptr) return;
  auto* c = reinterpret_cast<Chunk*>(reinterpret_cast<uintptr_t>(p) & ~(uintptr_t(kHugePageBytes) - 1));
  std::lock_guard lock(mu_);
  POISE_ASSERT(c->live > 0);
  std::memcpy(p, &c->free_list, sizeof(void*));
  c->free_list = p;
  POISE_POISON(p, object_bytes_);
  --c->live;
  if (!c->on_partial) push_partial(c);
  if (c->live > 0) return;
  // Empty: keep it as the spare, or give it back.
  unlink_partial(c);
  if (spare_ == nullptr) {
    spare_ = c;
    return;
  }
  --chunks_;
  unmap_index_memory(c, kHugePageBytes);
}

size_t Slab::chunks() const {
  std::lock_guard lock(mu_);
  return chunks_;
}

}  // namespace poise
