#include "base/crc32c.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "base/random.h"

namespace poise {
namespace {

TEST(Crc32c, KnownVectors) {
  // RFC 3720 (iSCSI) test vectors.
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xFF), inc(32);
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(crc32c(inc.data(), 32), 0x46DD794Eu);
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
}

TEST(Crc32c, HardwareMatchesPortableAndExtends) {
  Rng rng(test_seed("Crc32c.HardwareMatchesPortableAndExtends"));
  std::vector<uint8_t> buf(1000);
  for (auto& b : buf) b = static_cast<uint8_t>(rng.next());
  for (size_t len : {0, 1, 7, 8, 9, 63, 64, 999, 1000}) {
    EXPECT_EQ(crc32c(buf.data(), len), crc32c_extend_portable(0, buf.data(), len)) << len;
  }
  size_t split = rng.below(buf.size());
  EXPECT_EQ(crc32c_extend(crc32c(buf.data(), split), buf.data() + split, buf.size() - split),
            crc32c(buf.data(), buf.size()));
}

// Long buffers go three lanes at a time (1,360 bytes each) and are joined;
// lengths around and past each multiple of the three lanes, from a nonzero
// CRC, and split at random, give the table's answer.
TEST(Crc32c, ThreeLanesMatchTheTableAcrossTheirJoins) {
  Rng rng(test_seed("Crc32c.ThreeLanesMatchTheTableAcrossTheirJoins"));
  std::vector<uint8_t> buf(3 * 4080 + 201);  // the longest length, read from offset 1
  for (auto& b : buf) b = static_cast<uint8_t>(rng.next());
  for (size_t len : {4079u, 4080u, 4081u, 4087u, 4088u, 4096u, 8159u, 8160u, 8168u, 8192u, 12240u, 12440u}) {
    EXPECT_EQ(crc32c(buf.data(), len), crc32c_extend_portable(0, buf.data(), len)) << len;
    const uint32_t start = static_cast<uint32_t>(rng.next());
    EXPECT_EQ(crc32c_extend(start, buf.data() + 1, len), crc32c_extend_portable(start, buf.data() + 1, len)) << len;
  }
  for (int round = 0; round < 50; ++round) {
    const size_t from = rng.below(64), len = rng.below(buf.size() - from);
    const size_t split = rng.below(len + 1);
    const uint32_t whole = crc32c_extend_portable(0, buf.data() + from, len);
    EXPECT_EQ(crc32c_extend(crc32c(buf.data() + from, split), buf.data() + from + split, len - split), whole)
        << "from " << from << " length " << len << " split " << split;
  }
}

}  // namespace
}  // namespace poise
