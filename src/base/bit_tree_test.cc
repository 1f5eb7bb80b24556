#include "base/bit_tree.h"

#include <gtest/gtest.h>

#include <set>

#include "base/random.h"

namespace poise {
namespace {

std::optional<uint64_t> model_at_or_before(const std::set<uint64_t>& s, uint64_t x) {
  auto it = s.upper_bound(x);
  if (it == s.begin()) return std::nullopt;
  return *std::prev(it);
}

std::optional<uint64_t> model_at_or_after(const std::set<uint64_t>& s, uint64_t x) {
  auto it = s.lower_bound(x);
  if (it == s.end()) return std::nullopt;
  return *it;
}

TEST(BitTree, EmptyAndEdges) {
  BitTree t;
  EXPECT_TRUE(t.empty());
  EXPECT_FALSE(t.at_or_before(0).has_value());
  EXPECT_FALSE(t.at_or_after(0).has_value());
  EXPECT_FALSE(t.at_or_before(UINT64_MAX).has_value());
  EXPECT_TRUE(t.insert(0));
  EXPECT_FALSE(t.insert(0)) << "a second insert is not a new member";
  EXPECT_EQ(t.at_or_before(UINT64_MAX), 0u);
  EXPECT_EQ(t.at_or_after(0), 0u);
  EXPECT_FALSE(t.after(0).has_value());
  EXPECT_TRUE(t.insert(UINT64_MAX));  // grows to every level a 64-bit key needs
  EXPECT_EQ(t.after(0), UINT64_MAX);
  EXPECT_EQ(t.before(UINT64_MAX), 0u);
  EXPECT_EQ(t.at_or_before(UINT64_MAX - 1), 0u);
  EXPECT_FALSE(t.after(UINT64_MAX).has_value());
  EXPECT_TRUE(t.erase(0));
  EXPECT_FALSE(t.erase(0));
  EXPECT_FALSE(t.contains(0));
  EXPECT_EQ(t.at_or_after(0), UINT64_MAX);
  EXPECT_FALSE(t.at_or_before(UINT64_MAX - 1).has_value());
  EXPECT_EQ(t.size(), 1u);
}

// Random inserts, erases and neighbour queries against a std::set, with keys
// clustered (as segment starts are) and spread over the whole 64-bit range.
TEST(BitTree, MatchesModel) {
  Rng rng(test_seed("BitTree.MatchesModel"));
  BitTree t;
  std::set<uint64_t> model;
  auto key = [&] {
    if (rng.chance(50)) return rng.next();  // rare: each far key takes a page on every level
    return rng.chance(2) ? rng.below(4096) : rng.below(1ull << 28);
  };
  for (int step = 0; step < 40000; ++step) {
    uint64_t x = key();
    switch (rng.below(4)) {
      case 0:
      case 1:
        ASSERT_EQ(t.insert(x), model.insert(x).second) << x;
        break;
      case 2: {
        if (!model.empty() && rng.below(2) == 0) x = model_at_or_after(model, x).value_or(*model.begin());
        ASSERT_EQ(t.erase(x), model.erase(x) == 1) << x;
        break;
      }
      default:
        ASSERT_EQ(t.contains(x), model.count(x) == 1) << x;
        ASSERT_EQ(t.at_or_before(x), model_at_or_before(model, x)) << x;
        ASSERT_EQ(t.at_or_after(x), model_at_or_after(model, x)) << x;
    }
    ASSERT_EQ(t.size(), model.size());
  }
  // Walking in order visits exactly the members.
  std::vector<uint64_t> walked;
  for (auto at = t.at_or_after(0); at; at = t.after(*at)) walked.push_back(*at);
  EXPECT_EQ(walked, std::vector<uint64_t>(model.begin(), model.end()));
  std::vector<uint64_t> backwards;
  for (auto at = t.at_or_before(UINT64_MAX); at; at = t.before(*at)) backwards.push_back(*at);
  EXPECT_EQ(backwards, std::vector<uint64_t>(model.rbegin(), model.rend()));
}

}  // namespace
}  // namespace poise
