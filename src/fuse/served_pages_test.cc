#include "fuse/served_pages.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace poise::fusemount {
namespace {

std::vector<std::byte> bytes_of(size_t n, unsigned seed) {
  std::vector<std::byte> out(n);
  std::mt19937 rng(seed);
  for (auto& b : out) b = std::byte(rng());
  return out;
}

std::span<const std::byte> page(const std::vector<std::byte>& data, size_t index, size_t length = 4096) {
  return std::span<const std::byte>(data).subspan(index * 4096, length);
}

TEST(ServedPages, VouchesOnlyForTheBytesServedWhole) {
  ServedPages served;
  const auto data = bytes_of(3 * 4096 + 100, 1);  // three whole pages and a partial last one
  served.record(7, 0, data, true, served.epoch());
  EXPECT_EQ(served.pages(), 4u);
  EXPECT_TRUE(served.vouches(7, 4096, page(data, 1)));
  EXPECT_TRUE(served.vouches(7, 3 * 4096, page(data, 3, 100)));
  auto changed = std::vector<std::byte>(page(data, 1).begin(), page(data, 1).end());
  changed[4095] ^= std::byte{1};
  EXPECT_FALSE(served.vouches(7, 4096, changed)) << "one bit differs";
  EXPECT_FALSE(served.vouches(7, 3 * 4096, page(data, 2, 100))) << "other bytes of the same length";
  EXPECT_FALSE(served.vouches(7, 3 * 4096, page(data, 2))) << "a whole page where 100 bytes were served";
  EXPECT_FALSE(served.vouches(8, 4096, page(data, 1))) << "another inode";
  EXPECT_FALSE(served.vouches(7, 4097, page(data, 1))) << "not page-aligned";
  std::vector<std::byte> zeros(4096);  // a page the kernel allocated and never filled
  EXPECT_FALSE(served.vouches(7, 0, zeros));
}

TEST(ServedPages, APartlyCoveredPageIsNotVouchedFor) {
  ServedPages served;
  const auto data = bytes_of(3 * 4096, 2);
  served.record(1, 0, data, false, served.epoch());
  // A write of bytes 100..5000: page 0 and page 1 now mix old and new bytes in the kernel.
  const auto part = bytes_of(4900, 3);
  served.record(1, 100, part, false, served.epoch());
  EXPECT_FALSE(served.vouches(1, 0, page(data, 0)));
  EXPECT_FALSE(served.vouches(1, 4096, page(data, 1)));
  EXPECT_TRUE(served.vouches(1, 8192, page(data, 2)));
  // Bytes that do not reach the end of file do not make a partial last page whole.
  served.record(2, 0, std::span<const std::byte>(data).first(5000), false, served.epoch());
  EXPECT_TRUE(served.vouches(2, 0, page(data, 0)));
  EXPECT_FALSE(served.vouches(2, 4096, page(data, 1, 904)));
}

// A write's checksums come after its reply (reserve, then fill): until the
// fill its pages vouch for nothing, and a later write, a drop or the kernel
// forgetting the inode in between wins over the late fill.
TEST(ServedPages, ALateFillKeepsOnlyTheMarksStillStanding) {
  ServedPages served;
  const auto first = bytes_of(2 * 4096, 10), second = bytes_of(4096, 11);
  const uint64_t t1 = served.reserve(3, 0, first.size(), false, served.epoch());
  ASSERT_NE(t1, 0u);
  EXPECT_FALSE(served.vouches(3, 0, page(first, 0))) << "a page whose checksum is pending vouched";
  const uint64_t t2 = served.reserve(3, 0, second.size(), false, served.epoch());  // the next write, page 0
  served.fill(3, 0, second, false, t2);
  served.fill(3, 0, first, false, t1);  // the first write's late fill
  EXPECT_TRUE(served.vouches(3, 0, page(second, 0))) << "a late fill overwrote the later write's page";
  EXPECT_FALSE(served.vouches(3, 0, page(first, 0)));
  EXPECT_TRUE(served.vouches(3, 4096, page(first, 1))) << "the page only the first write had";

  const uint64_t t3 = served.reserve(4, 0, first.size(), false, served.epoch());
  served.drop(4, 4096, 1);
  served.fill(4, 0, first, false, t3);
  EXPECT_TRUE(served.vouches(4, 0, page(first, 0)));
  EXPECT_FALSE(served.vouches(4, 4096, page(first, 1))) << "a fill recorded a page dropped after its mark";

  const uint64_t before = served.pages();
  const uint64_t t4 = served.reserve(5, 0, first.size(), false, served.epoch());
  served.forget(5);
  served.fill(5, 0, first, false, t4);
  EXPECT_FALSE(served.vouches(5, 0, page(first, 0)));
  EXPECT_EQ(served.pages(), before) << "a fill after the kernel forgot the inode left records for it";

  const uint64_t stale = served.epoch();
  served.drop(9, 0, 0);  // a change anywhere between the epoch and the mark
  EXPECT_EQ(served.reserve(6, 0, first.size(), false, stale), 0u);
}

TEST(ServedPages, DropAndForgetEndTheRecords) {
  ServedPages served;
  const auto data = bytes_of(10 * 4096, 4);
  served.record(5, 0, data, true, served.epoch());
  served.drop(5, 4096 + 10, 20);  // inside page 1 only
  EXPECT_TRUE(served.vouches(5, 0, page(data, 0)));
  EXPECT_FALSE(served.vouches(5, 4096, page(data, 1)));
  EXPECT_TRUE(served.vouches(5, 8192, page(data, 2)));
  served.drop(5, 6 * 4096, 0);  // from page 6 to the end
  EXPECT_TRUE(served.vouches(5, 5 * 4096, page(data, 5)));
  EXPECT_FALSE(served.vouches(5, 9 * 4096, page(data, 9)));
  served.record(6, 0, data, false, served.epoch());
  served.drop(6, UINT64_MAX - 10, 100);  // a range that would overflow: to the end, no record in it
  EXPECT_EQ(served.pages(), 15u);
  served.drop(6, 9 * 4096 + 5, UINT64_MAX);  // a length that would overflow: from page 9 to the end
  EXPECT_TRUE(served.vouches(6, 8 * 4096, page(data, 8)));
  EXPECT_FALSE(served.vouches(6, 9 * 4096, page(data, 9)));
  served.forget(6);
  EXPECT_EQ(served.pages(), 5u);
  served.forget(5);
  EXPECT_EQ(served.pages(), 0u);
  EXPECT_FALSE(served.vouches(5, 0, page(data, 0)));
}

TEST(ServedPages, BytesReadBeforeAChangeAreNotRecordedAfterIt) {
  ServedPages served;
  const auto data = bytes_of(2 * 4096, 6);
  served.record(3, 0, data, false, served.epoch());
  const uint64_t before_read = served.epoch();
  served.drop(3, 0, 4096);  // a change commits while the read's bytes are on their way
  served.record(3, 0, data, false, before_read);
  EXPECT_FALSE(served.vouches(3, 0, page(data, 0))) << "the old bytes must not come back as vouched";
  EXPECT_FALSE(served.vouches(3, 4096, page(data, 1))) << "nor keep a record the read covered";
  served.record(3, 0, data, false, served.epoch());
  EXPECT_TRUE(served.vouches(3, 0, page(data, 0)));
}

TEST(ServedPages, StopsRecordingAtItsBound) {
  ServedPages served(3);
  const auto data = bytes_of(5 * 4096, 5);
  served.record(1, 0, data, false, served.epoch());
  EXPECT_EQ(served.pages(), 3u);
  EXPECT_TRUE(served.vouches(1, 2 * 4096, page(data, 2)));
  EXPECT_FALSE(served.vouches(1, 3 * 4096, page(data, 3))) << "past the bound: not recorded";
  served.drop(1, 0, 4096);
  served.record(1, 4 * 4096, page(data, 4), false, served.epoch());  // room again
  EXPECT_TRUE(served.vouches(1, 4 * 4096, page(data, 4)));
}

}  // namespace
}  // namespace poise::fusemount
