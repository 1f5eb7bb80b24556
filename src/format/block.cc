#include "format/block.h"

#include <cstring>
#include <string>

#include "base/crc32c.h"
#include "format/ondisk.h"
#include "poise/types.h"

namespace poise::format {

namespace {
uint32_t block_crc(const std::byte* block) {
  uint32_t crc = crc32c(block, offsetof(BlockHeader, crc));
  const uint32_t zero = 0;
  crc = crc32c_extend(crc, &zero, sizeof zero);
  size_t rest = offsetof(BlockHeader, crc) + sizeof(Le32);
  return crc32c_extend(crc, block + rest, kBlockSize - rest);
}
}  // namespace

const char* block_kind_name(uint32_t kind) {
  switch (kind) {
    case kBlockSuperblock: return "superblock";
    case kBlockCheckpointRoot: return "checkpoint root";
    case kBlockInodeSection: return "inode table";
    case kBlockDirentSection: return "directory";
    case kBlockExtentSection: return "extent map";
    case kBlockBadRangeSection: return "bad-range list";
    case kBlockRefcountSection: return "refcount list";
    case kBlockRunList: return "checkpoint run list";
    case kBlockDelta: return "checkpoint delta";
  }
  return "unknown";
}

void seal_block(std::byte* block, uint32_t kind, uint64_t self_block, uint64_t generation,
                uint32_t used_bytes) {
  POISE_ASSERT(used_bytes >= sizeof(BlockHeader));
  POISE_ASSERT(used_bytes <= kBlockSize);
  BlockHeader h;
  h.magic.set(kMagic);
  h.crc.set(0);
  h.self_block.set(self_block);
  h.generation.set(generation);
  h.kind.set(kind);
  h.used_bytes.set(used_bytes);
  std::memcpy(block, &h, sizeof h);
  h.crc.set(block_crc(block));
  std::memcpy(block, &h, sizeof h);
  // Verify before the write, as on every write path.
  POISE_ASSERT(verify_block(block, kind, self_block, "block being written").has_value());
}

Result<void> verify_block(const std::byte* block, uint32_t kind, uint64_t self_block,
                          const char* what) {
  BlockHeader h;
  std::memcpy(&h, block, sizeof h);
  std::string where = std::string(what) + " at block " + std::to_string(self_block);
  if (h.magic.get() != kMagic) {
    return fail(EUCLEAN, where + ": bad magic (not a poise " + block_kind_name(kind) + " block)");
  }
  if (h.crc.get() != block_crc(block)) return fail(EBADMSG, where + ": checksum mismatch");
  if (h.kind.get() != kind) {
    return fail(EUCLEAN, where + ": expected a " + std::string(block_kind_name(kind)) +
                             " block, found a " + block_kind_name(h.kind.get()) + " block");
  }
  if (h.self_block.get() != self_block) {
    return fail(EUCLEAN, where + ": block says it belongs at block " +
                             std::to_string(h.self_block.get()) + " (misdirected write)");
  }
  if (h.used_bytes.get() < sizeof(BlockHeader) || h.used_bytes.get() > kBlockSize) {
    return fail(EUCLEAN, where + ": used_bytes out of range");
  }
  return {};
}

}  // namespace poise::format
