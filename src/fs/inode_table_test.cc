#include "fs/inode_table.h"

#include <gtest/gtest.h>

#include <map>

#include "base/random.h"
#include "fs/fs_impl.h"

namespace poise {
namespace {

// Random inserts and erases against a std::map: lookups, size, the largest
// number and iteration agree after every step batch.
TEST(InodeTable, MatchesModel) {
  Rng rng(test_seed("InodeTable.MatchesModel"));
  InodeTable table;
  std::map<uint64_t, InodePtr> model;
  uint64_t next = 2;
  for (int step = 0; step < 20000; ++step) {
    if (model.empty() || rng.below(100) < 60) {
      // Mostly increasing numbers, as the filesystem hands them out; sometimes far away.
      uint64_t ino = rng.chance(50) ? rng.below(1ull << 40) + 2 : next++;
      if (model.count(ino) != 0) continue;
      InodePtr inode = new_inode(InodeNumber(ino));
      table.insert(ino, inode);
      model[ino] = inode;
    } else {
      auto it = model.begin();
      std::advance(it, rng.below(std::min<uint64_t>(model.size(), 100)));
      table.erase(it->first);
      model.erase(it);
    }
    if (step % 997 != 0) continue;
    ASSERT_EQ(table.size(), model.size());
    ASSERT_EQ(table.max_ino(), model.empty() ? 0 : model.rbegin()->first);
    std::map<uint64_t, Inode*> seen;
    for (const auto& [ino, inode] : table) seen[ino] = inode.get();
    ASSERT_EQ(seen.size(), model.size());
    for (const auto& [ino, inode] : model) {
      ASSERT_EQ(seen[ino], inode.get());
      const InodePtr* found = table.find(ino);
      ASSERT_NE(found, nullptr);
      ASSERT_EQ(found->get(), inode.get());
      ASSERT_EQ(table.find(ino + (1ull << 41)), nullptr);
    }
  }
}

TEST(InodeTable, ErasingReleasesTheInodeAndItsPage) {
  InodeTable table;
  std::weak_ptr<Inode> watch;
  {
    InodePtr inode = new_inode(InodeNumber(600));
    watch = inode;
    table.insert(600, std::move(inode));
  }
  EXPECT_FALSE(watch.expired());
  EXPECT_TRUE(table.contains(600));
  table.erase(600);
  table.erase(600);  // absent: no-op
  EXPECT_TRUE(watch.expired()) << "the table held the last reference";
  EXPECT_EQ(table.size(), 0u);
  EXPECT_EQ(table.begin(), table.end());
  EXPECT_EQ(table.find(600), nullptr);
}

}  // namespace
}  // namespace poise
