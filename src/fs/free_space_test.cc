#include "fs/free_space.h"

#include <gtest/gtest.h>

namespace poise {
namespace {

TEST(FreeSpace, CoalescesAndCounts) {
  FreeSpace free;
  free.add({DevBlock(10), 5});
  free.add({DevBlock(20), 5});
  free.add({DevBlock(15), 5});
  EXPECT_EQ(free.run_count(), 1u);
  EXPECT_EQ(free.free_blocks(), 15u);
  free.remove({DevBlock(12), 3});
  EXPECT_EQ(free.run_count(), 2u);
  EXPECT_TRUE(free.is_free({DevBlock(15), 10}));
  EXPECT_FALSE(free.is_free({DevBlock(11), 3}));
}

TEST(FreeSpace, LargeRequestsGetAlignedRunsAndSmallOnesBestFit) {
  FreeSpace free;
  free.add({DevBlock(3), 2000});       // holds an aligned 512 at 512
  free.add({DevBlock(5000), 8});      // a small hole
  auto big = free.allocate(1024, std::nullopt);
  ASSERT_TRUE(big.has_value());
  EXPECT_EQ(big->start.value() % kHugeBlocks, 0u);
  EXPECT_EQ(big->count, 1024u);
  auto small = free.allocate(8, std::nullopt);
  ASSERT_TRUE(small.has_value());
  EXPECT_EQ(small->start, DevBlock(5000)) << "best fit takes the exact hole";
  auto hinted = free.allocate(4, DevBlock(10));
  ASSERT_TRUE(hinted.has_value());
  EXPECT_EQ(hinted->start, DevBlock(10));
}

TEST(FreeSpace, PartialWhenNothingIsLargeEnough) {
  FreeSpace free;
  free.add({DevBlock(100), 3});
  free.add({DevBlock(200), 5});
  auto r = free.allocate(10, std::nullopt);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->count, 5u);
  EXPECT_EQ(free.free_blocks(), 3u);
}

}  // namespace
}  // namespace poise
