// Sealing and verifying metadata blocks: every 4 KiB metadata block carries the
// magic, its kind, its own location, the generation it was written for and a
// crc32c over the whole block. verify_block() runs after every read, checksum
// first, and seal_block() + verify_block() run before every write.
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "poise/result.h"

namespace poise::format {

void seal_block(std::byte* block, uint32_t kind, uint64_t self_block, uint64_t generation,
                uint32_t used_bytes);

// Checks checksum (EBADMSG), then magic, kind, location and used_bytes (EUCLEAN).
// `what` names the structure in the message ("primary superblock", ...).
Result<void> verify_block(const std::byte* block, uint32_t kind, uint64_t self_block,
                          const char* what);

const char* block_kind_name(uint32_t kind);

}  // namespace poise::format
