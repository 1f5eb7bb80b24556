// Memory-failure notification without mappings: the cost of one ranged call
// from the device to every owner recorded (journaled, fenced off), by size of
// the filesystem, and against the same range told page by page. With live
// mappings: mapping_bench.cc.
#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "bench/bench.h"
#include "poise/filesystem.h"

namespace poise::bench {

namespace {

// Median times of one-block notifications at random file blocks, one per
// image, the images taking turns. The blocks are found first, so the timed
// calls are not run on caches that a whole-device fsmap just flushed.
std::vector<double> one_block_medians(const std::vector<Image*>& images, int samples, Cache cache) {
  std::vector<std::unique_ptr<Filesystem>> mounted;
  std::vector<std::vector<uint64_t>> targets;
  for (Image* image : images) {
    mounted.push_back(std::move(*Filesystem::mount(*image->device)));
    targets.push_back(random_file_blocks(*mounted.back(), samples, 7));
  }
  std::vector<double> medians = medians_taking_turns(images.size(), samples, cache, [&](size_t k, int i) {
    (void)images[k]->device->notify_failure(targets[k][i], 4096, FailureFlags::ActionRequired);
  });
  for (auto& fs : mounted) fs->shutdown();
  return medians;
}

}  // namespace

void failure_bench(const Options& o, Table* t) {
  // The same one-block notification on a small and a large filesystem.
  const uint64_t large = o.quick ? 20000 : 1000000;
  const int samples = 201;
  // Each sample records a bad block, so every measurement takes fresh images.
  Image small = build_image(1000);
  Image big = build_image(large);
  double small_warm = one_block_medians({&small}, samples, Cache::Warm)[0];
  double big_warm = one_block_medians({&big}, samples, Cache::Warm)[0];
  small = build_image(1000);
  big.device.reset();
  big = build_image(large);
  std::vector<double> cold = one_block_medians({&small, &big}, samples, Cache::Cold);
  small.device.reset();
  big.device.reset();
  // Warm, the 1,000-file index sits in the L1/L2 caches and the large one cannot:
  // the ratio measures the cache hierarchy (see the "context" row of the mount
  // benchmark), so the target is judged with the caches flushed before each call.
  t->add({fmt::format("notify one block, median, warm caches ({} vs 1000 files)", large),
          fmt::format("{:.1f} us", big_warm * 1e6), fmt::format("{:.1f} us", small_warm * 1e6),
          fmt::format("{:.2f}x", big_warm / small_warm), "(context)", true});
  t->add({fmt::format("notify one block, median, cold caches ({} vs 1000 files)", large),
          fmt::format("{:.1f} us", cold[1] * 1e6), fmt::format("{:.1f} us", cold[0] * 1e6),
          fmt::format("{:.2f}x", cold[1] / cold[0]), "within 2x", cold[1] / cold[0] <= 2});

  // One ranged call against page-by-page calls (measured on a slice, extrapolated).
  MemoryDevice device(1ull << 30);
  (void)Filesystem::format(device);
  auto fs = std::move(*Filesystem::mount(device));
  const uint64_t ranged_bytes = 512ull << 20;
  const uint64_t ranged_start = 256ull << 20;
  double t0 = now_seconds();
  (void)device.notify_failure(ranged_start, ranged_bytes, FailureFlags::None);
  double ranged = now_seconds() - t0;
  const uint64_t slice_pages = 2048;
  const uint64_t slice_start = 128ull << 20;
  t0 = now_seconds();
  for (uint64_t p = 0; p < slice_pages; ++p) (void)device.notify_failure(slice_start + p * 4096, 4096, FailureFlags::None);
  double per_page = (now_seconds() - t0) / slice_pages * (ranged_bytes / 4096);
  (void)fs->unmount();
  t->add({"fail 512 MiB of memory: one ranged call (vs page by page, extrapolated)",
          fmt::format("{:.0f} us", ranged * 1e6), fmt::format("{:.0f} ms", per_page * 1e3),
          fmt::format("{:.0f}x", per_page / ranged), ">= 1000x", per_page / ranged >= 1000});
}

}  // namespace poise::bench
