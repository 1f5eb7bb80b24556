// PoisonList: the byte ranges of a device that are poisoned (unreadable), kept
// merged and in order. An emulated device keeps one as its hardware error list
// and persists it beside the image, the moral equivalent of a DIMM's badblocks.
//
// Thread-safety: all members are safe to call concurrently; the common case (no
// poison at all) costs one atomic load per check.
#pragma once

#include <absl/container/btree_map.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "poise/device.h"

namespace poise {

class PoisonList {
 public:
  void add(uint64_t offset, uint64_t length);
  void remove(uint64_t offset, uint64_t length);
  // The first poisoned range overlapping [offset, +length), clipped to it.
  std::optional<BadRange> first_overlap(uint64_t offset, uint64_t length) const;
  std::vector<BadRange> ranges() const;

  // The text form: one "offset length" line per range, '#' comments.
  std::string to_text() const;
  static Result<PoisonList> from_text(const std::string& text, uint64_t device_bytes);

  PoisonList() = default;
  PoisonList(PoisonList&& o) noexcept;
  PoisonList& operator=(PoisonList&& o) noexcept;

 private:
  mutable std::mutex mutex_;
  absl::btree_map<uint64_t, uint64_t> ranges_;  // start -> end (exclusive)
  std::atomic<bool> any_{false};
};

}  // namespace poise
