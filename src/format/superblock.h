// The superblock: what a device holds, where the journal is and which checkpoint
// is current. Two copies, at the first and the last block; each write bumps the
// sequence, and mount takes the valid copy with the highest.
// Thread-safety: pure functions.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "poise/result.h"

namespace poise::format {

struct SuperblockInfo {
  uint32_t version = 0;
  uint64_t size_blocks = 0;
  uint64_t feature_compat = 0;
  uint64_t feature_ro_compat = 0;
  uint64_t feature_incompat = 0;
  std::array<unsigned char, 16> uuid{};
  uint64_t sequence = 0;
  uint64_t journal_start_block = 0;
  uint64_t journal_blocks = 0;
  uint64_t checkpoint_root_block = 0;
  uint64_t checkpoint_generation = 0;
  // Version 2: where the second copies are (0 in version 1: one copy).
  uint64_t checkpoint_copy_root_block = 0;
  uint64_t journal_copy_start_block = 0;
  bool has_copies() const { return journal_copy_start_block != 0; }
  // kCompatPreviousCheckpoint (zero without it): the checkpoint of generation
  // checkpoint_generation - 1, kept for a fallback, and the journal of that
  // generation, carried in one run per copy (carry_blocks may be zero).
  uint64_t previous_root_block = 0;
  uint64_t previous_copy_root_block = 0;
  uint64_t carry_block = 0;
  uint64_t carry_copy_block = 0;
  uint64_t carry_blocks = 0;
  bool has_previous() const { return previous_root_block != 0; }
  int64_t created_ns = 0;
  int64_t written_ns = 0;
};

// Where the two copies live on a device of `size_blocks` blocks.
inline uint64_t primary_superblock_block() { return 0; }
inline uint64_t secondary_superblock_block(uint64_t size_blocks) { return size_blocks - 1; }
// Where mkfs puts the journal's second copy: just before the secondary superblock,
// as far from the first copy as the device allows.
inline uint64_t default_journal_copy_block(uint64_t size_blocks, uint64_t journal_blocks) {
  return size_blocks - 1 - journal_blocks;
}

// The journal size mkfs chooses: 1/64 of the device, within 1 MiB .. 64 MiB.
uint64_t default_journal_blocks(uint64_t size_blocks);

// Fills a 4 KiB block image.
void encode_superblock(const SuperblockInfo& sb, uint64_t self_block, std::byte* block);

// Verifies the block (checksum, magic, location) and every field's range; a
// newer format version or an unknown incompatible feature gives ENOTSUP.
// Version 1 (one copy of everything) decodes with the copy fields zero.
Result<SuperblockInfo> decode_superblock(const std::byte* block, uint64_t self_block,
                                         const char* which);

}  // namespace poise::format
