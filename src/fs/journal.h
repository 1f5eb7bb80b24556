// Journal: appends sealed transactions to the journal region and replays them.
// Version 2 keeps two copies of the region (the second anywhere on the device):
// every transaction is stored into both at the same offset, and replay takes each
// transaction from the first copy where it verifies, so one bad block in either
// copy loses nothing.
//
// Each commit stores the transaction and fences, so a committed operation is
// durable when it returns and a crash can tear at most the last transaction:
// replay never meets a valid transaction after an invalid one.
// Space is reserved before an operation starts, so a commit never finds the
// region full; when a reservation does not fit, the caller checkpoints, which
// empties the journal by starting a new generation.
//
// Thread-safety: all members are safe to call concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "format/journal_format.h"
#include "poise/device.h"

namespace poise {

class Journal {
 public:
  // `copy_start_block` is the second copy (0: none, a version 1 image).
  Journal(Device& device, uint64_t start_block, uint64_t blocks, uint64_t copy_start_block = 0);

  uint32_t copies() const { return copy_offset_ != 0 ? 2 : 1; }

  struct ReplayOptions {
    // Per copy, the byte ranges of the region whose memory failed (start, end):
    // nothing in them is read, and a transaction is taken from a copy only if
    // none of it lies there.
    std::vector<std::pair<uint64_t, uint64_t>> failed[2];
    // An emulated device: see replay().
    std::string* gap_note = nullptr;
    // Told of each transaction a copy could not give (taken from the other one).
    std::vector<std::string>* copy_notes = nullptr;
    // With gap_note: a gap that a later transaction's write-back mark shows was
  // not a crash's lost page (the bad one had been written back) is EUCLEAN
  // all the same, unless `gap_even_if_written_back` (a repair, which ends the
  // log there and reports what lies past it).
  bool gap_even_if_written_back = false;
  // With gap_note: the sealed transactions found past the gap, not applied.
    std::vector<format::DecodedTx>* lost = nullptr;
    // Device ranges that failed under replay's own copies (a machine check):
    // that copy's transaction is taken from the other, and the caller reports them.
    std::vector<BadRange>* machine_checks = nullptr;
  };
  // Reads transactions of `generation` from the start of the region, in order,
  // handing each to `apply`, and positions the journal after the last one. Each
  // transaction comes from the first copy where it verifies.
  // Only the last transaction may be torn: EUCLEAN if a transaction bad in every
  // copy is followed by a valid later one (acknowledged work would be dropped),
  // or if a checksummed transaction is malformed. EIO if the log reaches failed
  // memory in every copy. With `gap_note` (an emulated device, whose page cache
  // may write back a later transaction and lose an earlier one in a machine
  // crash before a sync), a bad transaction followed by valid ones ends the log
  // instead, and *gap_note says what was not applied. Returns the number replayed.
  Result<uint64_t> replay(uint64_t generation,
                          const std::function<Result<void>(const format::DecodedTx&)>& apply,
                          const ReplayOptions& options);

  // Zeroes the region past the last replayed transaction: after a gap, the
  // transactions beyond it must never be replayed once new ones are written.
  Result<void> erase_tail();

  // Starts an empty journal for a new generation (after a checkpoint).
  void reset(uint64_t generation);

  // Reserves room for a transaction of up to `bytes`; false when the journal
  // needs a checkpoint first. The last kFreeingReserveBytes (an eighth) of the
  // region are kept for operations that free space (unlink, rmdir, shrinking):
  // when the device is too full for a checkpoint, they still commit, and the
  // space they free lets the next checkpoint through.
  // *in_reserve (if given) says whether the room came out of that last eighth.
  enum class Use : uint8_t { Any, Freeing };
  bool reserve(uint64_t bytes, Use use = Use::Any, bool* in_reserve = nullptr);
  void unreserve(uint64_t bytes);
  // Stores the transaction durably; returns its lsn. REQUIRES: a reservation covers it.
  // With WriteBack::ToMedia (an emulated device, a transaction that may free
  // blocks) the log so far is also written back to the backing file, so that a
  // freed block is never reused while a machine crash could bring back its old owner.
  enum class WriteBack : uint8_t { Fence, ToMedia };
  // With write-back marks on, `tx` may gain a WrittenBackRecord (a reservation
  // holds room for one).
  uint64_t commit(format::TxEncoder& tx, uint64_t reserved_bytes, WriteBack write_back = WriteBack::Fence);
  // Fences: everything written back before (file data too) is durable.
  uint64_t make_durable();

