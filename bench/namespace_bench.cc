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
  t0 = now_seconds();
  for (const auto& n : names) (void)fs->create(n);
  double poise_create = now_seconds() - t0;
  t0 = now_seconds();
  for (const auto& n : names) (void)fs->stat(n);
  double poise_stat = now_seconds() - t0;
  (void)fs->unmount();
  std::filesystem::remove_all(dir);

  auto rate = [&](double seconds) { return fmt::format("{:.0f} k/s", files / seconds / 1000); };
  double create_ratio = tmpfs_create / poise_create;
  double stat_ratio = tmpfs_stat / poise_stat;
  t->add({fmt::format("create {} empty files (vs tmpfs)", files), rate(poise_create), rate(tmpfs_create),
          fmt::format("{:.1f}x", create_ratio), ">= 4x", create_ratio >= 4});
  t->add({fmt::format("stat {} files (vs tmpfs)", files), rate(poise_stat), rate(tmpfs_stat),
          fmt::format("{:.1f}x", stat_ratio), ">= 10x", stat_ratio >= 10});
}

}  // namespace poise::bench
