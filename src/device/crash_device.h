// CrashDevice: an in-memory device that knows what a power cut would keep.
//
// It holds two images: the live one that loads see, and the durable one. A
// flush() (or the write-back inside write()/fill()) snapshots the touched cache
// lines as they are at that moment; drain() makes the snapshots durable. Stores
// never flushed are lost at a crash. Each drain() is a numbered flush point.
//
// Arming it at flush point K captures, at the K-th drain, the durable image plus a
// seeded random subset of the lines written back but not yet fenced, some of them
// torn into their 8-byte words (the unit persistent memory guarantees): exactly
// the states real hardware could leave behind.
//
// Model::PageCache plays an emulated device on a regular file instead: nothing
// is durable until sync_range()/sync() writes the pages back (drain() orders
// nothing), and a crash keeps a random subset of the dirty 4 KiB pages, as the
// kernel's write-back in any order would. Every drain and sync is a flush point. Tests run a workload once to count the
// flush points, then once per point, mounting each captured image
// (LevelDB's fault_injection_test is the model).
//
// Thread-safety: all members are safe to call concurrently.
#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "device/memory_device.h"
#include "device/poison_list.h"
#include "poise/device.h"

namespace poise {

class CrashDevice final : public Device {
 public:
  enum class Model : uint8_t { CacheLines, PageCache };
  // `shareable`: the live image is a memfd that files can be mapped from
  // (map_fd(), as MemoryDevice's Shared backing), for mappings in other
  // processes. Their stores reach the durable image only through flush(), as
  // on persistent memory (CacheLines; the PageCache model sees only write()).
  explicit CrashDevice(uint64_t size_bytes, Model model = Model::CacheLines, bool shareable = false);
  ~CrashDevice() override;

  // Capture the crash state at the `flush_point`-th drain (1-based).
  void arm(uint64_t flush_point, uint64_t seed);
  uint64_t flush_points() const;
  bool crashed() const;
  // The state captured when the armed flush point was reached.
  // REQUIRES: crashed().
  std::unique_ptr<MemoryDevice> crash_image() const;
  // What would survive a crash right now, ignoring unfenced write-backs.
  std::unique_ptr<MemoryDevice> durable_image() const;

  uint64_t size_bytes() const override { return size_; }
  PersistenceDomain domain() const override {
    return model_ == Model::PageCache ? PersistenceDomain::PageCache : PersistenceDomain::MemoryController;
  }
  uint64_t alignment_bytes() const override { return 4096; }
  std::string describe() const override { return "crash-simulating memory device"; }
  int map_fd() const override { return fd_; }
  const std::byte* data() const override { return live_; }
  std::byte* data() override { return live_; }
  void write(uint64_t offset, const void* src, size_t length) override;
  void fill(uint64_t offset, int byte, size_t length) override;
  void flush(uint64_t offset, size_t length) override;
  void drain() override;
  Result<void> sync() override;
  Result<void> sync_range(uint64_t offset, uint64_t length) override;

 protected:
  PoisonList* emulated_poison() const override { return &poison_; }

 private:
  mutable PoisonList poison_;
  static constexpr uint64_t kLine = 64;
  struct PendingLine {
    uint64_t offset;
    std::byte bytes[kLine];
  };

  // At a flush point: capture the crash state if armed. REQUIRES: mutex_ held.
  void flush_point_locked();
  // Page-cache model: pages of [offset, +length) become durable. REQUIRES: mutex_ held.
  void write_back_locked(uint64_t offset, uint64_t length);

  Model model_;
  uint64_t size_;
  int fd_ = -1;  // the memfd of a shareable live image
  std::byte* live_;
  std::byte* durable_;
  mutable std::mutex mutex_;
  std::vector<PendingLine> pending_;
  std::set<uint64_t> dirty_pages_;  // page-cache model: pages stored to since their write-back
  uint64_t drains_ = 0;
  uint64_t crash_at_ = 0;  // 0: not armed
  uint64_t seed_ = 0;
  std::byte* captured_ = nullptr;
};

}  // namespace poise
