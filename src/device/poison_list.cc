#include "device/poison_list.h"

#include <sstream>

namespace poise {

std::optional<BadRange> PoisonList::first_overlap(uint64_t offset, uint64_t length) const {
  auto r = set_.first_overlap(Range{offset, length});
  if (!r) return std::nullopt;
  return BadRange{r->start, r->length};
}

std::vector<BadRange> PoisonList::ranges() const {
  std::vector<BadRange> out;
  for (const Range& r : set_.ranges()) out.push_back(BadRange{r.start, r.length});
  return out;
}

std::string PoisonList::to_text() const {
  std::string out = "# poise emulated poison list: byte offset and length of each poisoned range\n";
  for (const BadRange& r : ranges()) out += std::to_string(r.offset_bytes) + " " + std::to_string(r.length_bytes) + "\n";
  return out;
}

Result<PoisonList> PoisonList::from_text(const std::string& text, uint64_t device_bytes) {
  PoisonList list;
  std::istringstream in(text);
  std::string line;
  constexpr int kLinesMax = 1 << 20;
  for (int n = 1; std::getline(in, line); ++n) {
    if (n > kLinesMax) return fail(E2BIG, "poison list has more than 2^20 lines");
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    uint64_t offset = 0, length = 0;
    std::string rest;
    if (!(fields >> offset >> length) || (fields >> rest) || length == 0 || offset > device_bytes ||
        length > device_bytes - offset) {
      return fail(EINVAL, "poison list line " + std::to_string(n) + " is not 'offset length' inside the device");
    }
    list.add(offset, length);
  }
  return list;
}

}  // namespace poise
