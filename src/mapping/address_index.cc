#include "mapping/address_index.h"

#include <pthread.h>

#include <atomic>
#include <mutex>
#include <shared_mutex>

#include <absl/container/btree_map.h>

namespace poise::mapping {

namespace {

struct AddressIndex {
  std::shared_mutex mutex;
  struct Entry {
    uintptr_t end;
    std::shared_ptr<MapState> map;
  };
  absl::btree_map<uintptr_t, Entry> ranges;  // by start address
  std::atomic<uint64_t> count{0};            // ranges.size(), readable without the lock
};

// Never destroyed: faults may come during exit. A child made by fork() starts
// with an empty index: the parent's mappings are not its own (their device
// memory is not even inherited), and its lock may have been held by a parent
// thread at the fork. The old index is left behind, untouched.
AddressIndex* instance = nullptr;

AddressIndex& index() {
  static const bool installed = [] {
    instance = new AddressIndex;
    ::pthread_atfork(nullptr, nullptr, [] { instance = new AddressIndex; });
    return true;
  }();
  (void)installed;
  return *instance;
}

}  // namespace

void index_address_range(std::byte* va, uint64_t length, std::shared_ptr<MapState> m) {
  auto start = reinterpret_cast<uintptr_t>(va);
  std::unique_lock lock(index().mutex);
  index().ranges.insert_or_assign(start, AddressIndex::Entry{start + length, std::move(m)});
  index().count.store(index().ranges.size(), std::memory_order_release);
}

void unindex_address_range(std::byte* va) {
  std::unique_lock lock(index().mutex);
  index().ranges.erase(reinterpret_cast<uintptr_t>(va));
  index().count.store(index().ranges.size(), std::memory_order_release);
}

std::shared_ptr<MapState> find_mapping_at(uintptr_t addr) {
  std::shared_lock lock(index().mutex);
  auto& ranges = index().ranges;
  auto it = ranges.upper_bound(addr);
  if (it == ranges.begin()) return nullptr;
  --it;
  return addr < it->second.end ? it->second.map : nullptr;
}

bool overlaps_mapping(const void* p, uint64_t length) {
  if (length == 0 || index().count.load(std::memory_order_acquire) == 0) return false;
  const auto start = reinterpret_cast<uintptr_t>(p);
  const uintptr_t end = start + length;
  std::shared_lock lock(index().mutex);
  auto& ranges = index().ranges;
  auto it = ranges.lower_bound(end);  // the first range starting at or past the end
  if (it == ranges.begin()) return false;
  --it;  // the last range starting before the end: the only one that can reach into [start, end)
  return it->second.end > start;
}

}  // namespace poise::mapping
