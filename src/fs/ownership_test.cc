#include "fs/ownership.h"

#include <gtest/gtest.h>

#include "base/random.h"

namespace poise {
namespace {

TEST(Ownership, SharedBlocksListEveryOwnerAndMerge) {
  OwnershipMap map;
  map.add({DevBlock(100), 10}, file_owner(InodeNumber(5), FileBlock(0)));
  map.add({DevBlock(104), 2}, file_owner(InodeNumber(6), FileBlock(0)));
  EXPECT_EQ(map.refcount(DevBlock(103)), 1u);
  EXPECT_EQ(map.refcount(DevBlock(104)), 2u);
  EXPECT_EQ(map.segment_count(), 3u);
  std::vector<std::pair<DevRun, std::vector<Owner>>> seen;
  map.visit({DevBlock(104), 1}, [&](DevRun r, const std::vector<Owner>& o) { seen.emplace_back(r, o); });
  ASSERT_EQ(seen.size(), 1u);
  ASSERT_EQ(seen[0].second.size(), 2u);
  EXPECT_EQ(seen[0].second[0], file_owner(InodeNumber(5), FileBlock(4)));
  EXPECT_EQ(seen[0].second[1], file_owner(InodeNumber(6), FileBlock(0)));
  std::vector<DevRun> orphaned;
  map.remove({DevBlock(104), 2}, file_owner(InodeNumber(6), FileBlock(0)), &orphaned);
  EXPECT_TRUE(orphaned.empty());
  EXPECT_EQ(map.segment_count(), 1u) << "segments merge back once ownership is uniform again";
  map.remove({DevBlock(100), 10}, file_owner(InodeNumber(5), FileBlock(0)), &orphaned);
  ASSERT_EQ(orphaned.size(), 1u);
  EXPECT_EQ(orphaned[0], (DevRun{DevBlock(100), 10}));
  EXPECT_EQ(map.owned_blocks(), 0u);
}

TEST(Ownership, IncrementalEqualsRebuilt) {
  OwnershipMap a, b;
  a.add({DevBlock(0), 8}, file_owner(InodeNumber(2), FileBlock(0)));
  a.add({DevBlock(8), 8}, file_owner(InodeNumber(2), FileBlock(8)));
  b.add({DevBlock(0), 16}, file_owner(InodeNumber(2), FileBlock(0)));
  EXPECT_EQ(a, b);
  a.add({DevBlock(3), 1}, metadata_owner(MetadataKind::Journal));
  EXPECT_FALSE(a == b);
  EXPECT_NE(a.first_difference(b).find("device block"), std::string::npos);
}

}  // namespace
}  // namespace poise

namespace poise {
namespace {

TEST(Ownership, OnePassBuildEqualsIncrementalAdds) {
  Rng rng(test_seed("Ownership.OnePassBuildEqualsIncrementalAdds"));
  std::vector<Claim> claims;
  OwnershipMap incremental;
  for (int i = 0; i < 2000; ++i) {
    DevRun run{DevBlock(rng.below(5000)), 1 + rng.below(40)};
    Owner owner = file_owner(InodeNumber(2 + rng.below(50)), FileBlock(rng.below(1000) * 100));
    claims.push_back({run, owner});
    incremental.add(run, owner);
  }
  OwnershipMap built;
  EXPECT_FALSE(built.build(claims).has_value()) << "files may share blocks";
  EXPECT_EQ(built.first_difference(incremental), "");
  EXPECT_EQ(built.owned_blocks(), incremental.owned_blocks());

  claims.push_back({DevRun{DevBlock(10), 3}, metadata_owner(MetadataKind::Journal)});
  claims.push_back({DevRun{DevBlock(11), 1}, file_owner(InodeNumber(99), FileBlock(0))});
  OwnershipMap conflicting;
  auto conflict = conflicting.build(claims);
  ASSERT_TRUE(conflict.has_value()) << "metadata shared with a file is a conflict";
  EXPECT_LE(conflict->run.start, DevBlock(11));
}

}  // namespace
}  // namespace poise
