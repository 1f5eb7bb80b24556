// The checkpoint decoders: the root block (re-sealed), its run lists, and the records of every
// section kind (directory entries packed as in a section block).
#include <cstring>

#include "format/checkpoint_format.h"
#include "format/records.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace poise;
  alignas(64) std::byte block[4096] = {};
  std::memcpy(block, data, std::min<size_t>(size, sizeof block));
  fuzz::reseal_block(block);
  format::BlockHeader h;
  std::memcpy(&h, block, sizeof h);
  auto root = format::decode_checkpoint_root(block, h.self_block.get(), h.generation.get(), 16, 1u << 20);
  if (root.has_value()) {
    // Every run-list link the root leads to is the same bytes, sealed as that
    // link: chains that loop, end early or list too much.
    auto read = [&](uint64_t at, std::byte* out) -> Result<void> {
      std::memcpy(out, block, sizeof block);
      format::BlockHeader link;
      std::memcpy(&link, out, sizeof link);
      link.self_block.set(at);
      link.kind.set(format::kBlockRunList);
      link.generation.set(root->generation);
      std::memcpy(out, &link, sizeof link);
      fuzz::reseal_block(out);
      return {};
    };
    (void)format::read_run_lists(read, &*root, 16, 1u << 20);
  }

  // The same bytes as records of each section.
  const auto* bytes = reinterpret_cast<const unsigned char*>(data);
  for (size_t at = 0; at + sizeof(format::DiskInode) <= size; at += sizeof(format::DiskInode)) {
    format::DiskInode d;
    std::memcpy(&d, bytes + at, sizeof d);
    (void)format::decode_inode(d);
  }
  for (size_t at = 0; at + sizeof(format::DiskExtent) <= size; at += sizeof(format::DiskExtent)) {
    format::DiskExtent d;
    std::memcpy(&d, bytes + at, sizeof d);
    (void)format::decode_extent(d);
  }
  for (size_t at = 0; at + sizeof(format::DiskBadRange) <= size; at += sizeof(format::DiskBadRange)) {
    format::DiskBadRange d;
    std::memcpy(&d, bytes + at, sizeof d);
    (void)format::decode_bad_range(d);
  }
  for (size_t at = 0; at < size;) {  // directory entries, one after another, as a section packs them
    size_t used = 0;
    auto d = format::decode_dirent(bytes + at, size - at, &used);
    if (!d.has_value()) break;
    POISE_ASSERT(used > 0 && used <= size - at);
    at += used;
  }
  return 0;
}
