// Journal transactions on media. A transaction is a TxHeader, its records and
// zero padding to 64 bytes; it is valid only if its checksum matches and it
// carries the expected generation, sequence number (lsn) and own offset, which is
// how replay finds the end of the log and never mistakes an older transaction
// left in the region for a new one.
// Thread-safety: TxEncoder is single-threaded; decode_tx is a pure function.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "format/ondisk.h"
#include "format/records.h"
#include "poise/result.h"

namespace poise::format {

class TxEncoder {
 public:
  void add(const JournalRecord& record);
  bool empty() const { return count_ == 0; }
  uint32_t record_count() const { return count_; }
  // Bytes the sealed transaction takes in the journal (a multiple of 64).
  size_t sealed_bytes() const;
  // The sealed transaction image, written into *out (reused across calls).
  void seal(uint64_t generation, uint64_t lsn, uint64_t self_offset, std::vector<std::byte>* out) const;
  std::vector<std::byte> seal(uint64_t generation, uint64_t lsn, uint64_t self_offset) const {
    std::vector<std::byte> out;
    seal(generation, lsn, self_offset, &out);
    return out;
  }
  void clear();

 private:
  std::vector<unsigned char> payload_;
  uint32_t count_ = 0;
};

// The checksum of a sealed transaction: crc32c of its header (crc field zero)
// and payload. Public for tools and fuzzers that build transactions by hand.
uint32_t tx_crc(const TxHeader& header, const unsigned char* payload, size_t bytes);

struct DecodedTx {
  uint64_t lsn = 0;
  uint64_t sealed_bytes = 0;
  std::vector<JournalRecord> records;
};

// Decodes the transaction at `offset` of a journal region of `region_bytes`.
// ENODATA: no valid transaction here (the end of the log: a torn or stale tail).
// EUCLEAN: the checksum matches but the contents are malformed (corruption).
Result<DecodedTx> decode_tx(const std::byte* region, uint64_t region_bytes, uint64_t offset,
                            uint64_t generation, uint64_t lsn);
// The same for a transaction copied out of the region: `tx` holds `available`
// bytes from its header on, and `offset` is where it lay in the region.
Result<DecodedTx> decode_tx_copy(const std::byte* tx, uint64_t available, uint64_t offset, uint64_t generation,
                                 uint64_t lsn);
// Decodes a whole log copied out of a journal region (its bytes from offset 0
// to the end of the last transaction: lsn 1, 2, ... of `generation`), handing
// each transaction to `visit`. A transaction that does not decode is EUCLEAN.
Result<void> decode_log(const std::vector<std::byte>& log, uint64_t generation,
                        const std::function<Result<void>(const DecodedTx&)>& visit);
// The bytes a transaction takes in the region (header, payload, padding), from
// its header; 0 when the length is out of range.
uint64_t tx_sealed_bytes(const TxHeader& h);

// Whether the transaction that would come next at `offset` may lie (partly) at
// or past `readable_bytes`: its header is there, or a header of `generation`
// and `lsn` sits before it and claims bytes past it. Reads only readable bytes.
bool tx_may_reach(const std::byte* region, uint64_t readable_bytes, uint64_t offset, uint64_t generation,
                  uint64_t lsn);

// Looks past `from` (64-byte steps, to the end of the region) for a sealed
// transaction of `generation` with an lsn of at least `lsn`: proof that the log
// did not end at `from`, so a bad transaction there is damage, not a torn tail.
// Returns its lsn and offset. Each candidate's checksum is verified.
struct TxLocation {
  uint64_t lsn = 0;
  uint64_t offset = 0;
};
std::optional<TxLocation> find_later_tx(const std::byte* region, uint64_t region_bytes, uint64_t from,
                                        uint64_t generation, uint64_t lsn);

}  // namespace poise::format
