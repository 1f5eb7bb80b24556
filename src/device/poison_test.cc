#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "device/memory_device.h"
#include "device/poison_list.h"

namespace poise {
namespace {

TEST(PoisonList, MergesSplitsAndFindsOverlaps) {
  PoisonList list;
  list.add(4096, 4096);
  list.add(8192, 100);   // touches: merges
  list.add(20000, 10);
  EXPECT_EQ(list.ranges(), (std::vector<BadRange>{{4096, 4196}, {20000, 10}}));
  EXPECT_FALSE(list.first_overlap(0, 4096).has_value());
  auto hit = list.first_overlap(4000, 200);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(*hit, (BadRange{4096, 104}));
  list.remove(5000, 1000);  // splits
  EXPECT_EQ(list.ranges(), (std::vector<BadRange>{{4096, 904}, {6000, 2292}, {20000, 10}}));
  list.remove(0, 1 << 20);
  EXPECT_TRUE(list.ranges().empty());
  EXPECT_FALSE(list.first_overlap(0, 1 << 20).has_value());
}

TEST(PoisonList, TextRoundTripAndBadLines) {
  PoisonList list;
  list.add(4096, 64);
  list.add(1 << 20, 4096);
  auto back = PoisonList::from_text(list.to_text(), 16 << 20);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->ranges(), list.ranges());
  auto outside = PoisonList::from_text("100 99999999999\n", 16 << 20);
  ASSERT_FALSE(outside.has_value());
  EXPECT_NE(outside.error().message.find("line 1"), std::string::npos);
  EXPECT_FALSE(PoisonList::from_text("# ok\n12 banana\n", 16 << 20).has_value());
}

TEST(EmulatedPoison, ReadsOfPoisonFailAndTheRestRead) {
  MemoryDevice device(16 << 20);
  device.write(0, "healthy", 7);
  ASSERT_TRUE(device.inject_poison(8192, 4096).has_value());
  char buf[16];
  EXPECT_TRUE(device.read(0, buf, 7).has_value());
  EXPECT_TRUE(device.read(8176, buf, 16).has_value()) << "the bytes just before the poison read";
  auto straddle = device.read(8190, buf, 4);
  ASSERT_FALSE(straddle.has_value());
  EXPECT_EQ(straddle.error().code, EIO);
  EXPECT_NE(straddle.error().message.find("8192..8194"), std::string::npos) << straddle.error().message;
  EXPECT_EQ(*device.bad_ranges(), (std::vector<BadRange>{{8192, 4096}}));
  ASSERT_TRUE(device.clear_poison(8192, 4096).has_value());
  EXPECT_TRUE(device.read(8190, buf, 4).has_value());
  EXPECT_EQ(device.inject_poison(16 << 20, 1).error().code, EINVAL);
}

TEST(EmulatedPoison, FileDeviceKeepsItsListBesideTheImage) {
  std::string path = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") + "/poise_poison_" +
                     std::to_string(::getpid());
  ::unlink(path.c_str());
  ::unlink((path + ".poison").c_str());
  {
    auto device = open_device(path, {CreateMode::CreateIfMissing, 16 << 20});
    ASSERT_TRUE(device.has_value());
    ASSERT_TRUE((*device)->inject_poison(1 << 20, 4096).has_value());
  }
  auto device = open_device(path);
  ASSERT_TRUE(device.has_value());
  EXPECT_EQ(*(*device)->bad_ranges(), (std::vector<BadRange>{{1 << 20, 4096}}));
  char c;
  EXPECT_EQ((*device)->read((1 << 20) + 5, &c, 1).error().code, EIO);
  device->reset();
  ::unlink(path.c_str());
  ::unlink((path + ".poison").c_str());
}

class RecordingHolder : public FailureHolder {
 public:
  Result<void> notify_failure(uint64_t offset, uint64_t length, FailureFlags flags) override {
    calls.push_back({offset, length, flags});
    return {};
  }
  struct Call {
    uint64_t offset, length;
    FailureFlags flags;
  };
  std::vector<Call> calls;
};

TEST(FailureNotification, OneRangedCallToTheOneHolder) {
  MemoryDevice device(1ull << 40);  // 1 TiB, reserved lazily
  EXPECT_EQ(device.notify_failure(0, 4096, FailureFlags::ActionRequired).error().code, ENXIO);
  RecordingHolder holder, other;
  ASSERT_TRUE(device.register_holder(&holder).has_value());
  EXPECT_EQ(device.register_holder(&other).error().code, EBUSY);
  ASSERT_TRUE(device.notify_failure(0, UINT64_MAX, FailureFlags::PreRemove).has_value());
  ASSERT_EQ(holder.calls.size(), 1u) << "the whole device is one call, not one per page";
  EXPECT_EQ(holder.calls[0].length, 1ull << 40);
  EXPECT_TRUE(has(holder.calls[0].flags, FailureFlags::PreRemove));
  EXPECT_EQ(device.notify_failure(1ull << 40, 1, FailureFlags::None).error().code, EINVAL);
  device.unregister_holder(&holder);
  EXPECT_EQ(device.notify_failure(0, 4096, FailureFlags::None).error().code, ENXIO);
  EXPECT_TRUE(other.calls.empty());
}

}  // namespace
}  // namespace poise
