#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "poise/device.h"

namespace poise {
namespace {

std::string temp_path(const char* name) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/poise_" + name + "_" +
         std::to_string(::getpid());
}

TEST(FileDevice, CreatesSparseTerabyteImage) {
  std::string path = temp_path("tib");
  ::unlink(path.c_str());
  auto device = open_device(path, {CreateMode::CreateIfMissing, 1ull << 40, DeviceAccess::ReadWrite, Backing::Sparse});
  ASSERT_TRUE(device.has_value()) << device.error().message;
  EXPECT_EQ((*device)->size_bytes(), 1ull << 40);
  EXPECT_EQ((*device)->domain(), PersistenceDomain::PageCache);
  const char msg[] = "at the far end";
  (*device)->write((1ull << 40) - 4096, msg, sizeof msg);
  (*device)->drain();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, 1ull << 20) << "image is not sparse";
  device->reset();
  ::unlink(path.c_str());
}

TEST(FileDevice, PersistsAcrossReopenAndLocksOutASecondOpener) {
  std::string path = temp_path("reopen");
  ::unlink(path.c_str());
  {
    auto device = open_device(path, {CreateMode::CreateIfMissing, 16ull << 20});
    ASSERT_TRUE(device.has_value()) << device.error().message;
    auto second = open_device(path);
    ASSERT_FALSE(second.has_value());
    EXPECT_EQ(second.error().code, EBUSY);
    (*device)->write(8192, "poise", 5);
    ASSERT_TRUE((*device)->sync().has_value());
  }
  auto device = open_device(path);
  ASSERT_TRUE(device.has_value()) << device.error().message;
  char buf[5];
  ASSERT_TRUE((*device)->read(8192, buf, 5).has_value());
  EXPECT_EQ(std::memcmp(buf, "poise", 5), 0);
  device->reset();
  ::unlink(path.c_str());
}

TEST(FileDevice, RejectsBadSizesAndMissingFiles) {
  std::string path = temp_path("small");
  ::unlink(path.c_str());
  auto small = open_device(path, {CreateMode::CreateIfMissing, 1 << 20});
  ASSERT_FALSE(small.has_value());
  EXPECT_EQ(small.error().code, EINVAL);
  EXPECT_NE(small.error().message.find("16 MiB"), std::string::npos);
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << "a refused size left a file behind";
  auto odd = open_device(path, {CreateMode::CreateIfMissing, (16ull << 20) + 1});
  ASSERT_FALSE(odd.has_value());
  EXPECT_EQ(odd.error().code, EINVAL);
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << "a refused size left a file behind";
  auto missing = open_device(path);
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code, ENOENT);
}

TEST(FileDevice, ReservedBackingLeavesNoHoles) {
  std::string path = temp_path("reserved");
  ::unlink(path.c_str());
  auto device = open_device(path, {CreateMode::CreateIfMissing, 16ull << 20});
  ASSERT_TRUE(device.has_value()) << device.error().message;
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, 16ull << 20) << "a store into a hole could fault later";
  device->reset();
  ::unlink(path.c_str());
}

TEST(FileDevice, ReadOnlyOpenersShareAndWritersWait) {
  std::string path = temp_path("readonly");
  ::unlink(path.c_str());
  {
    auto device = open_device(path, {CreateMode::CreateIfMissing, 16ull << 20});
    ASSERT_TRUE(device.has_value()) << device.error().message;
    (*device)->write(4096, "poise", 5);
    ASSERT_TRUE((*device)->sync().has_value());
  }
  OpenDeviceOptions ro;
  ro.access = DeviceAccess::ReadOnly;
  auto first = open_device(path, ro);
  ASSERT_TRUE(first.has_value()) << first.error().message;
  auto second = open_device(path, ro);
  ASSERT_TRUE(second.has_value()) << "read-only openers share the image: " << second.error().message;
  char buf[5];
  ASSERT_TRUE((*second)->read(4096, buf, 5).has_value());
  EXPECT_EQ(std::memcmp(buf, "poise", 5), 0);
  auto writer = open_device(path);
  ASSERT_FALSE(writer.has_value());
  EXPECT_EQ(writer.error().code, EBUSY);
  first->reset();
  second->reset();
  ::unlink(path.c_str());
}

TEST(FileDevice, TheImageIsNeverAStandardStream) {
  std::string path = temp_path("stdio");
  ::unlink(path.c_str());
  int saved_in = ::dup(STDIN_FILENO);
  ASSERT_GE(saved_in, 0);
  ::close(STDIN_FILENO);  // the next open would get 0
  auto device = open_device(path, {CreateMode::CreateIfMissing, 16ull << 20});
  int fd = device.has_value() ? (*device)->map_fd() : -1;
  ASSERT_EQ(::dup2(saved_in, STDIN_FILENO), STDIN_FILENO);
  ::close(saved_in);
  ASSERT_TRUE(device.has_value()) << device.error().message;
  EXPECT_GT(fd, STDERR_FILENO);
  device->reset();
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace poise
