// The device-dax backend's libpmem2 path, exercised on a regular file: libpmem2
// maps any file, so the map, persist and bad-block calls are the ones a
// /dev/daxX.Y takes (this machine has no device-dax namespace to test on).
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "device/backends.h"
#include "poise/filesystem.h"

namespace poise {
namespace {

std::string make_file(const char* name, uint64_t bytes) {
  const char* dir = std::getenv("TMPDIR");
  std::string path = std::string(dir != nullptr ? dir : "/tmp") + "/poise_dax_" + name + "_" + std::to_string(::getpid());
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(bytes)), 0);
  ::close(fd);
  return path;
}

TEST(DaxDevice, MapsThroughLibpmem2AndPersists) {
  std::string path = make_file("persist", 64ull << 20);
  {
    auto device = open_dax_device(path);
    ASSERT_TRUE(device.has_value()) << device.error().message;
    EXPECT_EQ((*device)->size_bytes(), 64ull << 20);
    EXPECT_GE((*device)->alignment_bytes(), 4096u);
    const char msg[] = "written through pmem2_memcpy";
    (*device)->write(40ull << 20, msg, sizeof msg);
    (*device)->flush(40ull << 20, sizeof msg);
    (*device)->drain();
    ASSERT_TRUE((*device)->sync().has_value());
    auto again = open_dax_device(path);
    ASSERT_FALSE(again.has_value()) << "a second opener must be refused";
    EXPECT_EQ(again.error().code, EBUSY);
    auto bad = (*device)->bad_ranges();
    ASSERT_TRUE(bad.has_value()) << bad.error().message;
    EXPECT_TRUE(bad->empty());
  }
  auto device = open_dax_device(path);
  ASSERT_TRUE(device.has_value()) << device.error().message;
  EXPECT_EQ(std::memcmp((*device)->data() + (40ull << 20), "written through pmem2_memcpy", 29), 0);
  device->reset();
  ::unlink(path.c_str());
}

TEST(DaxDevice, HoldsAFilesystemAcrossRemount) {
  std::string path = make_file("fs", 64ull << 20);
  {
    auto device = open_dax_device(path);
    ASSERT_TRUE(device.has_value()) << device.error().message;
    ASSERT_TRUE(Filesystem::format(**device).has_value());
    auto fs = Filesystem::mount(**device);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    auto ino = (*fs)->create("/kept");
    ASSERT_TRUE(ino.has_value());
    std::string data(10000, 'k');
    ASSERT_TRUE((*fs)->write(*ino, 123, std::as_bytes(std::span(data))).has_value());
    ASSERT_TRUE((*fs)->unmount().has_value());
  }
  auto device = open_dax_device(path);
  ASSERT_TRUE(device.has_value()) << device.error().message;
  auto fs = Filesystem::mount(**device);
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  auto st = (*fs)->stat("/kept");
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->size_bytes, 10123u);
  std::string back(10000, '\0');
  auto got = (*fs)->read(st->ino, 123, std::as_writable_bytes(std::span(back)));
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(back, std::string(10000, 'k'));
  EXPECT_TRUE((*fs)->check().clean());
  ASSERT_TRUE((*fs)->unmount().has_value());
  device->reset();
  ::unlink(path.c_str());
}

TEST(DaxDevice, MissingOrTinyDeviceIsAClearError) {
  auto missing = open_dax_device("/nonexistent/dax0.0");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code, ENOENT);
  std::string path = make_file("tiny", 1 << 20);
  auto tiny = open_dax_device(path);
  ASSERT_FALSE(tiny.has_value());
  EXPECT_NE(tiny.error().message.find("smaller than 16 MiB"), std::string::npos) << tiny.error().message;
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace poise
