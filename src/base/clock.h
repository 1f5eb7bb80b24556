// Clock: the seam for time. The filesystem stamps inodes through a Clock so that
// tests can run on a fake one and replay exactly.
// Thread-safety: implementations are safe to call from any thread.
#pragma once

#include <atomic>
#include <cstdint>

namespace poise {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t now_ns() = 0;  // nanoseconds since the Unix epoch
};

// The system's real-time clock.
Clock& real_clock();

// A clock that moves only when told; each reading advances it by one tick so that
// successive stamps stay distinct and ordered.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t start_ns = 1'700'000'000'000'000'000) : now_(start_ns) {}
  int64_t now_ns() override { return now_.fetch_add(1, std::memory_order_relaxed); }
  void advance(int64_t ns) { now_.fetch_add(ns, std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace poise
