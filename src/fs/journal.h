// Journal: appends sealed transactions to the journal region and replays them.
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
#include <string>
#include <vector>

#include "format/journal_format.h"
#include "poise/device.h"

namespace poise {

class Journal {
 public:
  Journal(Device& device, uint64_t start_block, uint64_t blocks);

  // Reads transactions of `generation` from the start of the region, in order,
  // handing each to `apply`, and positions the journal after the last one.
  // Only the last transaction may be torn: EUCLEAN if a bad transaction is
  // followed by a valid later one (acknowledged work would be dropped), or if a
  // checksummed transaction is malformed. Reads no byte at or past
  // `readable_bytes` (where failed memory begins): EIO if the log reaches there.
  // With `gap_note` (an emulated device, whose page cache may write back a later
  // transaction and lose an earlier one in a machine crash before a sync), a bad
  // transaction followed by valid ones ends the log instead, and *gap_note says
  // what was not applied. Returns the number replayed.
  Result<uint64_t> replay(uint64_t generation,
                          const std::function<Result<void>(const format::DecodedTx&)>& apply,
                          uint64_t readable_bytes = UINT64_MAX, std::string* gap_note = nullptr);

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
  enum class Use : uint8_t { Any, Freeing };
  bool reserve(uint64_t bytes, Use use = Use::Any);
  void unreserve(uint64_t bytes);
  // Stores the transaction durably; returns its lsn. REQUIRES: a reservation covers it.
  // With WriteBack::ToMedia (an emulated device, a transaction that may free
  // blocks) the log so far is also written back to the backing file, so that a
  // freed block is never reused while a machine crash could bring back its old owner.
  enum class WriteBack : uint8_t { Fence, ToMedia };
  uint64_t commit(const format::TxEncoder& tx, uint64_t reserved_bytes, WriteBack write_back = WriteBack::Fence);
  // Fences: everything written back before (file data too) is durable.
  uint64_t make_durable();

  uint64_t generation() const;
  uint64_t committed_lsn() const;
  uint64_t durable_lsn() const;
  uint64_t used_bytes() const;
  uint64_t capacity_bytes() const { return capacity_; }

 private:
  Device& device_;
  const uint64_t base_offset_;
  const uint64_t capacity_;
  mutable std::mutex mutex_;
  uint64_t generation_ = 0;
  uint64_t next_lsn_ = 1;
  uint64_t write_offset_ = 0;
  uint64_t reserved_ = 0;
  uint64_t durable_lsn_ = 0;
  std::vector<std::byte> image_;  // the sealed transaction being stored, reused
};

}  // namespace poise
