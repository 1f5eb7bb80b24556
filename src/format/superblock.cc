#include "format/superblock.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string>

#include "format/block.h"
#include "format/checkpoint_format.h"
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
  sb.checkpoint_copy_root_block.set(in.checkpoint_copy_root_block);
  sb.journal_copy_start_block.set(in.journal_copy_start_block);
  sb.previous_root_block.set(in.previous_root_block);
  sb.previous_copy_root_block.set(in.previous_copy_root_block);
  sb.carry_block.set(in.carry_block);
  sb.carry_copy_block.set(in.carry_copy_block);
  sb.carry_blocks.set(in.carry_blocks);
  const uint32_t used = in.version == kFormatVersionSingleCopy    ? offsetof(Superblock, checkpoint_copy_root_block)
                        : (in.feature_compat & kCompatPreviousCheckpoint) ? sizeof sb
                                                                        : offsetof(Superblock, previous_root_block);
  std::memcpy(block, &sb, sizeof sb);
  seal_block(block, kBlockSuperblock, self_block, in.checkpoint_generation, used);
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
  if (out.version != kFormatVersionSingleCopy) {
    out.checkpoint_copy_root_block = sb.checkpoint_copy_root_block.get();
    out.journal_copy_start_block = sb.journal_copy_start_block.get();
  }
  // An older release that wrote this superblock kept the compatible bit but
  // not the fields (its superblock is shorter): then nothing is named.
  const bool previous = out.version != kFormatVersionSingleCopy &&
                        (out.feature_compat & kCompatPreviousCheckpoint) != 0 &&
                        sb.header.used_bytes.get() >= sizeof sb;
  if (previous) {
    out.previous_root_block = sb.previous_root_block.get();
    out.previous_copy_root_block = sb.previous_copy_root_block.get();
    out.carry_block = sb.carry_block.get();
    out.carry_copy_block = sb.carry_copy_block.get();
    out.carry_blocks = sb.carry_blocks.get();
  }

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
  if (out.version != kFormatVersionSingleCopy) {
    if (sb.header.used_bytes.get() < offsetof(Superblock, previous_root_block)) {
      return fail(EUCLEAN, w + "used_bytes below the version 2 superblock");
    }
    const uint64_t data_end = out.size_blocks - 1;
    if (out.journal_copy_start_block < data_start || out.journal_copy_start_block > data_end ||
        out.journal_blocks > data_end - out.journal_copy_start_block) {
      return fail(EUCLEAN, w + "journal copy at block " + std::to_string(out.journal_copy_start_block) +
                               " lies outside the data area");
    }
    const uint64_t copy_root = out.checkpoint_copy_root_block;
    if (copy_root < data_start || copy_root >= data_end || copy_root == out.checkpoint_root_block) {
      return fail(EUCLEAN, w + "checkpoint copy root block " + std::to_string(copy_root) +
                               " lies outside the data area or on the first copy's root");
    }
    for (uint64_t root : {out.checkpoint_root_block, copy_root}) {
      if (root >= out.journal_copy_start_block && root < out.journal_copy_start_block + out.journal_blocks) {
        return fail(EUCLEAN, w + "checkpoint root block " + std::to_string(root) + " lies in the journal copy");
      }
    }
    // The previous checkpoint and the carried journal: blocks of the data area,
    // clear of the journal copy and of the current roots.
    auto outside = [&](uint64_t start, uint64_t count) {
      return start < data_start || start >= data_end || count > data_end - start ||
             (start < out.journal_copy_start_block + out.journal_blocks &&
              out.journal_copy_start_block < start + count);
    };
    auto on_current = [&](uint64_t start, uint64_t count) {
      return (out.checkpoint_root_block >= start && out.checkpoint_root_block < start + count) ||
             (copy_root >= start && copy_root < start + count);
    };
    if (out.has_previous()) {
      const uint64_t a = out.previous_root_block;
      const uint64_t b = out.previous_copy_root_block;
      if (outside(a, 1) || outside(b, 1) || a == b || on_current(a, 1) || on_current(b, 1) ||
          out.checkpoint_generation < 2) {
        return fail(EUCLEAN, w + "previous checkpoint roots " + std::to_string(a) + " and " + std::to_string(b) +
                                 " lie outside the data area, on each other or on the current roots");
      }
      // The carried journal is at most one journal's worth of delta blocks.
      const uint64_t most = delta_blocks_for(out.journal_blocks * kBlockSize);
      const uint64_t n = out.carry_blocks;
      if (n > most || (n != 0 && (outside(out.carry_block, n) || outside(out.carry_copy_block, n) ||
                                  on_current(out.carry_block, n) || on_current(out.carry_copy_block, n) ||
                                  (out.carry_block < out.carry_copy_block + n && out.carry_copy_block < out.carry_block + n)))) {
        return fail(EUCLEAN, w + "the carried journal (" + std::to_string(n) + " blocks at " +
                                 std::to_string(out.carry_block) + " and " + std::to_string(out.carry_copy_block) +
                                 ") lies outside the data area or over other metadata");
      }
    } else if (out.previous_copy_root_block != 0 || out.carry_blocks != 0) {
      return fail(EUCLEAN, w + "a carried journal or a second previous root without a previous checkpoint");
    }
  }
  return out;
}

}  // namespace poise::format
