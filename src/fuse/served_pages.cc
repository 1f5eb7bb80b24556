#include "fuse/served_pages.h"

#include <algorithm>
#include <iterator>
#include <limits>

#include "base/crc32c.h"

namespace poise::fusemount {

uint64_t ServedPages::epoch() const {
  std::lock_guard lock(mutex_);
  return epoch_;
}

void ServedPages::record(uint64_t ino, uint64_t offset, std::span<const std::byte> bytes, bool to_end,
                         uint64_t since) {
  if (bytes.empty()) return;
  const uint64_t end = offset + bytes.size();
  std::lock_guard lock(mutex_);
  const bool current = epoch_ == since;
  auto& pages = files_[ino];
  for (uint64_t page = offset / kPageBytes; page * kPageBytes < end; ++page) {
    const uint64_t from = page * kPageBytes;
    const bool whole = current && from >= offset && (from + kPageBytes <= end || to_end);
    auto it = pages.find(page);
    if (!whole) {
      if (it != pages.end()) {
        pages.erase(it);
        --pages_;
      }
      continue;
    }
    const size_t length = static_cast<size_t>(std::min<uint64_t>(kPageBytes, end - from));
    const Sum sum{crc32c(bytes.data() + (from - offset), length), static_cast<uint32_t>(length)};
    if (it != pages.end()) {
      it->second = sum;
    } else if (pages_ < max_pages_) {
      pages.emplace(page, sum);
      ++pages_;
    }
  }
  if (pages.empty()) files_.erase(ino);
}

void ServedPages::drop(uint64_t ino, uint64_t offset, uint64_t length) {
  std::lock_guard lock(mutex_);
  ++epoch_;
  auto file = files_.find(ino);
  if (file == files_.end()) return;
  const uint64_t first = offset / kPageBytes;
  // Past the last page a 64-bit offset can name (or length 0): to the end.
  const uint64_t last_byte = length == 0 || length - 1 > std::numeric_limits<uint64_t>::max() - offset
                                 ? std::numeric_limits<uint64_t>::max()
                                 : offset + length - 1;
  const uint64_t end = last_byte / kPageBytes + 1;
  auto& pages = file->second;
  const auto from = pages.lower_bound(first);
  const auto to = pages.lower_bound(end);
  pages_ -= static_cast<size_t>(std::distance(from, to));
  pages.erase(from, to);
  if (file->second.empty()) files_.erase(file);
}

void ServedPages::forget(uint64_t ino) {
  std::lock_guard lock(mutex_);
  auto file = files_.find(ino);
  if (file == files_.end()) return;
  pages_ -= file->second.size();
  files_.erase(file);
}

bool ServedPages::vouches(uint64_t ino, uint64_t offset, std::span<const std::byte> cached) const {
  if (offset % kPageBytes != 0 || cached.empty() || cached.size() > kPageBytes) return false;
  std::lock_guard lock(mutex_);
  auto file = files_.find(ino);
  if (file == files_.end()) return false;
  auto it = file->second.find(offset / kPageBytes);
  return it != file->second.end() && it->second.length == cached.size() &&
         it->second.crc == crc32c(cached.data(), cached.size());
}

size_t ServedPages::pages() const {
  std::lock_guard lock(mutex_);
  return pages_;
}

}  // namespace poise::fusemount
