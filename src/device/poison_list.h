// PoisonList: the byte ranges of an emulated device that are poisoned
// (unreadable), with the text form kept beside the image (IMAGE.poison), the
// moral equivalent of a DIMM's badblocks list.
// Thread-safety: as RangeSet.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "base/range_set.h"
#include "poise/device.h"

namespace poise {

class PoisonList {
 public:
  void add(uint64_t offset, uint64_t length) { set_.add(Range{offset, length}); }
  void remove(uint64_t offset, uint64_t length) { set_.remove(Range{offset, length}); }
  // The first poisoned range overlapping [offset, +length), clipped to it.
  std::optional<BadRange> first_overlap(uint64_t offset, uint64_t length) const;
  std::vector<BadRange> ranges() const;

  // One "offset length" line per range; '#' starts a comment.
  std::string to_text() const;
  static Result<PoisonList> from_text(const std::string& text, uint64_t device_bytes);

 private:
  RangeSet set_;
};

}  // namespace poise
