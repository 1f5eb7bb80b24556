// The superblock decoder, on any 4 KiB block (re-sealed): it accepts or refuses
// with an error, and what it accepts encodes back to a block it accepts again.
#include <cstring>

#include "format/superblock.h"
#include "fuzz_util.h"
#include "poise/result.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace poise;
  alignas(64) std::byte block[4096] = {};
  std::memcpy(block, data, std::min<size_t>(size, sizeof block));
  fuzz::reseal_block(block);
  auto sb = format::decode_superblock(block, 0, "fuzzed superblock");
  if (!sb.has_value()) return 0;
  alignas(64) std::byte again[4096];
  format::encode_superblock(*sb, 0, again);
  auto round = format::decode_superblock(again, 0, "re-encoded superblock");
  POISE_ASSERT(round.has_value());
  POISE_ASSERT(round->size_blocks == sb->size_blocks);
  POISE_ASSERT(round->journal_blocks == sb->journal_blocks);
  return 0;
}
