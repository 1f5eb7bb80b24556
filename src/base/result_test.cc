#include "poise/result.h"

#include <gtest/gtest.h>

#include <vector>

namespace poise {
namespace {

Result<int> parse_positive(int v) {
  if (v <= 0) return fail(EINVAL, "not positive");
  return v;
}

Result<int> doubled(int v) {
  int x = TRY(parse_positive(v));
  return 2 * x;
}

Result<void> check_even(int v) {
  if (v % 2 != 0) return fail(EDOM, "odd");
  return {};
}

Result<void> chain(int v) {
  TRY(check_even(v));
  return {};
}

TEST(Result, CarriesValueOrError) {
  auto ok = doubled(21);
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(*ok, 42);
  auto bad = doubled(-1);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code, EINVAL);
  EXPECT_EQ(bad.error().message, "not positive");
  EXPECT_NE(bad.error().line, 0u);
}

TEST(Result, VoidPropagates) {
  EXPECT_TRUE(chain(4).has_value());
  auto r = chain(3);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, EDOM);
}

Result<std::vector<int>> numbers() { return std::vector<int>{1, 2, 3}; }

TEST(Result, IteratingATemporaryIsSafe) {
  int sum = 0;
  for (int v : *numbers()) sum += v;  // the vector is owned by the loop, not dangling
  EXPECT_EQ(sum, 6);
}

TEST(Result, ValueOr) {
  EXPECT_EQ(parse_positive(-5).value_or(7), 7);
  EXPECT_EQ(parse_positive(5).value_or(7), 5);
}

}  // namespace
}  // namespace poise
