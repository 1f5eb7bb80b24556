#include "base/huge_pages.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include <absl/container/flat_hash_map.h>

#include "base/random.h"

namespace poise {
namespace {

TEST(HugePages, MappingIsAlignedZeroedAndCounted) {
  size_t before = index_memory_bytes();
  void* p = map_index_memory(3 * kHugePageBytes + 5);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kHugePageBytes, 0u);
  EXPECT_EQ(index_memory_bytes() - before, 4 * kHugePageBytes);
  const auto* bytes = static_cast<const unsigned char*>(p);
  EXPECT_TRUE(std::all_of(bytes, bytes + 4 * kHugePageBytes, [](unsigned char b) { return b == 0; }));
  unmap_index_memory(p, 3 * kHugePageBytes + 5);
  EXPECT_EQ(index_memory_bytes(), before);
}

// Random allocations and frees against a model: live objects never overlap,
// keep their contents, are aligned, and emptied chunks go back to the kernel.
TEST(HugePages, SlabMatchesModel) {
  Rng rng(test_seed("HugePages.SlabMatchesModel"));
  Slab slab(200, 16);
  ASSERT_GE(slab.object_bytes(), 200u);
  std::map<uintptr_t, uint64_t> live;  // address -> stamp written into it
  size_t before = index_memory_bytes();
  for (int step = 0; step < 60000; ++step) {
    bool grow = live.empty() || rng.below(100) < (step < 30000 ? 70 : 30);
    if (grow) {
      auto* p = static_cast<unsigned char*>(slab.allocate());
      auto at = reinterpret_cast<uintptr_t>(p);
      ASSERT_EQ(at % 16, 0u);
      auto next = live.lower_bound(at);
      if (next != live.end()) {
        ASSERT_GE(next->first, at + 200) << "overlaps the next object";
      }
      if (next != live.begin()) {
        ASSERT_LE(std::prev(next)->first + 200, at) << "overlaps the previous object";
      }
      uint64_t stamp = rng.next();
      std::memset(p, static_cast<int>(stamp & 0xFF), 200);
      live[at] = stamp;
    } else {
      auto it = live.begin();
      std::advance(it, rng.below(std::min<uint64_t>(live.size(), 64)));
      auto* p = reinterpret_cast<unsigned char*>(it->first);
      for (int i = 0; i < 200; ++i) ASSERT_EQ(p[i], it->second & 0xFF) << "object contents changed";
      slab.free(p);
      live.erase(it);
    }
  }
  size_t needed = (live.size() + slab.objects_per_chunk() - 1) / slab.objects_per_chunk();
  EXPECT_GE(slab.chunks(), needed);
  for (auto& [at, stamp] : live) slab.free(reinterpret_cast<void*>(at));
  EXPECT_LE(slab.chunks(), 1u) << "emptied chunks must be unmapped, one spare kept";
  EXPECT_LE(index_memory_bytes() - before, kHugePageBytes);
}

TEST(HugePages, FreedSlotIsReusedBeforeANewChunk) {
  Slab slab(64, 8);
  std::vector<void*> all;
  for (size_t i = 0; i < slab.objects_per_chunk(); ++i) all.push_back(slab.allocate());
  EXPECT_EQ(slab.chunks(), 1u);
  void* extra = slab.allocate();  // the first chunk is full
  EXPECT_EQ(slab.chunks(), 2u);
  slab.free(all[17]);
  EXPECT_EQ(slab.allocate(), all[17]);
  slab.free(extra);
  for (void* p : all) slab.free(p);
  EXPECT_EQ(slab.chunks(), 1u);
}

TEST(HugePages, TablesOnTheAllocatorBehaveLikeAnyOther) {
  absl::flat_hash_map<uint64_t, uint64_t, absl::Hash<uint64_t>, std::equal_to<>,
                      IndexAllocator<std::pair<const uint64_t, uint64_t>>>
      table;
  size_t before = index_memory_bytes();
  for (uint64_t i = 0; i < 300000; ++i) table[i * 7919] = i;
  EXPECT_GT(index_memory_bytes(), before) << "a table this large gets its own mapping";
  for (uint64_t i = 0; i < 300000; i += 997) EXPECT_EQ(table.at(i * 7919), i);
  table = {};
  EXPECT_EQ(index_memory_bytes(), before);
  auto shared = std::allocate_shared<std::array<uint64_t, 20>>(IndexAllocator<std::array<uint64_t, 20>>{});
  (*shared)[19] = 42;
  EXPECT_EQ((*shared)[19], 42u);
}

}  // namespace
}  // namespace poise

#if defined(__SANITIZE_ADDRESS__)
namespace poise {
namespace {
// The slab hides its objects from the C heap; it must not hide a use after free.
TEST(HugePagesDeathTest, UseAfterFreeIsStillReported) {
  Slab slab(64, 8);
  auto* p = static_cast<volatile char*>(slab.allocate());
  p[0] = 1;
  slab.free(const_cast<char*>(p));
  EXPECT_DEATH(p[1] = 2, "use-after-poison");
}
}  // namespace
}  // namespace poise
#endif
