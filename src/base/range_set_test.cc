#include "base/range_set.h"

#include <gtest/gtest.h>

namespace poise {
namespace {

TEST(RangeSet, AddReportsOnlyWhatIsNew) {
  RangeSet set;
  EXPECT_EQ(set.add({10, 5}), (std::vector<Range>{{10, 5}}));
  EXPECT_EQ(set.add({20, 5}), (std::vector<Range>{{20, 5}}));
  EXPECT_EQ(set.add({5, 30}), (std::vector<Range>{{5, 5}, {15, 5}, {25, 10}}));
  EXPECT_EQ(set.ranges(), (std::vector<Range>{{5, 30}}));
  EXPECT_TRUE(set.add({12, 3}).empty());
  set.remove({10, 5});
  EXPECT_EQ(set.ranges(), (std::vector<Range>{{5, 5}, {15, 20}}));
  EXPECT_EQ(set.first_overlap({0, 100}), (Range{5, 5}));
  EXPECT_EQ(set.first_overlap({12, 10}), (Range{15, 7}));
  EXPECT_FALSE(set.first_overlap({10, 5}).has_value());
  set.remove({0, 100});
  EXPECT_TRUE(set.empty());
}

}  // namespace
}  // namespace poise
