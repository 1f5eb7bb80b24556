// Reflink of a 1 GiB file: metadata only. The peer is what a copy costs: memcpy
// of the same gigabyte, in the same run.
#include <fmt/format.h>

#include <cstring>
#include <vector>

#include "bench/bench.h"
#include "device/memory_device.h"
#include "poise/filesystem.h"

namespace poise::bench {

void reflink_bench(const Options& o, Table* t) {
  const uint64_t file_bytes = o.quick ? (64ull << 20) : (1ull << 30);
  MemoryDevice device(file_bytes * 2 + (256ull << 20));
  (void)Filesystem::format(device);
  auto fs = std::move(*Filesystem::mount(device));
  InodeNumber src = *fs->create("/big");
  std::vector<std::byte> chunk(1 << 20, std::byte{7});
  for (uint64_t off = 0; off < file_bytes; off += chunk.size()) (void)fs->write(src, off, chunk);
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    InodeNumber dst = *fs->create("/copy" + std::to_string(i));
    double t0 = now_seconds();
    auto r = fs->reflink(src, dst);
    best = std::min(best, now_seconds() - t0);
    if (!r) fmt::print(stderr, "reflink failed: {}\n", r.error().message);
  }
  uint64_t extents = fs->check().extents;
  (void)fs->unmount();
  std::byte* a = map_anonymous(file_bytes);
  std::byte* b = map_anonymous(file_bytes);
  std::memset(a, 1, file_bytes);
  std::memset(b, 2, file_bytes);
  double t0 = now_seconds();
  std::memcpy(b, a, file_bytes);
  double copy = now_seconds() - t0;
  unmap_anonymous(a, file_bytes);
  unmap_anonymous(b, file_bytes);
  t->add({fmt::format("reflink of a {} MiB file (vs memcpy copy; {} extents in all)", file_bytes >> 20, extents),
          fmt::format("{:.1f} us", best * 1e6), fmt::format("{:.1f} ms", copy * 1e3),
          fmt::format("{:.0f}x", copy / best), "<= 1 ms", best <= 1e-3});
}

}  // namespace poise::bench
