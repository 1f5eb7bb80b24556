#include "fs/extent_map.h"

#include <gtest/gtest.h>

namespace poise {
namespace {

TEST(ExtentMap, MergesContiguousAndSplitsOnClear) {
  ExtentMap map;
  map.set(Extent{FileBlock(0), DevBlock(100), 4, 0}, nullptr);
  map.set(Extent{FileBlock(4), DevBlock(104), 4, 0}, nullptr);
  EXPECT_EQ(map.extent_count(), 1u);
  EXPECT_EQ(map.mapped_blocks(), 8u);
  std::vector<Extent> removed;
  map.clear(FileBlock(2), 3, &removed);
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(removed[0], (Extent{FileBlock(2), DevBlock(102), 3, 0}));
  EXPECT_EQ(map.extent_count(), 2u);
  EXPECT_EQ(map.mapped_blocks(), 5u);
  Lookup hole = map.lookup(FileBlock(3));
  EXPECT_FALSE(hole.mapped);
  EXPECT_EQ(hole.hole_blocks, 2u);
  Lookup tail = map.lookup(FileBlock(6));
  ASSERT_TRUE(tail.mapped);
  EXPECT_EQ(tail.mapping.dev_block, DevBlock(106));
  EXPECT_EQ(tail.mapping.block_count, 2u);
  EXPECT_EQ(map.end(), FileBlock(8));
}

TEST(ExtentMap, SetReplacesAndReportsWhatItReplaced) {
  ExtentMap map;
  map.set(Extent{FileBlock(0), DevBlock(10), 10, 1}, nullptr);
  std::vector<Extent> removed;
  map.set(Extent{FileBlock(5), DevBlock(500), 2, 0}, &removed);
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(removed[0], (Extent{FileBlock(5), DevBlock(15), 2, 1}));
  auto r = map.range(FileBlock(4), 4);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0], (Extent{FileBlock(4), DevBlock(14), 1, 1}));
  EXPECT_EQ(r[1], (Extent{FileBlock(5), DevBlock(500), 2, 0}));
  EXPECT_EQ(r[2], (Extent{FileBlock(7), DevBlock(17), 1, 1}));
  EXPECT_EQ(map.mapped_blocks(), 10u);
}

}  // namespace
}  // namespace poise
