// Memory for the in-DRAM metadata index (inodes, directory and inode tables),
// taken from the kernel in 2 MiB transparent huge pages.
//
// Why: creating a file grows the index by a few hundred bytes. From the C
// heap that is a fresh 4 KiB page, and so a page fault, every dozen creates,
// and a TLB miss on most lookups in a table of a million names; a fault costs
// more than the whole create (several microseconds in a VM). The kernel keeps
// its own inodes and dentries in slabs on huge direct-mapped pages; this is
// the user-space equivalent: `Slab` packs fixed-size objects into 2 MiB chunks,
// and `IndexAllocator` gives large tables their own huge-page mappings. With
// `transparent_hugepage` set to `never` both still work, on 4 KiB pages.
//
// Every byte mapped here is counted (`index_memory_bytes`), so the DRAM figure
// of the benchmarks adds it to the C heap's.
//
// Thread-safety: all functions and Slab members are safe to call concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>

namespace poise {

inline constexpr size_t kHugePageBytes = 2u << 20;

// Tables at least this large get their own mapping; smaller ones use the heap.
inline constexpr size_t kIndexMappingMinBytes = kHugePageBytes;

// A zeroed, `kHugePageBytes`-aligned mapping of `bytes` (rounded up to whole
// huge pages), advised for transparent huge pages. Throws std::bad_alloc.
void* map_index_memory(size_t bytes);
void unmap_index_memory(void* p, size_t bytes);
// Bytes currently mapped by map_index_memory, slabs included.
size_t index_memory_bytes();

// Fixed-size objects packed into 2 MiB chunks. Each chunk keeps its own free
// list; chunks with room are kept on a list, and a chunk whose last object is
// freed goes back to the kernel (one spare is kept, so a create/unlink loop
// does not map and unmap). Under AddressSanitizer free slots are poisoned, so
// a use after free is still reported.
class Slab {
 public:
  Slab(size_t object_bytes, size_t align);
  ~Slab();
  Slab(const Slab&) = delete;
  Slab& operator=(const Slab&) = delete;

  void* allocate();  // throws std::bad_alloc
  void free(void* p);

  size_t object_bytes() const { return object_bytes_; }
  size_t objects_per_chunk() const { return per_chunk_; }
  size_t chunks() const;

 private:
  struct Chunk;
  void unlink_partial(Chunk* c);
  void push_partial(Chunk* c);

  const size_t object_bytes_;
  const size_t first_offset_;  // where the first object starts in a chunk
  const size_t per_chunk_;
  mutable std::mutex mu_;
  Chunk* partial_ = nullptr;  // chunks with a free slot
  Chunk* spare_ = nullptr;    // one empty chunk kept mapped
  size_t chunks_ = 0;
};

// The process-wide slab for objects of this size and alignment.
template <size_t Bytes, size_t Align>
Slab& slab_for() {
  static Slab* slab = new Slab(Bytes, Align);  // never destroyed: frees may run at exit
  return *slab;
}

// ThreadSanitizer tracks a mutex by its address and cannot tell that a slab
// slot was freed and handed to a new object (it sees the C heap only), so the
// inodes' lock order across reused slots would look inverted. Under TSan single
// objects come from the heap; the slab itself is still tested directly.
#if defined(__SANITIZE_THREAD__)
inline constexpr bool kSlabForSingleObjects = false;
#else
inline constexpr bool kSlabForSingleObjects = true;
#endif

// An allocator for index containers: single objects come from a slab of their
// size (so `std::allocate_shared<Inode>(IndexAllocator<Inode>{})` puts the inode
// and its reference counts in one slab slot), arrays of kIndexMappingMinBytes or
// more from their own huge-page mapping, anything else from the heap.
template <class T>
struct IndexAllocator {
  using value_type = T;
  IndexAllocator() = default;
  template <class U>
  IndexAllocator(const IndexAllocator<U>&) {}  // NOLINT: rebinding is implicit

  T* allocate(size_t n) {
    if (kSlabForSingleObjects && n == 1) return static_cast<T*>(slab_for<sizeof(T), alignof(T)>().allocate());
    size_t bytes = n * sizeof(T);
    if (bytes >= kIndexMappingMinBytes && alignof(T) <= kHugePageBytes) {
      return static_cast<T*>(map_index_memory(bytes));
    }
    return static_cast<T*>(::operator new(bytes, std::align_val_t(alignof(T))));
  }
  void deallocate(T* p, size_t n) {
    if (kSlabForSingleObjects && n == 1) return slab_for<sizeof(T), alignof(T)>().free(p);
    size_t bytes = n * sizeof(T);
    if (bytes >= kIndexMappingMinBytes && alignof(T) <= kHugePageBytes) return unmap_index_memory(p, bytes);
    ::operator delete(p, std::align_val_t(alignof(T)));
  }
  template <class U>
  bool operator==(const IndexAllocator<U>&) const { return true; }
};

}  // namespace poise
