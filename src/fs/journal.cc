#include "fs/journal.h"

#include <algorithm>

#include "poise/types.h"

namespace poise {

Journal::Journal(Device& device, uint64_t start_block, uint64_t blocks)
    : device_(device), base_offset_(start_block * kBlockSize), capacity_(blocks * kBlockSize) {
  POISE_ASSERT(base_offset_ + capacity_ <= device.size_bytes());
}

Result<uint64_t> Journal::replay(uint64_t generation,
                                 const std::function<Result<void>(const format::DecodedTx&)>& apply,
                                 uint64_t readable_bytes, std::string* gap_note) {
  std::lock_guard lock(mutex_);
  generation_ = generation;
  next_lsn_ = 1;
  write_offset_ = 0;
  uint64_t replayed = 0;
  const uint64_t readable = std::min(readable_bytes, capacity_);
  const std::byte* region = device_.data() + base_offset_;
  // Bounded: every transaction advances by at least 64 bytes within the region.
  while (write_offset_ < capacity_) {
    auto tx = format::decode_tx(region, readable, write_offset_, generation, next_lsn_);
    if (!tx.has_value()) {
      if (tx.error().code != ENODATA) return Unexpected<Error>(std::move(tx).error());
      if (readable < capacity_ && format::tx_may_reach(region, readable, write_offset_, generation, next_lsn_)) {
        return fail(EIO, "journal memory failed at byte " + std::to_string(readable) + " of the journal; " +
                             "transactions from " + std::to_string(next_lsn_) + " on cannot be read");
      }
      // The end of the log, unless a valid later transaction shows it was not.
      if (auto later = format::find_later_tx(region, readable, write_offset_, generation, next_lsn_ + 1)) {
        if (gap_note != nullptr) {
          *gap_note = "journal transactions from " + std::to_string(next_lsn_) + " on were not applied: " +
                      "transaction " + std::to_string(next_lsn_) + " is torn (" + tx.error().message +
                      ") while transaction " + std::to_string(later->lsn) + " follows; on an emulated device " +
                      "this is a machine crash before a sync (the page cache wrote back out of order), or damage";
          break;
        }
        return fail(EUCLEAN, "journal transaction " + std::to_string(next_lsn_) + " at byte " +
                                 std::to_string(write_offset_) + " is damaged (" + tx.error().message +
                                 ") but transaction " + std::to_string(later->lsn) + " at byte " +
                                 std::to_string(later->offset) + " follows it: replaying only the ones "
                                 "before would lose acknowledged work");
      }
      break;
    }
    TRY(apply(*tx));
    write_offset_ += tx->sealed_bytes;
    ++next_lsn_;
    ++replayed;
  }
  durable_lsn_ = next_lsn_ - 1;
  return replayed;
}

Result<void> Journal::erase_tail() {
  std::lock_guard lock(mutex_);
  device_.fill(base_offset_ + write_offset_, 0, capacity_ - write_offset_);
  return device_.sync_range(base_offset_ + write_offset_, capacity_ - write_offset_);
}

void Journal::reset(uint64_t generation) {
  std::lock_guard lock(mutex_);
  generation_ = generation;
  next_lsn_ = 1;
  write_offset_ = 0;
  durable_lsn_ = 0;
}

bool Journal::reserve(uint64_t bytes, Use use) {
  POISE_ASSERT(bytes <= format::kTxBytesMax);
  std::lock_guard lock(mutex_);
  const uint64_t limit = use == Use::Freeing ? capacity_ : capacity_ - capacity_ / 8;
  if (write_offset_ + reserved_ + bytes > limit) return false;
  reserved_ += bytes;
  return true;
}

void Journal::unreserve(uint64_t bytes) {
  std::lock_guard lock(mutex_);
  POISE_ASSERT(reserved_ >= bytes);
  reserved_ -= bytes;
}

uint64_t Journal::commit(const format::TxEncoder& tx, uint64_t reserved_bytes, WriteBack write_back) {
  POISE_ASSERT(tx.sealed_bytes() <= reserved_bytes);
  std::lock_guard lock(mutex_);
  POISE_ASSERT(reserved_ >= reserved_bytes);
  POISE_ASSERT(write_offset_ + tx.sealed_bytes() <= capacity_);
  uint64_t lsn = next_lsn_++;
  tx.seal(generation_, lsn, write_offset_, &image_);
  device_.write(base_offset_ + write_offset_, image_.data(), image_.size());
  write_offset_ += image_.size();
  reserved_ -= reserved_bytes;
  device_.drain();
  if (write_back == WriteBack::ToMedia) {
    // A failed write-back is the host's I/O error, reported by the next sync/fsync
    // as well; the transaction itself is in the page cache and replays after a
    // process crash.
    (void)device_.sync_range(base_offset_, write_offset_);
  }
  durable_lsn_ = lsn;
  return lsn;
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

uint64_t Journal::used_bytes() const {
  std::lock_guard lock(mutex_);
  return write_offset_;
}

}  // namespace poise
