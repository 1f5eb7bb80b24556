// Helpers for the fuzz targets: metadata is checksummed, so a mutated block is
// re-sealed before it is decoded, or the fuzzer would only ever reach the
// checksum test. Each target must never crash, hang or leak, whatever it is fed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "base/crc32c.h"
#include "format/journal_format.h"
#include "format/ondisk.h"

namespace poise::fuzz {

// Gives a 4 KiB metadata block the checksum its bytes need.
inline void reseal_block(std::byte* block) {
  format::BlockHeader h;
  std::memcpy(&h, block, sizeof h);
  h.crc.set(0);
  std::memcpy(block, &h, sizeof h);
  h.crc.set(crc32c(block, 4096));
  std::memcpy(block, &h, sizeof h);
}

// Gives every transaction header in a journal region (64-byte aligned, with the
// magic and a length that fits) the checksum its bytes need.
inline void reseal_transactions(std::byte* region, uint64_t bytes) {
  for (uint64_t at = 0; at + sizeof(format::TxHeader) <= bytes; at += format::kTxAlign) {
    format::TxHeader h;
    std::memcpy(&h, region + at, sizeof h);
    if (h.magic.get() != format::kTxMagic) continue;
    uint64_t payload = h.payload_bytes.get();
    if (at + sizeof h + payload > bytes) continue;
    h.crc.set(format::tx_crc(h, reinterpret_cast<const unsigned char*>(region + at + sizeof h), payload));
    std::memcpy(region + at, &h, sizeof h);
  }
}

}  // namespace poise::fuzz
