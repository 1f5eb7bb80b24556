// Mount of an image holding many files, the DRAM its metadata index takes, and
// fsmap of one block on a small and a large image. Every file holds one 4 KiB
// block (allocated with fallocate, so the benchmark does not touch gigabytes of
// data pages), in directories of 1000 files.
#include <fmt/format.h>
#include <malloc.h>

#include <algorithm>
#include <vector>

#include "base/huge_pages.h"
#include "base/random.h"
#include "bench/bench.h"
#include "device/memory_device.h"
#include "poise/filesystem.h"

namespace poise::bench {

Image build_image(uint64_t files) {
  Image image;
  image.device = std::make_unique<MemoryDevice>(files * 4096 + (1ull << 30));
  double t0 = now_seconds();
  (void)Filesystem::format(*image.device);
  auto fs = std::move(*Filesystem::mount(*image.device));
  for (uint64_t i = 0; i < files; ++i) {
    if (i % 1000 == 0) (void)fs->mkdir("/d" + std::to_string(i / 1000));
    auto ino = fs->create("/d" + std::to_string(i / 1000) + "/f" + std::to_string(i % 1000));
    if (ino) (void)fs->fallocate(*ino, 0, 4096, FallocateMode::ExtendSize);
  }
  (void)fs->unmount();
  image.build_seconds = now_seconds() - t0;
  return image;
}

std::vector<uint64_t> random_file_blocks(Filesystem& fs, int count, uint64_t seed) {
  std::vector<uint64_t> file_blocks;
  for (const auto& r : *fs.fsmap(0, fs.info().size_bytes)) {
    if (r.owner != OwnerKind::File) continue;
    for (uint64_t at = 0; at < r.length_bytes; at += 4096) file_blocks.push_back(r.device_offset_bytes + at);
  }
  // Distinct blocks in random order (a notified block is bad from then on),
  // cycled when more are asked for than there are.
  Rng rng(seed);
  size_t n = file_blocks.size();
  size_t distinct = std::min<size_t>(n, count);
  for (size_t i = 0; i < distinct; ++i) std::swap(file_blocks[i], file_blocks[i + rng.below(n - i)]);
  std::vector<uint64_t> picked;
  for (int i = 0; i < count && distinct > 0; ++i) picked.push_back(file_blocks[i % distinct]);
  return picked;
}

namespace {

// Median latency of fsmap over one random file data block, per filesystem, the
// filesystems taking turns.
std::vector<double> fsmap_medians(const std::vector<Filesystem*>& filesystems, uint64_t seed, Cache cache) {
  const int samples = cache == Cache::Warm ? 20001 : 1001;
  std::vector<std::vector<uint64_t>> targets;
  for (Filesystem* fs : filesystems) targets.push_back(random_file_blocks(*fs, samples, seed));
  return medians_taking_turns(filesystems.size(), samples, cache, [&](size_t k, int i) {
    auto records = filesystems[k]->fsmap(targets[k][i], 4096);
    if (!records || records->empty()) fmt::print(stderr, "fsmap returned nothing\n");
  });
}

}  // namespace

void mount_bench(const Options& o, Table* t) {
  const uint64_t large = o.quick ? 20000 : 1000000;
  const uint64_t small = 1000;
  Image big = build_image(large);
  malloc_trim(0);
  // The index lives on the C heap and on huge-page mappings (base/huge_pages.h): count both.
  size_t heap_before = mallinfo2().uordblks + index_memory_bytes();
  double t0 = now_seconds();
  auto mounted = Filesystem::mount(*big.device);
  double mount_seconds = now_seconds() - t0;
  if (!mounted) {
    fmt::print(stderr, "mount failed: {}\n", mounted.error().message);
    return;
  }
  auto fs = std::move(*mounted);
  size_t heap_after = mallinfo2().uordblks + index_memory_bytes();
  double bytes_per_file = double(heap_after - heap_before) / double(large);
  double big_fsmap = fsmap_medians({fs.get()}, 1, Cache::Warm)[0];

  Image little = build_image(small);
  auto small_fs = std::move(*Filesystem::mount(*little.device));
  double small_fsmap = fsmap_medians({small_fs.get()}, 1, Cache::Warm)[0];
  std::vector<double> cold = fsmap_medians({small_fs.get(), fs.get()}, 2, Cache::Cold);
  double small_cold = cold[0];
  double big_cold = cold[1];
  small_fs.reset();
  fs.reset();

  t->add({fmt::format("mount of an image with {} files (built in {:.1f} s)", large, big.build_seconds),
          fmt::format("{:.2f} s", mount_seconds), "-", "-", "<= 3 s", mount_seconds <= 3});
  t->add({"DRAM of the metadata index per file", fmt::format("{:.0f} B", bytes_per_file), "-", "-", "<= 512 B",
          bytes_per_file <= 512});
  t->add({fmt::format("fsmap of one block, median, warm caches ({} vs {} files)", large, small),
          fmt::format("{:.2f} us", big_fsmap * 1e6), fmt::format("{:.2f} us", small_fsmap * 1e6),
          fmt::format("{:.2f}x", big_fsmap / small_fsmap), "<= 2 us", big_fsmap <= 2e-6});
  double cold_ratio = big_cold / small_cold;
  t->add({fmt::format("fsmap of one block, median, cold caches ({} vs {} files)", large, small),
          fmt::format("{:.2f} us", big_cold * 1e6), fmt::format("{:.2f} us", small_cold * 1e6),
          fmt::format("{:.2f}x", cold_ratio), "within 2x", cold_ratio <= 2});
  // Why the warm figures differ: the small image's index stays in the caches, the large one's cannot.
  double far = dependent_load_ns(64 << 20);
  double near = dependent_load_ns(256 << 10);
  t->add({"context: one dependent load, 64 MiB vs 256 KiB working set", fmt::format("{:.0f} ns", far),
          fmt::format("{:.0f} ns", near), fmt::format("{:.0f}x", far / near), "-", true});
}

}  // namespace poise::bench
