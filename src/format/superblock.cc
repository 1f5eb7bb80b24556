#include "format/superblock.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "format/block.h"
#include "format/ondisk.h"
#include "poise/types.h"

namespace poise::format {

uint64_t default_journal_blocks(uint64_t size_blocks) {
  return std::clamp<uint64_t>(size_blocks / 64, kJournalBlocksMin, kJournalBlocksMax);
}

void encode_superblock(const SuperblockInfo& in, uint64_t self_block, std::byte* block) {
  std::memset(block, 0, kBlockSize);
  Superblock sb;
  std::memset(&sb, 0, sizeof sb);
  sb.version.set(in.version);
  sb.block_size.set(kBlockSize);
  sb.size_blocks.set(in.size_blocks);
  sb.feature_compat.set(in.feature_compat);
  sb.feature_ro_compat.set(in.feature_ro_compat);
  sb.feature_incompat.set(in.feature_incompat);
  std::memcpy(sb.uuid, in.uuid.data(), 16);
  sb.sequence.set(in.sequence);
  sb.journal_start_block.set(in.journal_start_block);
  sb.journal_blocks.set(in.journal_blocks);
  sb.checkpoint_root_block.set(in.checkpoint_root_block);
  sb.created_ns.set(static_cast<uint64_t>(in.created_ns));
  sb.written_ns.set(static_cast<uint64_t>(in.written_ns));
  std::memcpy(block, &sb, sizeof sb);
  seal_block(block, kBlockSuperblock, self_block, in.checkpoint_generation, sizeof sb);
}

Result<SuperblockInfo> decode_superblock(const std::byte* block, uint64_t self_block,
                                         const char* which) {
  TRY(verify_block(block, kBlockSuperblock, self_block, which));
  Superblock sb;
  std::memcpy(&sb, block, sizeof sb);
  SuperblockInfo out;
  out.version = sb.version.get();
  out.size_blocks = sb.size_blocks.get();
  out.feature_compat = sb.feature_compat.get();
  out.feature_ro_compat = sb.feature_ro_compat.get();
  out.feature_incompat = sb.feature_incompat.get();
  std::memcpy(out.uuid.data(), sb.uuid, 16);
  out.sequence = sb.sequence.get();
  out.journal_start_block = sb.journal_start_block.get();
  out.journal_blocks = sb.journal_blocks.get();
  out.checkpoint_root_block = sb.checkpoint_root_block.get();
  out.checkpoint_generation = sb.header.generation.get();
  out.created_ns = static_cast<int64_t>(sb.created_ns.get());
  out.written_ns = static_cast<int64_t>(sb.written_ns.get());

  std::string w = std::string(which) + ": ";
  if (out.version > kFormatVersion) {
    return fail(ENOTSUP, w + "format version " + std::to_string(out.version) +
                             " is newer than this poise reads (up to " +
                             std::to_string(kFormatVersion) + ")");
  }
  if (out.version == 0) return fail(EUCLEAN, w + "format version 0 is invalid");
  if (sb.block_size.get() != kBlockSize) {
    return fail(EUCLEAN, w + "block size " + std::to_string(sb.block_size.get()) +
                             " is not 4096");
  }
  if ((out.feature_incompat & ~kIncompatKnown) != 0) {
    return fail(ENOTSUP, w + "unknown incompatible feature bits " +
                             std::to_string(out.feature_incompat & ~kIncompatKnown));
  }
  if (out.size_blocks < (16ull << 20) / kBlockSize) {
    return fail(EUCLEAN, w + "device size " + std::to_string(out.size_blocks) +
                             " blocks is below the 16 MiB minimum");
  }
  if (self_block != primary_superblock_block() &&
      self_block != secondary_superblock_block(out.size_blocks)) {
    return fail(EUCLEAN, w + "superblock found at an unexpected place");
  }
  uint64_t data_start = out.journal_start_block + out.journal_blocks;
  if (out.journal_start_block != 1 || out.journal_blocks < kJournalBlocksMin ||
      out.journal_blocks > kJournalBlocksMax || data_start >= out.size_blocks - 1) {
    return fail(EUCLEAN, w + "journal location out of range");
  }
  if (out.checkpoint_root_block < data_start || out.checkpoint_root_block >= out.size_blocks - 1) {
    return fail(EUCLEAN, w + "checkpoint root block " + std::to_string(out.checkpoint_root_block) +
                             " lies outside the data area");
  }
  if (out.checkpoint_generation == 0) return fail(EUCLEAN, w + "checkpoint generation 0");
  return out;
}

}  // namespace poise::format
