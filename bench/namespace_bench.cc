// Create and stat of empty files, single thread: poise's API against the same
// loop of POSIX calls on tmpfs (/dev/shm), in the same run.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "bench/bench.h"
#include "device/memory_device.h"
#include "poise/filesystem.h"

namespace poise::bench {

void namespace_bench(const Options& o, Table* t) {
  const int files = o.quick ? 20000 : 200000;
  std::vector<std::string> names;
  names.reserve(files);
  for (int i = 0; i < files; ++i) names.push_back("/d/file" + std::to_string(i));

  // The peer: tmpfs through the kernel. Its files are removed only after
  // poise has been measured too: the kernel frees unlinked inodes in RCU
  // callbacks, which would otherwise run inside poise's timed loops.
  std::string dir = "/dev/shm/poise-bench-" + std::to_string(getpid());
  std::filesystem::create_directories(dir + "/d");
  double t0 = now_seconds();
  for (const auto& n : names) {
    int fd = ::open((dir + n).c_str(), O_CREAT | O_WRONLY | O_EXCL, 0644);
    if (fd >= 0) ::close(fd);
  }
  double tmpfs_create = now_seconds() - t0;
  struct stat st {};
  t0 = now_seconds();
  for (const auto& n : names) ::stat((dir + n).c_str(), &st);
  double tmpfs_stat = now_seconds() - t0;

  MemoryDevice device(8ull << 30);  // a realistic size: the journal gets its 64 MiB
  (void)Filesystem::format(device);
  auto fs = std::move(*Filesystem::mount(device));
  (void)fs->mkdir("/d");
  std::vector<InodeNumber> inos;
  inos.reserve(files);
  t0 = now_seconds();
  for (const auto& n : names) inos.push_back(fs->create(n).value_or(InodeNumber(0)));
  double poise_create = now_seconds() - t0;
  t0 = now_seconds();
  for (const auto& n : names) (void)fs->stat(n);
  double poise_stat = now_seconds() - t0;
  // path_of (what names the files in failure reports and fsmap) costs the
  // same in a directory of 2,000 files as in one of them all: O(depth).
  auto path_of_each = [](Filesystem& f, const std::vector<InodeNumber>& which) {
    double start = now_seconds();
    for (InodeNumber ino : which) {
      if (!f.path_of(ino).has_value()) fmt::print(stderr, "path_of failed\n");
    }
    return (now_seconds() - start) / double(which.size());
  };
  double path_big = path_of_each(*fs, inos);
  const size_t few = 2000;
  MemoryDevice small_device(1ull << 30);
  (void)Filesystem::format(small_device);
  auto small = std::move(*Filesystem::mount(small_device));
  (void)small->mkdir("/d");
  std::vector<InodeNumber> small_inos;
  for (size_t i = 0; i < few; ++i) small_inos.push_back(small->create(names[i]).value_or(InodeNumber(0)));
  double path_small = path_of_each(*small, small_inos);
  (void)small->unmount();
  (void)fs->unmount();
  std::filesystem::remove_all(dir);

  auto rate = [&](double seconds) { return fmt::format("{:.0f} k/s", files / seconds / 1000); };
  double create_ratio = tmpfs_create / poise_create;
  double stat_ratio = tmpfs_stat / poise_stat;
  t->add({fmt::format("create {} empty files (vs tmpfs)", files), rate(poise_create), rate(tmpfs_create),
          fmt::format("{:.1f}x", create_ratio), ">= 4x", create_ratio >= 4});
  t->add({fmt::format("stat {} files (vs tmpfs)", files), rate(poise_stat), rate(tmpfs_stat),
          fmt::format("{:.1f}x", stat_ratio), ">= 10x", stat_ratio >= 10});
  double path_ratio = path_big / path_small;
  t->add({fmt::format("path_of a file in a directory of {} files (vs of {})", files, few),
          fmt::format("{:.2f} us", path_big * 1e6), fmt::format("{:.2f} us", path_small * 1e6),
          fmt::format("{:.2f}x", path_ratio), "within 2x (O(depth))", path_ratio <= 2});
}

}  // namespace poise::bench
