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
  auto device = open_device(path, {CreateMode::CreateIfMissing, 1ull << 40});
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
  auto odd = open_device(path, {CreateMode::CreateIfMissing, (16ull << 20) + 1});
  ASSERT_FALSE(odd.has_value());
  EXPECT_EQ(odd.error().code, EINVAL);
  ::unlink(path.c_str());
  auto missing = open_device(path);
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code, ENOENT);
}

}  // namespace
}  // namespace poise
