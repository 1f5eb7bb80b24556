// Memory-failure notification without mappings: the cost of one ranged call
// from the device to every owner recorded (journaled, fenced off), by size of
// the filesystem, and against the same range told page by page. With live
// mappings: mapping_bench.cc.
#include <fmt/format.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "bench/bench.h"
#include "poise/filesystem.h"

namespace poise::bench {

namespace {

// Median time of one-block notifications at random file blocks of an image.
// The blocks are found first, so the timed calls are not run on caches that a
// whole-device fsmap just flushed.
double one_block_median(Image& image, int samples, Cache cache) {
  auto fs = std::move(*Filesystem::mount(*image.device));
  std::vector<uint64_t> targets = random_file_blocks(*fs, samples, 7);
  std::vector<double> times;
  CacheEvictor evictor(cache);
  for (uint64_t at : targets) {
    evictor.evict();
    double t0 = now_seconds();
    (void)image.device->notify_failure(at, 4096, FailureFlags::ActionRequired);
    times.push_back(now_seconds() - t0);
  }
  fs->shutdown();
  std::nth_element(times.begin(), times.begin() + samples / 2, times.end());
  return times[samples / 2];
}

}  // namespace

void failure_bench(const Options& o, Table* t) {
  // The same one-block notification on a small and a large filesystem.
  const uint64_t large = o.quick ? 20000 : 1000000;
  // Each sample records a bad block, so every run takes a fresh image.
  Image small = build_image(1000);
  double small_warm = one_block_median(small, 101, Cache::Warm);
  small = build_image(1000);
  double small_cold = one_block_median(small, 101, Cache::Cold);
  small.device.reset();
  Image big = build_image(large);
  double big_warm = one_block_median(big, 101, Cache::Warm);
  big.device.reset();
  big = build_image(large);
  double big_cold = one_block_median(big, 101, Cache::Cold);
  big.device.reset();
  for (auto [cache, big_median, small_median] : {std::tuple{"warm", big_warm, small_warm},
                                                 std::tuple{"cold", big_cold, small_cold}}) {
    t->add({fmt::format("notify one block, median, {} caches ({} vs 1000 files)", cache, large),
            fmt::format("{:.1f} us", big_median * 1e6), fmt::format("{:.1f} us", small_median * 1e6),
            fmt::format("{:.2f}x", big_median / small_median), "within 2x", big_median / small_median <= 2});
  }

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
