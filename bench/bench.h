// Shared pieces of the benchmarks: a clock, a results table that prints poise
// beside the peer measured in the same run, and the benchmark entry points.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <memory>
#include <vector>

#include "device/memory_device.h"
#include "poise/filesystem.h"

namespace poise::bench {

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The fastest of `runs` runs of fn, in seconds.
inline double best_of(int runs, const std::function<void()>& fn) {
  double best = 1e30;
  for (int r = 0; r < runs; ++r) {
    double t0 = now_seconds();
    fn();
    best = std::min(best, now_seconds() - t0);
  }
  return best;
}

// Warm: whatever the previous call left in the caches. Cold: the CPU caches
// are flushed before each timed call (a failure notification, or the fsmap
// that serves it, is a rare event that finds the caches full of other work).
enum class Cache { Warm, Cold };

// Pushes the caches' contents out by writing a buffer larger than them.
class CacheEvictor {
 public:
  explicit CacheEvictor(Cache cache) : buffer_(cache == Cache::Warm ? 0 : 64 << 20, 1) {}
  void evict() {
    for (size_t b = 0; b < buffer_.size(); b += 64) buffer_[b] = static_cast<char>(buffer_[b] + 1);
  }

 private:
  std::vector<char> buffer_;
};

// The median time of `call(subject, sample)` for each of `subjects` (say, a
// small and a large filesystem), `samples` calls each. The subjects take turns
// call by call, so that whatever else the machine does meanwhile falls on each
// alike. With Cache::Cold the caches are flushed before every call; with warm
// caches pass one subject at a time, or the turns would cool each other's.
std::vector<double> medians_taking_turns(size_t subjects, int samples, Cache cache,
                                         const std::function<void(size_t subject, int sample)>& call);

// Nanoseconds per load of a pointer chase through `bytes` of memory in random
// order: what one cache miss costs once an index outgrows the caches.
double dependent_load_ns(size_t bytes);

struct Row {
  std::string metric;
  std::string poise;   // the figure for poise
  std::string peer;    // the peer's figure in the same run ("-" when none)
  std::string ratio;   // how poise compares
  std::string target;  // the target from the issue
  bool met = false;
};

class Table {
 public:
  void add(Row row) { rows_.push_back(std::move(row)); }
  void print() const;
  bool all_met() const;

 private:
  std::vector<Row> rows_;
};


// An image of `files` files in directories of 1000, each holding one 4 KiB block.
struct Image {
  std::unique_ptr<MemoryDevice> device;
  double build_seconds = 0;
};
Image build_image(uint64_t files);
// Device offsets of `count` file data blocks of a mounted image, drawn at
// random from every file block, distinct while there are enough: the blocks a
// one-block fsmap or failure notification is timed on — the same kind of block
// on a small and a large image.
std::vector<uint64_t> random_file_blocks(Filesystem& fs, int count, uint64_t seed);

struct Options {
  bool quick = false;  // smaller sizes, for a smoke run
};

void namespace_bench(const Options& o, Table* t);
void io_bench(const Options& o, Table* t);
void mount_bench(const Options& o, Table* t);
void reflink_bench(const Options& o, Table* t);
void failure_bench(const Options& o, Table* t);
void mapping_bench(const Options& o, Table* t);
void cli_bench(const Options& o, Table* t);
void serve_bench(const Options& o, Table* t);
void fuse_bench(const Options& o, Table* t);

}  // namespace poise::bench
