// ReadSection: a read-side critical section around an access to device memory,
// built on liburcu's "bulletproof" flavour (no per-thread registration, cheap
// enough for every read). Removal marks the device Dying, then waits for every
// section that began before with wait_for_readers() — a grace period — before it
// declares the device Dead (invariant I7).
//
// TSan cannot see liburcu's ordering (the library is not instrumented), so the
// section end and the grace period are annotated as a release/acquire pair.
#pragma once

namespace poise {

class ReadSection {
 public:
  ReadSection();
  ~ReadSection();
  ReadSection(const ReadSection&) = delete;
  ReadSection& operator=(const ReadSection&) = delete;

  // Returns once every section that had begun when it was called has ended.
  static void wait_for_readers();
};

}  // namespace poise
