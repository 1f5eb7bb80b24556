#include "mapping/address_index.h"

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
};

AddressIndex& index() {
  static auto* instance = new AddressIndex;  // never destroyed: faults may come during exit
  return *instance;
}

}  // namespace

void index_address_range(std::byte* va, uint64_t length, std::shared_ptr<MapState> m) {
  auto start = reinterpret_cast<uintptr_t>(va);
  std::unique_lock lock(index().mutex);
  index().ranges.insert_or_assign(start, AddressIndex::Entry{start + length, std::move(m)});
}

void unindex_address_range(std::byte* va) {
  std::unique_lock lock(index().mutex);
  index().ranges.erase(reinterpret_cast<uintptr_t>(va));
}

std::shared_ptr<MapState> find_mapping_at(uintptr_t addr) {
  std::shared_lock lock(index().mutex);
  auto& ranges = index().ranges;
  auto it = ranges.upper_bound(addr);
  if (it == ranges.begin()) return nullptr;
  --it;
  return addr < it->second.end ? it->second.map : nullptr;
}

}  // namespace poise::mapping
