#include "base/clock.h"

#include <ctime>

namespace poise {
namespace {

class RealClock final : public Clock {
 public:
  int64_t now_ns() override {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
  }
};

}  // namespace

Clock& real_clock() {
  static RealClock clock;
  return clock;
}

}  // namespace poise
