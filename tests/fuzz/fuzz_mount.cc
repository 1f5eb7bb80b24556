// The whole mount path on a small image: a filesystem with directories, files,
// a reflink, a checkpoint and journal transactions after it is damaged by the
// input (a list of patches: 4-byte offset into the metadata, 1-byte length,
// bytes), every touched metadata block and transaction is re-sealed, and then
// the offline checker, a read-only mount with a tree walk, and a read-write
// mount with one more operation run. Errors are fine; crashes and hangs are not.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "device/memory_device.h"
#include "fuzz_util.h"
#include "poise/filesystem.h"

namespace {

using namespace poise;

constexpr uint64_t kBytes = 16ull << 20;
constexpr uint64_t kJournalBlocks = 256;  // 1 MiB, right after the primary superblock

// The image every input starts from, made once.
const std::vector<std::byte>& base_image() {
  static const std::vector<std::byte> image = [] {
    MemoryDevice device(kBytes);
    FormatOptions f;
    f.journal_blocks = kJournalBlocks;
    POISE_ASSERT(Filesystem::format(device, f).has_value());
    auto fs = *Filesystem::mount(device);
    auto write = [&](const char* path, const std::string& text) {
      auto ino = *fs->create(path);
      POISE_ASSERT(fs->write(ino, 0, {reinterpret_cast<const std::byte*>(text.data()), text.size()}).has_value());
    };
    POISE_ASSERT(fs->mkdir("/d").has_value());
    write("/d/a", std::string(9000, 'a'));
    write("/b", "bee");
    auto copy = *fs->create("/d/copy");
    POISE_ASSERT(fs->reflink(*fs->lookup("/d/a"), copy).has_value());
    POISE_ASSERT(fs->checkpoint().has_value());  // sections on media ...
    POISE_ASSERT(fs->mkdir("/d/e").has_value());  // ... and transactions after them
    write("/d/e/f", std::string(5000, 'f'));
    POISE_ASSERT(fs->rename("/b", "/d/e/b").has_value());
    POISE_ASSERT(fs->link("/d/a", "/a2").has_value());
    fs->shutdown();
    return std::vector<std::byte>(device.data(), device.data() + kBytes);
  }();
  return image;
}

void walk(Filesystem& fs, const std::string& dir, int depth) {
  if (depth > 16) return;
  auto entries = fs.readdir(dir);
  if (!entries.has_value()) return;
  for (const auto& e : *entries) {
    std::string path = (dir == "/" ? "" : dir) + "/" + e.name;
    if (e.type == FileType::Directory) {
      walk(fs, path, depth + 1);
      continue;
    }
    std::vector<std::byte> buf(8192);
    (void)fs.read(e.ino, 0, buf);
    (void)fs.path_of(e.ino);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& base = base_image();
  auto device = std::make_unique<MemoryDevice>(kBytes);
  std::memcpy(device->data(), base.data(), kBytes);
  // Metadata lives in the first blocks (superblock, journal, checkpoint) and the last.
  constexpr uint64_t kMetadataBytes = (1 + kJournalBlocks + 64) * 4096;
  std::vector<uint64_t> touched;
  for (size_t at = 0; at + 5 <= size;) {
    uint32_t raw;
    std::memcpy(&raw, data + at, 4);
    size_t length = data[at + 4];
    at += 5;
    length = std::min(length, size - at);
    uint64_t offset = raw % (kMetadataBytes + 4096);
    if (offset >= kMetadataBytes) offset = kBytes - 4096 + (offset - kMetadataBytes);  // the secondary superblock
    length = std::min<uint64_t>(length, kBytes - offset);
    std::memcpy(device->data() + offset, data + at, length);
    at += length;
    touched.push_back(offset / 4096);
  }
  for (uint64_t block : touched) {
    if (block >= 1 && block < 1 + kJournalBlocks) continue;
    fuzz::reseal_block(device->data() + block * 4096);
  }
  fuzz::reseal_transactions(device->data() + 4096, kJournalBlocks * 4096);

  (void)Filesystem::check_device(*device);
  MountOptions ro;
  ro.mode = MountMode::ReadOnly;
  if (auto fs = Filesystem::mount(*device, ro); fs.has_value()) {
    walk(**fs, "/", 0);
    (void)(*fs)->fsmap(0, kBytes);
  }
  if (auto fs = Filesystem::mount(*device); fs.has_value()) {
    walk(**fs, "/", 0);
    (void)(*fs)->mkdir("/new");
    (void)(*fs)->check();
    (void)(*fs)->unmount();
  }
  return 0;
}