  // Write-back marks (format::kIncompatWrittenBackMarks; an emulated device):
  // every transaction after the log was written back to the backing file
  // carries the lsn it was written back through, which tells replay a lost
  // page of a machine crash (never written back) from damage.
  void enable_written_back_marks();
  // Writes the log so far back to the backing file (both copies), as fsync
  // needs, and notes it for the next mark. A failed write-back is kept: every
  // later write_back() (and write_back_error()) is EIO, and nothing is marked
  // past it, since the host reports such an error only once.
  Result<void> write_back();
  Result<void> write_back_error() const;
  // The whole device was written back (sync) after transaction `lsn` of
  // `generation` was committed.
  void written_back_through(uint64_t generation, uint64_t lsn);
  // At unmount, once all is written back: a last transaction holding only the
  // mark, written back too, so that the log's last real transactions are
  // known written back as well (damage to them is then never taken for a torn
  // tail). Nothing when the log ends in such a mark already, or has no room.
  Result<void> seal_written_back();

  // The log so far ([0, used_bytes()): this generation's sealed transactions),
  // copied out machine-check safe, each block from a copy where it reads. EIO
  // if a block reads in no copy. REQUIRES: no transaction in flight.
  Result<std::vector<std::byte>> copy_log() const;

  uint64_t generation() const;
  uint64_t committed_lsn() const;
  uint64_t durable_lsn() const;
  uint64_t used_bytes() const;
  uint64_t capacity_bytes() const { return capacity_; }

 private:
  struct Copy {
    const std::byte* region;
    const std::vector<std::pair<uint64_t, uint64_t>>* failed;
    // How far the copy can be read from `at` on: to the next failed range (`at`
    // itself inside one).
    uint64_t readable_from(uint64_t at, uint64_t capacity) const;
  };
  // The transaction at write_offset_ of a copy, copied out machine-check safe
  // (replay never loads device memory directly): EIO and *failed set when the
  // memory failed under the copy.
  Result<format::DecodedTx> read_tx(const Copy& copy, uint64_t readable, uint64_t generation, uint64_t lsn,
                                    std::optional<BadRange>* failed);
  // After a gap: the sealed transactions of `generation` further on, by lsn.
  void collect_lost(const std::vector<Copy>& copies, uint64_t generation, std::vector<format::DecodedTx>* lost) const;
  // Stores (or zeroes, src == nullptr) [offset, +length) of the region in every copy.
  void store(uint64_t offset, const void* src, uint64_t length);
  Result<void> sync_copies(uint64_t offset, uint64_t length);

  // Room a reservation keeps for a write-back mark: the record (16 bytes) and
  // the padding it may add to the transaction.
  static constexpr uint64_t kMarkBytes = 64;

  Device& device_;
  const uint64_t base_offset_;
  const uint64_t capacity_;
  const uint64_t copy_offset_;  // device byte of the second copy; 0: none
  mutable std::mutex mutex_;
  uint64_t generation_ = 0;
  uint64_t next_lsn_ = 1;
  uint64_t write_offset_ = 0;
  uint64_t reserved_ = 0;
  uint64_t durable_lsn_ = 0;
  bool marks_ = false;
  bool write_back_failed_ = false;
  bool ends_in_mark_ = false;  // the last transaction holds only a written-back mark
  uint64_t written_back_lsn_ = 0;  // the log is on the backing file through this lsn
  std::vector<std::byte> image_;    // the sealed transaction being stored, reused
  std::vector<std::byte> scratch_;  // a transaction being replayed, copied out
};

}  // namespace poise
