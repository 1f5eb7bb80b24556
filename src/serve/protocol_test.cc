// The message layout: every field round-trips, and a message cut short, too
// long, or with a count larger than its body is refused, never read past.
#include "serve/protocol.h"

#include <gtest/gtest.h>

#include "base/random.h"

namespace poise::serve {
namespace {

std::span<const std::byte, kHeaderBytes> header_of(const std::vector<std::byte>& frame) {
  return std::span<const std::byte, kHeaderBytes>(frame.data(), kHeaderBytes);
}

TEST(Protocol, EveryFieldRoundTrips) {
  Encoder e(Op::StatPath, 0x0102030405060708ull);
  Stat st;
  st.ino = InodeNumber(77);
  st.type = FileType::Directory;
  st.mode = 01755;
  st.nlink = 3;
  st.uid = 1000;
  st.gid = 100;
  st.size_bytes = 1ull << 40;
  st.blocks = 12;
  st.atime_ns = -5;
  st.mtime_ns = 123456789012345;
  st.ctime_ns = 9;
  FsmapRecord r;
  r.device_offset_bytes = 4096;
  r.length_bytes = 8192;
  r.owner = OwnerKind::Metadata;
  r.metadata_kind = MetadataKind::RefcountList;
  r.refcount = 2;
  e.stat(st);
  e.fsmap_record(r);
  e.string(std::string("caf\xe9\0x", 6));
  e.strings({"a", "", "ccc"});
  e.i32(-71);
  const auto& frame = e.finish();

  auto h = decode_header(header_of(frame));
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->op, Op::StatPath);
  EXPECT_EQ(h->id, 0x0102030405060708ull);
  ASSERT_EQ(h->body_bytes, frame.size() - kHeaderBytes);
  Decoder d{std::span(frame).subspan(kHeaderBytes)};
  Stat st2;
  FsmapRecord r2;
  std::string s;
  std::vector<std::string> list;
  int32_t v = 0;
  ASSERT_TRUE(d.stat(&st2) && d.fsmap_record(&r2) && d.string(&s) && d.strings(&list) && d.i32(&v));
  EXPECT_TRUE(d.done());
  EXPECT_EQ(st2.ino, st.ino);
  EXPECT_EQ(st2.type, st.type);
  EXPECT_EQ(st2.mode, st.mode);
  EXPECT_EQ(st2.size_bytes, st.size_bytes);
  EXPECT_EQ(st2.atime_ns, -5);
  EXPECT_EQ(st2.mtime_ns, st.mtime_ns);
  EXPECT_EQ(r2.owner, OwnerKind::Metadata);
  EXPECT_EQ(r2.metadata_kind, MetadataKind::RefcountList);
  EXPECT_EQ(r2.refcount, 2u);
  EXPECT_EQ(s, std::string("caf\xe9\0x", 6));
  EXPECT_EQ(list, (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(v, -71);
}

TEST(Protocol, EveryCutOfAMessageIsRefused) {
  Encoder e(Op::Write, 1);
  e.u64(5);
  e.string("some bytes");
  e.strings({"x", "yy"});
  const auto& frame = e.finish();
  auto body = std::span(frame).subspan(kHeaderBytes);
  for (size_t n = 0; n < body.size(); ++n) {
    Decoder d(body.first(n));
    uint64_t a = 0;
    std::string s;
    std::vector<std::string> list;
    bool read = d.u64(&a) && d.string(&s) && d.strings(&list);
    EXPECT_FALSE(read && d.done()) << "a message cut to " << n << " bytes was accepted";
    EXPECT_FALSE(read) << n;
  }
  Decoder whole(body);
  uint64_t a = 0;
  std::string s;
  std::vector<std::string> list;
  EXPECT_TRUE(whole.u64(&a) && whole.string(&s) && whole.strings(&list) && whole.done());
}

TEST(Protocol, LengthsBeyondTheBodyOrTheLimitAreRefused) {
  Encoder e(Op::Lookup, 1);
  e.u32(0xffffffffu);  // a string "length" far past the body
  e.u32(7);
  const auto& frame = e.finish();
  Decoder d{std::span(frame).subspan(kHeaderBytes)};
  std::string s;
  EXPECT_FALSE(d.string(&s));
  EXPECT_FALSE(d.ok());

  Encoder big(Op::Lookup, 1);
  big.string(std::string(kPathBytesMax + 1, 'p'));
  const auto& f2 = big.finish();
  Decoder d2{std::span(f2).subspan(kHeaderBytes)};
  EXPECT_FALSE(d2.string(&s, kPathBytesMax)) << "a string past its given limit was accepted";
  // By default a string may be as long as the body: an operation on a path
  // longer than PATH_MAX answers ENAMETOOLONG instead of being malformed.
  Decoder d2b{std::span(f2).subspan(kHeaderBytes)};
  EXPECT_TRUE(d2b.string(&s));
  EXPECT_EQ(s.size(), kPathBytesMax + 1);

  Encoder many(Op::Check, 1);
  many.u32(1000000);  // a million strings in a body of 4 bytes
  const auto& f3 = many.finish();
  Decoder d3{std::span(f3).subspan(kHeaderBytes)};
  std::vector<std::string> list;
  EXPECT_FALSE(d3.strings(&list));
  EXPECT_LT(list.capacity(), 1000u) << "a count was trusted before the body could hold it";
}

TEST(Protocol, BadHeadersAreRefused) {
  Encoder e(Op::Sync, 9);
  auto frame = e.finish();
  EXPECT_TRUE(decode_header(header_of(frame)).has_value());
  auto unknown = frame;
  unknown[4] = std::byte(kOpMax + 1);
  EXPECT_FALSE(decode_header(header_of(unknown)).has_value());
  auto zero_op = frame;
  zero_op[4] = std::byte(0);
  EXPECT_FALSE(decode_header(header_of(zero_op)).has_value());
  auto reserved = frame;
  reserved[6] = std::byte(1);
  EXPECT_FALSE(decode_header(header_of(reserved)).has_value());
  auto huge = frame;
  uint32_t too_big = kBodyBytesMax + 1;
  for (int i = 0; i < 4; ++i) huge[i] = std::byte(too_big >> (8 * i));
  EXPECT_FALSE(decode_header(header_of(huge)).has_value());
}

TEST(Protocol, RandomBytesNeverDecodeOutOfBounds) {
  uint64_t seed = test_seed("Protocol.RandomBytes");
  Rng rng(seed);
  for (int round = 0; round < 20000; ++round) {
    std::vector<std::byte> body(rng.below(64));
    for (auto& b : body) b = std::byte(rng.below(256));
    Decoder d(body);
    Stat st;
    FsmapRecord r;
    std::vector<std::string> list;
    std::span<const std::byte> bytes;
    switch (rng.below(4)) {
      case 0: (void)d.stat(&st); break;
      case 1: (void)d.fsmap_record(&r); break;
      case 2: (void)d.strings(&list); break;
      default: (void)d.bytes(&bytes, 64); break;
    }
    if (!bytes.empty()) {  // a view inside the body, never past it
      EXPECT_GE(bytes.data(), body.data());
      EXPECT_LE(bytes.data() + bytes.size(), body.data() + body.size());
    }
  }
}

}  // namespace
}  // namespace poise::serve
