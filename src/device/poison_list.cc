#include "device/poison_list.h"

#include <sstream>

namespace poise {

PoisonList::PoisonList(PoisonList&& o) noexcept {
  std::lock_guard lock(o.mutex_);
  ranges_ = std::move(o.ranges_);
  any_ = !ranges_.empty();
}

PoisonList& PoisonList::operator=(PoisonList&& o) noexcept {
  if (this == &o) return *this;
  std::scoped_lock lock(mutex_, o.mutex_);
  ranges_ = std::move(o.ranges_);
  any_ = !ranges_.empty();
  return *this;
}

void PoisonList::add(uint64_t offset, uint64_t length) {
  if (length == 0) return;
  std::lock_guard lock(mutex_);
  uint64_t start = offset;
  uint64_t end = offset + length;
  // Absorb every range that touches [start, end); seek again after each erase.
  for (;;) {
    auto it = ranges_.upper_bound(end);
    if (it == ranges_.begin()) break;
    --it;
    if (it->second < start) break;
    start = std::min(start, it->first);
    end = std::max(end, it->second);
    ranges_.erase(it);
  }
  ranges_.emplace(start, end);
  any_ = true;
}

void PoisonList::remove(uint64_t offset, uint64_t length) {
  if (length == 0) return;
  std::lock_guard lock(mutex_);
  uint64_t start = offset;
  uint64_t end = offset + length;
  for (;;) {
    auto it = ranges_.upper_bound(end - 1);
    if (it == ranges_.begin()) break;
    --it;
    if (it->second <= start) break;
    uint64_t r_start = it->first;
    uint64_t r_end = it->second;
    ranges_.erase(it);
    if (r_end > end) ranges_.emplace(end, r_end);
    if (r_start < start) {
      ranges_.emplace(r_start, start);
      break;
    }
  }
  any_ = !ranges_.empty();
}

std::optional<BadRange> PoisonList::first_overlap(uint64_t offset, uint64_t length) const {
  if (!any_.load(std::memory_order_acquire) || length == 0) return std::nullopt;
  std::lock_guard lock(mutex_);
  uint64_t end = offset + length;
  auto it = ranges_.upper_bound(offset);
  if (it != ranges_.begin() && std::prev(it)->second > offset) --it;
  if (it == ranges_.end() || it->first >= end) return std::nullopt;
  uint64_t s = std::max(offset, it->first);
  uint64_t e = std::min(end, it->second);
  return BadRange{s, e - s};
}

std::vector<BadRange> PoisonList::ranges() const {
  std::lock_guard lock(mutex_);
  std::vector<BadRange> out;
  for (const auto& [start, end] : ranges_) out.push_back(BadRange{start, end - start});
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
