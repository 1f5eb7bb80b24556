#include "fuse/served_pages.h"

#include <algorithm>
#include <limits>

#include "base/crc32c.h"

namespace poise::fusemount {

void ServedPages::record(uint64_t ino, uint64_t offset, std::span<const std::byte> bytes, bool to_end) {
  if (bytes.empty()) return;
  const uint64_t end = offset + bytes.size();
  std::lock_guard lock(mutex_);
  auto& pages = files_[ino];
  for (uint64_t page = offset / kPageBytes; page * kPageBytes < end; ++page) {
    const uint64_t from = page * kPageBytes;
    const bool whole = from >= offset && (from + kPageBytes <= end || to_end);
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
  auto file = files_.find(ino);
  if (file == files_.end()) return;
  const uint64_t first = offset / kPageBytes;
  const uint64_t end = length == 0 || length > std::numeric_limits<uint64_t>::max() - offset - kPageBytes
                           ? std::numeric_limits<uint64_t>::max()
                           : (offset + length + kPageBytes - 1) / kPageBytes;
  std::erase_if(file->second, [&](const auto& entry) {
    const bool gone = entry.first >= first && entry.first < end;
    pages_ -= gone;
    return gone;
  });
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
