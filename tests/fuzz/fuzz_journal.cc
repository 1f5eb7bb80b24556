// Journal replay's decoding: the input is a journal region (every transaction
// header re-sealed); transactions are decoded in order as replay does, then the
// search for a valid transaction past the end runs. Nothing may read past the
// region, loop, or crash.
#include <cstring>
#include <vector>

#include "format/journal_format.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace poise;
  if (size < sizeof(format::TxHeader)) return 0;
  std::vector<std::byte> region(size);
  std::memcpy(region.data(), data, size);
  fuzz::reseal_transactions(region.data(), region.size());
  format::TxHeader first;
  std::memcpy(&first, region.data(), sizeof first);
  const uint64_t generation = first.generation.get();
  uint64_t offset = 0;
  uint64_t lsn = 1;
  while (offset < region.size()) {
    auto tx = format::decode_tx(region.data(), region.size(), offset, generation, lsn);
    if (!tx.has_value()) break;
    POISE_ASSERT(tx->sealed_bytes >= format::kTxAlign);
    offset += tx->sealed_bytes;
    ++lsn;
  }
  (void)format::tx_may_reach(region.data(), region.size() / 2, offset, generation, lsn);
  (void)format::find_later_tx(region.data(), region.size(), offset, generation, lsn + 1);
  return 0;
}
