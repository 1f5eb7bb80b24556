// Helpers shared by the filesystem tests: a formatted in-memory device, a fake
// clock, and byte/string conversions.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"
#include "device/memory_device.h"
#include "format/superblock.h"
#include "poise/filesystem.h"

namespace poise::testing {

inline std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

#define ASSERT_OK(expr)                                                      \
  do {                                                                       \
    const auto& poise_ok_ = (expr);                                               \
    ASSERT_TRUE(poise_ok_.has_value()) << poise_ok_.error().message;         \
  } while (0)

#define EXPECT_ERRNO(expr, expected_errno)                                             \
  do {                                                                       \
    const auto& poise_err_ = (expr);                                               \
    ASSERT_FALSE(poise_err_.has_value()) << "expected errno " << (expected_errno);     \
    EXPECT_EQ(poise_err_.error().code, (expected_errno)) << poise_err_.error().message; \
  } while (0)

// Reads n bytes at p inside a guarded scope (a poise mapping): the bytes, or
// the access's error.
inline Result<std::string> load(const std::byte* p, size_t n) {
  std::string out(n, '\0');
  char* dst = out.data();
  TRY(guarded([&] { std::memcpy(dst, p, n); }));
  return out;
}

// Stores s at p inside a guarded scope.
inline Result<void> store(std::byte* p, const std::string& s) {
  const char* src = s.data();
  size_t n = s.size();
  return guarded([&] { std::memcpy(p, src, n); });
}

// Reads a whole file by path (empty string with a test failure if it cannot).
inline std::string read_file(Filesystem& fs, const std::string& path) {
  auto st = fs.stat(path);
  EXPECT_TRUE(st.has_value()) << path;
  if (!st) return "";
  std::string out(st->size_bytes, '\0');
  auto n = fs.read(st->ino, 0, {reinterpret_cast<std::byte*>(out.data()), out.size()});
  EXPECT_TRUE(n.has_value()) << path;
  if (!n) return "";
  out.resize(*n);
  return out;
}

inline void write_file(Filesystem& fs, const std::string& path, const std::string& data, uint64_t offset = 0) {
  auto ino = fs.lookup(path);
  if (!ino) ino = fs.create(path);
  ASSERT_TRUE(ino.has_value()) << ino.error().message;
  auto n = fs.write(*ino, offset, as_bytes(data));
  ASSERT_TRUE(n.has_value()) << n.error().message;
  ASSERT_EQ(*n, data.size());
}

// The device offset of the block at `file_offset` of `path`, from the reverse map.
inline uint64_t device_offset_of(Filesystem& fs, const std::string& path, uint64_t file_offset) {
  InodeNumber ino = *fs.lookup(path);
  auto map = fs.fsmap(0, fs.info().size_bytes);
  for (const auto& r : *map) {
    if (r.owner == OwnerKind::File && r.ino == ino && file_offset >= r.file_offset_bytes &&
        file_offset < r.file_offset_bytes + r.length_bytes) {
      return r.device_offset_bytes + (file_offset - r.file_offset_bytes);
    }
  }
  ADD_FAILURE() << path << " has no block at " << file_offset;
  return 0;
}

inline Result<std::string> read_range(Filesystem& fs, const std::string& path, uint64_t offset, size_t length) {
  std::string out(length, '\0');
  auto n = fs.read(*fs.lookup(path), offset, {reinterpret_cast<std::byte*>(out.data()), out.size()});
  if (!n) return Unexpected<Error>(n.error());
  out.resize(*n);
  return out;
}

// The incompatible feature bits of the superblock at `block`, after which the
// bits in `clear` are cleared there (an image from before those features).
inline uint64_t incompat_bits(Device& device, uint64_t block, uint64_t clear) {
  alignas(64) std::byte raw[kBlockSize];
  EXPECT_TRUE(device.read(block * kBlockSize, raw, kBlockSize).has_value());
  auto sb = format::decode_superblock(raw, block, "superblock");
  EXPECT_TRUE(sb.has_value());
  if (!sb.has_value()) return 0;
  const uint64_t found = sb->feature_incompat;
  if (clear != 0) {
    sb->feature_incompat &= ~clear;
    format::encode_superblock(*sb, block, raw);
    device.write(block * kBlockSize, raw, kBlockSize);
  }
  return found;
}

class FsTest : public ::testing::Test {
 protected:
  explicit FsTest(uint64_t device_bytes = 64ull << 20, MemoryDevice::Backing backing = MemoryDevice::Backing::Private)
      : device_(std::make_unique<MemoryDevice>(device_bytes, backing)) {}
  void SetUp() override {
    FormatOptions f;
    f.clock = &clock_;
    ASSERT_OK(Filesystem::format(*device_, f));
    mount();
  }
  void mount() {
    MountOptions m;
    m.clock = &clock_;
    auto fs = Filesystem::mount(*device_, m);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    fs_ = std::move(*fs);
  }
  void remount() {
    ASSERT_OK(fs_->unmount());
    fs_.reset();
    mount();
  }
  // Drops the mount without unmounting: what a process crash leaves.
  void crash_and_mount() {
    release_without_unmount();
    mount();
  }
  void release_without_unmount() {
    fs_->shutdown();
    fs_.reset();
  }
  void expect_clean() {
    CheckReport r = fs_->check();
    for (const auto& p : r.problems) ADD_FAILURE() << "check: " << p;
  }

  FakeClock clock_;
  std::unique_ptr<MemoryDevice> device_;
  std::unique_ptr<Filesystem> fs_;
};

}  // namespace poise::testing
