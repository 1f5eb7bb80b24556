// What the FUSE mount handed the kernel, page by page: a checksum (crc32c) and
// length of the bytes of each file page the kernel got whole from this mount
// (a read's reply, a whole-page write). When memory fails under a page, the
// kernel's cached copy is restored to the file only if this record vouches
// for it: the same length, the same checksum. A page the kernel is still
// reading in, or that a program dirtied through a mapping, or that changed by
// another path since (its record dropped), is never taken.
//
// Bounded: at most `max_pages` records; past that new pages are not recorded
// (they then cannot be restored). Thread-safety: every method locks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <map>
#include <unordered_map>

namespace poise::fusemount {

class ServedPages {
 public:
  static constexpr uint64_t kPageBytes = 4096;
  explicit ServedPages(size_t max_pages = size_t{1} << 20) : max_pages_(max_pages) {}

  // Bumped by every drop(): take it before reading the bytes to record, and
  // record() keeps nothing if a change came in between (its drop would have
  // run before the record that it should have removed).
  uint64_t epoch() const;
  // The kernel got `bytes` of file `ino` at `offset`, read or written when the
  // epoch was `since`: each page they cover whole is recorded, and so is the
  // last one if `to_end` (the bytes reach the end of file); a page they cover
  // in part loses its record (the kernel's page mixes old and new bytes), and
  // so does every page they cover if the epoch moved since.
  void record(uint64_t ino, uint64_t offset, std::span<const std::byte> bytes, bool to_end, uint64_t since);
  // record() in two steps, for a write whose checksums are taken after its
  // reply (off the writer's wait). reserve() applies record()'s rules to the
  // `length` bytes at `offset` but only marks the whole pages pending (they
  // vouch for nothing yet) and returns the mark's ticket (0: none marked).
  // fill() then checksums `bytes` and stores each page's sum where that mark
  // still stands: a later write's reserve, a drop or a forget in between
  // replaced or removed it, and then that page stays as they left it.
  uint64_t reserve(uint64_t ino, uint64_t offset, uint64_t length, bool to_end, uint64_t since);
  void fill(uint64_t ino, uint64_t offset, std::span<const std::byte> bytes, bool to_end, uint64_t ticket);
  // Pages [offset, +length) (length 0: to the end of file) may hold other bytes now.
  void drop(uint64_t ino, uint64_t offset, uint64_t length);
  // The kernel forgot the inode: it caches none of its pages any more.
  void forget(uint64_t ino);
  // True if `cached` (a page's bytes from the page-aligned `offset`: 4096, or
  // fewer at the end of file) is what was served for that page.
  bool vouches(uint64_t ino, uint64_t offset, std::span<const std::byte> cached) const;
  size_t pages() const;

 private:
  struct Sum {
    uint32_t crc = 0;
    uint32_t length = 0;
    uint64_t pending = 0;  // the ticket of a reserve() whose fill() has not come yet
  };
  // Calls fn(page, from, length) for each page that `length` bytes at `offset`
  // cover whole (the last one also in part if `to_end`), and
  // fn(page, from, 0) for each they cover in part.
  template <class Fn>
  static void for_each_page(uint64_t offset, uint64_t length, bool to_end, Fn fn);
  const size_t max_pages_;
  mutable std::mutex mutex_;
  // inode -> page -> sum; pages in order, so a drop costs what it removes.
  std::unordered_map<uint64_t, std::map<uint64_t, Sum>> files_;
  size_t pages_ = 0;
  uint64_t epoch_ = 0;
  uint64_t tickets_ = 0;
};

}  // namespace poise::fusemount
