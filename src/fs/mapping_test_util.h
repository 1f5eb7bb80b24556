// Helpers for the mapping tests: a filesystem on shared memory that maps
// files (MappingTest), and an inbox of what each mapping's owner was told.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fs/test_util.h"

namespace poise::testing {

inline constexpr uint64_t kPage = 4096;

inline std::string pattern(char c, size_t n = kPage) { return std::string(n, c); }

// Everything an owner was told, in order.
struct Inbox {
  std::mutex mu;
  std::vector<MappingEvent> events;
  std::shared_ptr<MapOwner> owner(const std::string& name) {
    return std::make_shared<MapOwner>(MapOwner{name, [this](const MappingEvent& e) {
                                                 std::lock_guard lock(mu);
                                                 events.push_back(e);
                                               }});
  }
  std::vector<MappingEvent> of(const std::string& name) {
    std::lock_guard lock(mu);
    std::vector<MappingEvent> out;
    for (const auto& e : events) {
      if (e.owner == name) out.push_back(e);
    }
    return out;
  }
};

class MappingTest : public FsTest {
 protected:
  MappingTest() : FsTest(64ull << 20, MemoryDevice::Backing::Shared) {}
  InodeNumber ino(const std::string& path) { return *fs_->lookup(path); }
  Mapping map(const std::string& path, uint64_t offset, uint64_t length, MapAccess access,
              std::shared_ptr<MapOwner> owner = nullptr) {
    auto m = fs_->map(ino(path), offset, length, access, std::move(owner));
    EXPECT_TRUE(m.has_value()) << m.error().message;
    return m.has_value() ? std::move(*m) : Mapping();
  }
};

}  // namespace poise::testing
