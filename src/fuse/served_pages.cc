#include "fuse/served_pages.h"

#include <algorithm>
#include <iterator>
#include <limits>
#include <utility>
#include <vector>

#include "base/crc32c.h"

namespace poise::fusemount {

uint64_t ServedPages::epoch() const {
  std::lock_guard lock(mutex_);
  return epoch_;
}

template <class Fn>
void ServedPages::for_each_page(uint64_t offset, uint64_t length, bool to_end, Fn fn) {
  const uint64_t end = offset + length;
  for (uint64_t page = offset / kPageBytes; page * kPageBytes < end; ++page) {
    const uint64_t from = page * kPageBytes;
    const bool whole = from >= offset && (from + kPageBytes <= end || to_end);
    fn(page, from, whole ? static_cast<size_t>(std::min<uint64_t>(kPageBytes, end - from)) : size_t{0});
  }
}

void ServedPages::record(uint64_t ino, uint64_t offset, std::span<const std::byte> bytes, bool to_end,
                         uint64_t since) {
  if (uint64_t ticket = reserve(ino, offset, bytes.size(), to_end, since); ticket != 0) {
    fill(ino, offset, bytes, to_end, ticket);
  }
}

uint64_t ServedPages::reserve(uint64_t ino, uint64_t offset, uint64_t length, bool to_end, uint64_t since) {
  if (length == 0) return 0;
  std::lock_guard lock(mutex_);
  const bool current = epoch_ == since;
  const uint64_t ticket = ++tickets_;
  bool marked = false;
  auto& pages = files_[ino];
  for_each_page(offset, length, to_end, [&](uint64_t page, uint64_t, size_t whole_length) {
    auto it = pages.find(page);
    if (!current || whole_length == 0) {  // the kernel's page mixes old and new bytes, or a change came in between
      if (it != pages.end()) {
        pages.erase(it);
        --pages_;
      }
      return;
    }
    if (it != pages.end()) {
      it->second = Sum{0, 0, ticket};
    } else if (pages_ < max_pages_) {
      pages.emplace(page, Sum{0, 0, ticket});
      ++pages_;
    } else {
      return;
    }
    marked = true;
  });
  if (pages.empty()) files_.erase(ino);
  return marked ? ticket : 0;
}

void ServedPages::fill(uint64_t ino, uint64_t offset, std::span<const std::byte> bytes, bool to_end,
                       uint64_t ticket) {
  // The checksums first, outside the lock.
  std::vector<std::pair<uint64_t, Sum>> sums;
  for_each_page(offset, bytes.size(), to_end, [&](uint64_t page, uint64_t from, size_t length) {
    if (length == 0) return;
    sums.emplace_back(page, Sum{crc32c(bytes.data() + (from - offset), length), static_cast<uint32_t>(length), 0});
  });
  std::lock_guard lock(mutex_);
  auto file = files_.find(ino);
  if (file == files_.end()) return;
  for (const auto& [page, sum] : sums) {
    auto it = file->second.find(page);
    if (it != file->second.end() && it->second.pending == ticket) it->second = sum;
  }
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
  return it != file->second.end() && it->second.pending == 0 && it->second.length == cached.size() &&
         it->second.crc == crc32c(cached.data(), cached.size());
}

size_t ServedPages::pages() const {
  std::lock_guard lock(mutex_);
  return pages_;
}

}  // namespace poise::fusemount
