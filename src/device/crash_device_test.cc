#include "device/crash_device.h"

#include <gtest/gtest.h>

#include <cstring>

namespace poise {
namespace {

bool holds(const Device& device, uint64_t offset, const char* text) {
  return std::memcmp(device.data() + offset, text, std::strlen(text)) == 0;
}

TEST(CrashDevice, OnlyFencedWriteBacksAreDurable) {
  CrashDevice device(16 << 20);
  device.write(0, "fenced", 6);
  device.drain();
  device.write(4096, "unfenced", 8);
  std::memcpy(device.data() + 8192, "unflushed", 9);  // a store nobody wrote back
  auto durable = device.durable_image();
  EXPECT_TRUE(holds(*durable, 0, "fenced"));
  EXPECT_FALSE(holds(*durable, 4096, "unfenced"));
  EXPECT_FALSE(holds(*durable, 8192, "unflushed"));
  EXPECT_TRUE(holds(device, 8192, "unflushed"));  // the live image has it
}

TEST(CrashDevice, WriteBackSnapshotsTheLineAtFlushTime) {
  CrashDevice device(16 << 20);
  std::memcpy(device.data(), "first", 5);
  device.flush(0, 5);
  std::memcpy(device.data(), "later", 5);  // stored after the write-back, never flushed
  device.drain();
  EXPECT_TRUE(holds(*device.durable_image(), 0, "first"));
}

TEST(CrashDevice, CapturesTheArmedFlushPoint) {
  CrashDevice device(16 << 20);
  device.arm(2, 7);
  device.write(0, "one", 3);
  device.drain();  // flush point 1
  device.write(4096, "two", 3);
  device.drain();  // flush point 2: "two" may or may not be in the capture
  device.write(8192, "three", 5);
  device.drain();
  ASSERT_TRUE(device.crashed());
  EXPECT_EQ(device.flush_points(), 3u);
  auto image = device.crash_image();
  EXPECT_TRUE(holds(*image, 0, "one"));
  EXPECT_FALSE(holds(*image, 8192, "three"));
}

}  // namespace
}  // namespace poise
