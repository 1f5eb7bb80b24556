#include "fs/journal.h"

#include <algorithm>
#include <map>

#include "base/safe_copy.h"

#include "poise/types.h"

namespace poise {

Journal::Journal(Device& device, uint64_t start_block, uint64_t blocks, uint64_t copy_start_block)
    : device_(device),
      base_offset_(start_block * kBlockSize),
      capacity_(blocks * kBlockSize),
      copy_offset_(copy_start_block * kBlockSize) {
  POISE_ASSERT(base_offset_ + capacity_ <= device.size_bytes());
  POISE_ASSERT(copy_offset_ + capacity_ <= device.size_bytes());
}

void Journal::store(uint64_t offset, const void* src, uint64_t length) {
  for (uint64_t base : {base_offset_, copy_offset_}) {
    if (base == 0) continue;
    if (src != nullptr) device_.write(base + offset, src, length);
    else device_.fill(base + offset, 0, length);
  }
}

Result<void> Journal::sync_copies(uint64_t offset, uint64_t length) {
  TRY(device_.sync_range(base_offset_ + offset, length));
  if (copy_offset_ != 0) TRY(device_.sync_range(copy_offset_ + offset, length));
  return {};
}

Result<uint64_t> Journal::replay(uint64_t generation,
                                 const std::function<Result<void>(const format::DecodedTx&)>& apply,
                                 const ReplayOptions& options) {
  std::lock_guard lock(mutex_);
  generation_ = generation;
  next_lsn_ = 1;
  write_offset_ = 0;
  uint64_t replayed = 0;
  // Failed ranges per copy: those the device reported, and those that fail
  // under replay's own reads (machine checks), which are never read again.
  std::vector<std::pair<uint64_t, uint64_t>> failed_ranges[2] = {options.failed[0], options.failed[1]};
  std::vector<Copy> copies{{device_.data() + base_offset_, &failed_ranges[0]}};
  if (copy_offset_ != 0) copies.push_back({device_.data() + copy_offset_, &failed_ranges[1]});
  auto failed_under_read = [&](size_t c, const BadRange& f) {
    if (options.machine_checks != nullptr) options.machine_checks->push_back(f);
    const uint64_t base = c == 0 ? base_offset_ : copy_offset_;
    const uint64_t s = f.offset_bytes > base ? f.offset_bytes - base : 0;
    const uint64_t e = std::min(capacity_, f.offset_bytes + f.length_bytes - base);
    if (s < e) failed_ranges[c].emplace_back(s / kBlockSize * kBlockSize, std::min(capacity_, (e + kBlockSize - 1) / kBlockSize * kBlockSize));
  };
  // Runs a scan that loads from a copy in place, machine-check safe.
  auto scan = [&](size_t c, const std::function<void()>& fn) {
    if (auto fault = access_or_fault(copies[c].region, capacity_, fn)) {
      const uint64_t granule = 1ull << fault->addr_lsb;
      failed_under_read(c, BadRange{(fault->addr - reinterpret_cast<uintptr_t>(device_.data())) & ~(granule - 1), granule});
      return false;
    }
    return true;
  };
  // Bounded: every transaction advances by at least 64 bytes within the region.
  while (write_offset_ < capacity_) {
    Result<format::DecodedTx> tx = fail(ENODATA, "no copy");
    std::string why_bad;
    bool some_copy_readable = false;  // a copy whose failed memory the log does not reach here
    for (size_t c = 0; c < copies.size(); ++c) {
      const Copy& copy = copies[c];
      const uint64_t readable = copy.readable_from(write_offset_, capacity_);
      std::optional<BadRange> failed;
      auto got = read_tx(copy, readable, generation, next_lsn_, &failed);
      if (failed) {  // memory failed under the copy: as if it were known bad there
        failed_under_read(c, *failed);
        if (c == 0) why_bad = "lies on memory that failed under the read (machine check)";
        continue;
      }
      if (got.has_value()) {
        if (c > 0 && options.copy_notes != nullptr) {
          options.copy_notes->push_back("journal transaction " + std::to_string(next_lsn_) + " at byte " +
                                        std::to_string(write_offset_) + " was read from copy 2: copy 1 " +
                                        why_bad);
        }
        // The copies after this one must hold it too: a damaged one is told.
        for (size_t d = c + 1; d < copies.size() && options.copy_notes != nullptr; ++d) {
          const uint64_t other_readable = copies[d].readable_from(write_offset_, capacity_);
          std::optional<BadRange> other_failed;
          auto other = read_tx(copies[d], other_readable, generation, next_lsn_, &other_failed);
          if (other_failed) failed_under_read(d, *other_failed);
          if (!other.has_value()) {
            options.copy_notes->push_back("journal transaction " + std::to_string(next_lsn_) + " at byte " +
                                          std::to_string(write_offset_) + ": copy " + std::to_string(d + 1) +
                                          (other_readable < capacity_ && other_readable <= write_offset_
                                               ? " lies on failed memory"
                                               : " is bad (" + other.error().message + ")"));
          }
        }
        tx = std::move(got);
        break;
      }
      bool blocked = false;
      if (readable < capacity_ &&
          !scan(c, [&] { blocked = format::tx_may_reach(copy.region, readable, write_offset_, generation, next_lsn_); })) {
        blocked = true;  // its header failed under the read
      }
      some_copy_readable = some_copy_readable || !blocked;
      if (got.error().code != ENODATA) {
        if (!tx.has_value() && tx.error().code == ENODATA) tx = Unexpected<Error>(got.error());
      }
      if (c == 0) why_bad = blocked ? "lies on failed memory" : "is bad (" + got.error().message + ")";
    }
    if (!tx.has_value()) {
      if (tx.error().code != ENODATA) return Unexpected<Error>(std::move(tx).error());
      if (!some_copy_readable) {
        return fail(EIO, "journal memory failed in every copy where transaction " + std::to_string(next_lsn_) +
                             " (byte " + std::to_string(write_offset_) + " of the journal) may lie; it and the "
                             "ones after it cannot be read");
      }
      // The end of the log, unless a valid later transaction shows it was not.
      // Searched in every stretch of every copy that can be read.
      std::optional<format::TxLocation> later;
      for (size_t c = 0; c < copies.size(); ++c) {
        const Copy& copy = copies[c];
        // Bounded: each round moves past a readable stretch, or one that failed.
        for (uint64_t from = write_offset_; !later && from < capacity_;) {
          const uint64_t end = copy.readable_from(from, capacity_);
          if (end > from) {
            const uint64_t before = from == write_offset_ ? from : from - format::kTxAlign;  // the search starts past it
            if (scan(c, [&] { later = format::find_later_tx(copy.region, end, before, generation, next_lsn_ + 1); })) {
              from = end;
            }  // else: the failed range is known now, and the next round steps around it
          } else {
            from += format::kTxAlign;  // inside failed memory: step over it
          }
        }
      }
      if (later) {
        // A later transaction that says this one had reached the backing file:
        // no machine crash loses a page written back, so this is damage.
        std::optional<uint64_t> marked_by;
        if (options.gap_note != nullptr) {
          std::vector<format::DecodedTx> after;
          collect_lost(copies, generation, &after);
          for (const auto& t : after) {
            for (const auto& r : t.records) {
              const auto* mark = std::get_if<format::WrittenBackRecord>(&r);
              if (mark != nullptr && mark->lsn >= next_lsn_ && !marked_by) marked_by = t.lsn;
            }
          }
        }
        if (marked_by && !options.gap_even_if_written_back) {
          return fail(EUCLEAN, "journal transaction " + std::to_string(next_lsn_) + " at byte " +
                                   std::to_string(write_offset_) + " is damaged in every copy, and transaction " +
                                   std::to_string(*marked_by) + " says it had been written back to the image " +
                                   "(so no crash lost it): replaying only the ones before would lose acknowledged work");
        }
        if (options.gap_note != nullptr) {
          if (options.lost != nullptr) collect_lost(copies, generation, options.lost);
          *options.gap_note = "journal transactions from " + std::to_string(next_lsn_) + " on were not applied: " +
                              "transaction " + std::to_string(next_lsn_) + " is torn in every copy while " +
                              "transaction " + std::to_string(later->lsn) + " follows; " +
                              (marked_by ? "transaction " + std::to_string(*marked_by) +
                                               " says it had been written back to the image, so this is damage"
                                         : std::string("on an emulated device this is a machine crash before a sync "
                                                       "(the page cache wrote back out of order), or damage"));
          break;
        }
        return fail(EUCLEAN, "journal transaction " + std::to_string(next_lsn_) + " at byte " +
                                 std::to_string(write_offset_) + " is damaged in every copy but transaction " +
                                 std::to_string(later->lsn) + " at byte " + std::to_string(later->offset) +
                                 " follows it: replaying only the ones before would lose acknowledged work");
      }
      break;
    }
    TRY(apply(*tx));
    ends_in_mark_ = tx->records.size() == 1 && std::holds_alternative<format::WrittenBackRecord>(tx->records[0]);
    write_offset_ += tx->sealed_bytes;
    ++next_lsn_;
    ++replayed;
  }
  durable_lsn_ = next_lsn_ - 1;
  return replayed;
}

Result<format::DecodedTx> Journal::read_tx(const Copy& copy, uint64_t readable, uint64_t generation, uint64_t lsn,
                                           std::optional<BadRange>* failed) {
  const uint64_t at = write_offset_;
  if (at % format::kTxAlign != 0 || at + sizeof(format::TxHeader) > readable) {
    return fail(ENODATA, "end of journal region");
  }
  auto copy_out = [&](void* dst, uint64_t n) -> bool {
    auto fault = copy_or_fault(dst, copy.region + at, n);
    if (!fault) return true;
    const uint64_t granule = 1ull << fault->addr_lsb;
    const uint64_t dev = (fault->addr - reinterpret_cast<uintptr_t>(device_.data())) & ~(granule - 1);
    *failed = BadRange{dev, granule};
    return false;
  };
  format::TxHeader h;
  if (!copy_out(&h, sizeof h)) return fail(EIO, "journal memory failed under the read");
  const uint64_t sealed = h.magic.get() == format::kTxMagic ? format::tx_sealed_bytes(h) : 0;
  const uint64_t n = sealed != 0 ? std::min(sealed, readable - at) : sizeof h;
  scratch_.resize(n);
  if (!copy_out(scratch_.data(), n)) return fail(EIO, "journal memory failed under the read");
  return format::decode_tx_copy(scratch_.data(), n, at, generation, lsn);
}

uint64_t Journal::Copy::readable_from(uint64_t at, uint64_t capacity) const {
  uint64_t end = capacity;
  for (const auto& [s, e] : *failed) {
    if (s <= at && at < e) return at;
    if (s > at) end = std::min(end, s);
  }
  return end;
}

void Journal::collect_lost(const std::vector<Copy>& copies, uint64_t generation,
                           std::vector<format::DecodedTx>* lost) const {
  std::map<uint64_t, format::DecodedTx> found;
  for (const auto& copy : copies) {
    const uint64_t end = copy.readable_from(write_offset_, capacity_);
    uint64_t from = write_offset_;
    uint64_t lsn = next_lsn_ + 1;
    // Bounded: each step moves past the transaction found.
    while (auto later = format::find_later_tx(copy.region, end, from, generation, lsn)) {
      auto tx = format::decode_tx(copy.region, end, later->offset, generation, later->lsn);
      if (tx.has_value()) found.emplace(later->lsn, std::move(*tx));
      from = later->offset;
      lsn = later->lsn + 1;
    }
  }
  for (auto& [lsn, tx] : found) lost->push_back(std::move(tx));
}

Result<void> Journal::erase_tail() {
  std::lock_guard lock(mutex_);
  store(write_offset_, nullptr, capacity_ - write_offset_);
  return sync_copies(write_offset_, capacity_ - write_offset_);
}

void Journal::reset(uint64_t generation) {
  std::lock_guard lock(mutex_);
  generation_ = generation;
  next_lsn_ = 1;
  write_offset_ = 0;
  durable_lsn_ = 0;
  written_back_lsn_ = 0;
  ends_in_mark_ = false;
}

bool Journal::reserve(uint64_t bytes, Use use, bool* in_reserve) {
  POISE_ASSERT(bytes <= format::kTxBytesMax);
  bytes += kMarkBytes;  // room for a write-back mark
  std::lock_guard lock(mutex_);
  const uint64_t normal_limit = capacity_ - capacity_ / 8;
  const uint64_t limit = use == Use::Freeing ? capacity_ : normal_limit;
  if (write_offset_ + reserved_ + bytes > limit) return false;
  if (in_reserve != nullptr) *in_reserve = write_offset_ + reserved_ + bytes > normal_limit;
  reserved_ += bytes;
  return true;
}

void Journal::unreserve(uint64_t bytes) {
  std::lock_guard lock(mutex_);
  POISE_ASSERT(reserved_ >= bytes + kMarkBytes);
  reserved_ -= bytes + kMarkBytes;
}

uint64_t Journal::commit(format::TxEncoder& tx, uint64_t reserved_bytes, WriteBack write_back) {
  POISE_ASSERT(tx.sealed_bytes() <= reserved_bytes);
  std::lock_guard lock(mutex_);
  POISE_ASSERT(reserved_ >= reserved_bytes + kMarkBytes);
  // Every transaction after a write-back says how far it went (so that one lost
  // mark does not hide it), when the size limit allows (the reservation keeps
  // room for it).
  if (marks_ && written_back_lsn_ > 0 &&
      tx.sealed_bytes() + kMarkBytes <= std::min<uint64_t>(reserved_bytes + kMarkBytes, format::kTxBytesMax)) {
    tx.add(format::WrittenBackRecord{written_back_lsn_});
  }
  POISE_ASSERT(write_offset_ + tx.sealed_bytes() <= capacity_);
  ends_in_mark_ = false;
  uint64_t lsn = next_lsn_++;
  tx.seal(generation_, lsn, write_offset_, &image_);
  store(write_offset_, image_.data(), image_.size());
  write_offset_ += image_.size();
  reserved_ -= reserved_bytes + kMarkBytes;
  device_.drain();
  if (write_back == WriteBack::ToMedia) {
    // A failed write-back is the host's I/O error, reported by the next sync/fsync
    // as well; the transaction itself is in the page cache and replays after a
    // process crash.
    if (sync_copies(0, write_offset_).has_value()) {
      written_back_lsn_ = lsn;
    } else {
      // The host reports a write-back error once: kept, so that no later
      // write-back claims (or an fsync reports) past it.
      write_back_failed_ = true;
    }
  }
  durable_lsn_ = lsn;
  return lsn;
}

void Journal::enable_written_back_marks() {
  std::lock_guard lock(mutex_);
  marks_ = true;
}

Result<void> Journal::write_back() {
  uint64_t bytes = 0, through = 0, generation = 0;
  {
    std::lock_guard lock(mutex_);
    if (write_back_failed_) return fail(EIO, "an earlier write-back of the journal to the image failed");
    bytes = write_offset_;
    through = next_lsn_ - 1;
    generation = generation_;
  }
  // Without the lock: commits go on meanwhile (what they add is not claimed).
  // Both copies: either one may be the one replay can read after a crash.
  if (auto synced = sync_copies(0, bytes); !synced.has_value()) {
    std::lock_guard lock(mutex_);
    write_back_failed_ = true;
    return synced;
  }
  written_back_through(generation, through);
  return {};
}

Result<void> Journal::seal_written_back() {
  std::lock_guard lock(mutex_);
  if (!marks_ || write_back_failed_ || ends_in_mark_ || written_back_lsn_ == 0 ||
      written_back_lsn_ != next_lsn_ - 1) {
    return {};
  }
  format::TxEncoder tx;
  tx.add(format::WrittenBackRecord{written_back_lsn_});
  if (write_offset_ + reserved_ + tx.sealed_bytes() > capacity_) return {};  // best effort: no room
  const uint64_t at = write_offset_;
  tx.seal(generation_, next_lsn_++, at, &image_);
  store(at, image_.data(), image_.size());
  write_offset_ += image_.size();
  device_.drain();
  ends_in_mark_ = true;
  if (auto synced = sync_copies(at, image_.size()); !synced.has_value()) {
    write_back_failed_ = true;
    return synced;
  }
  written_back_lsn_ = next_lsn_ - 1;
  return {};
}

Result<void> Journal::write_back_error() const {
  std::lock_guard lock(mutex_);
  if (write_back_failed_) return fail(EIO, "an earlier write-back of the journal to the image failed");
  return {};
}

void Journal::written_back_through(uint64_t generation, uint64_t lsn) {
  std::lock_guard lock(mutex_);
  // A checkpoint in between started a new generation: that lsn is not of it.
  if (generation == generation_ && !write_back_failed_) written_back_lsn_ = std::max(written_back_lsn_, lsn);
}

uint64_t Journal::make_durable() {
  std::lock_guard lock(mutex_);
  device_.drain();
  durable_lsn_ = next_lsn_ - 1;
  return durable_lsn_;
}

uint64_t Journal::generation() const {
  std::lock_guard lock(mutex_);
  return generation_;
}

uint64_t Journal::committed_lsn() const {
  std::lock_guard lock(mutex_);
  return next_lsn_ - 1;
}

uint64_t Journal::durable_lsn() const {
  std::lock_guard lock(mutex_);
  return durable_lsn_;
}

Result<std::vector<std::byte>> Journal::copy_log() const {
  std::lock_guard lock(mutex_);
  std::vector<std::byte> log(write_offset_);
  for (uint64_t at = 0; at < write_offset_; at += kBlockSize) {
    const uint64_t n = std::min<uint64_t>(kBlockSize, write_offset_ - at);
    auto got = device_.read(base_offset_ + at, log.data() + at, n);
    if (!got.has_value() && copy_offset_ != 0) got = device_.read(copy_offset_ + at, log.data() + at, n);
    if (!got.has_value()) return fail(EIO, "journal bytes " + std::to_string(at) + " read in no copy: " + got.error().message);
  }
  return log;
}

uint64_t Journal::used_bytes() const {
  std::lock_guard lock(mutex_);
  return write_offset_;
}

}  // namespace poise
