#include "cli/sizes.h"

#include <gtest/gtest.h>

#include "cli/exit_codes.h"

namespace poise::cli {
namespace {

TEST(Sizes, ParsesBinaryUnits) {
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("64M"), 64ull << 20);
  EXPECT_EQ(parse_size("4g"), 4ull << 30);
  EXPECT_EQ(parse_size("1T"), 1ull << 40);
  EXPECT_EQ(parse_size("16MiB"), 16ull << 20);
  EXPECT_EQ(parse_size("2KB"), 2048u);
  EXPECT_FALSE(parse_size(""));
  EXPECT_FALSE(parse_size("M"));
  EXPECT_FALSE(parse_size("12Q"));
  EXPECT_FALSE(parse_size("-5"));
  EXPECT_FALSE(parse_size("99999999999999999999"));
  EXPECT_FALSE(parse_size("100000000P"));
  EXPECT_EQ(human_size(1536), "1.5 KiB");
  EXPECT_EQ(human_size(12), "12 B");
}

TEST(ExitCodes, DistinctForEachKindOfFailure) {
  EXPECT_EQ(exit_code_for(ENOENT), kExitNotFound);
  EXPECT_EQ(exit_code_for(EIO), kExitIo);
  EXPECT_EQ(exit_code_for(EUCLEAN), kExitCorrupt);
  EXPECT_EQ(exit_code_for(EBADMSG), kExitCorrupt);
  EXPECT_EQ(exit_code_for(ENOSPC), kExitNoSpace);
  EXPECT_EQ(exit_code_for(EBUSY), kExitBusy);
  EXPECT_EQ(exit_code_for(ENOTSUP), kExitUnsupported);
  EXPECT_EQ(exit_code_for(EACCES), kExitDenied);
  EXPECT_EQ(exit_code_for(ECONNREFUSED), kExitFailure);
}

}  // namespace
}  // namespace poise::cli
