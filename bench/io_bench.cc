// Sequential 1 MiB reads and writes through the filesystem on the emulated
// device (a file on /dev/shm mapped shared, its backing reserved as mkfs does),
// against plain memcpy of the same amount between buffers in the same run; and
// allocating writes against appending 1 MiB writes to a new file on tmpfs, which
// pays the same kernel page allocation and zeroing.
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "bench/bench.h"
#include "device/memory_device.h"
#include "poise/filesystem.h"

namespace poise::bench {

namespace {
constexpr size_t kChunk = 1 << 20;
constexpr int kRounds = 3;

}  // namespace

void io_bench(const Options& o, Table* t) {
  const uint64_t file_bytes = o.quick ? (64ull << 20) : (1ull << 30);
  const uint64_t chunks = file_bytes / kChunk;
  std::string image = "/dev/shm/poise-io-bench-" + std::to_string(getpid()) + ".img";
  std::vector<std::byte> buf(kChunk, std::byte{0x5A});
  // Allocating writes, best of kRounds as the peer is: each round on a new
  // image (new backing pages), the last one kept for the rounds after.
  std::unique_ptr<Device> device;
  std::unique_ptr<Filesystem> fs;
  InodeNumber ino(0);
  double first_write = 1e30;
  for (int round = 0; round < kRounds; ++round) {
    if (fs) (void)fs->unmount();
    fs.reset();
    device.reset();
    ::unlink(image.c_str());
    auto opened = open_device(image, {CreateMode::CreateIfMissing, file_bytes + (256ull << 20)});
    if (!opened) {
      fmt::print(stderr, "io bench: {}\n", opened.error().message);
      return;
    }
    device = std::move(*opened);
    (void)Filesystem::format(*device);
    fs = *Filesystem::mount(*device);
    ino = *fs->create("/seq");
    double t0 = now_seconds();
    for (uint64_t c = 0; c < chunks; ++c) (void)fs->write(ino, c * kChunk, buf);
    first_write = std::min(first_write, now_seconds() - t0);
  }
  double overwrite = best_of(kRounds, [&] {
    for (uint64_t c = 0; c < chunks; ++c) (void)fs->write(ino, c * kChunk, buf);
  });
  double read = best_of(kRounds, [&] {
    for (uint64_t c = 0; c < chunks; ++c) (void)fs->read(ino, c * kChunk, buf);
  });
  (void)fs->unmount();
  fs.reset();
  device.reset();
  ::unlink(image.c_str());

  // The peer: memcpy between a 1 MiB buffer and a pre-faulted region.
  std::byte* region = map_anonymous(file_bytes);
  std::memset(region, 1, file_bytes);
  double memcpy_write = best_of(kRounds, [&] {
    for (uint64_t c = 0; c < chunks; ++c) std::memcpy(region + c * kChunk, buf.data(), kChunk);
  });
  double memcpy_read = best_of(kRounds, [&] {
    for (uint64_t c = 0; c < chunks; ++c) std::memcpy(buf.data(), region + c * kChunk, kChunk);
  });
  unmap_anonymous(region, file_bytes);

  // The peer for allocating writes: 1 MiB appends to a new tmpfs file.
  std::string peer_path = "/dev/shm/poise-io-bench-peer-" + std::to_string(getpid());
  double append = best_of(kRounds, [&] {
    int fd = ::open(peer_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (uint64_t c = 0; c < chunks; ++c) {
      if (::write(fd, buf.data(), kChunk) != static_cast<ssize_t>(kChunk)) fmt::print(stderr, "tmpfs write failed\n");
    }
    ::close(fd);
    ::unlink(peer_path.c_str());
  });

  auto gbs = [&](double s) { return fmt::format("{:.1f} GB/s", file_bytes / s / 1e9); };
  double w = memcpy_write / overwrite;
  double r = memcpy_read / read;
  t->add({"sequential 1 MiB writes, overwrite (vs memcpy)", gbs(overwrite), gbs(memcpy_write),
          fmt::format("{:.0f}%", 100 * w), ">= 70%", w >= 0.7});
  t->add({"sequential 1 MiB reads (vs memcpy)", gbs(read), gbs(memcpy_read), fmt::format("{:.0f}%", 100 * r),
          ">= 70%", r >= 0.7});
  double a = append / first_write;
  t->add({"sequential 1 MiB writes, allocating (vs appends to a new tmpfs file)", gbs(first_write), gbs(append),
          fmt::format("{:.0f}%", 100 * a), ">= 100%", a >= 1.0});
}

}  // namespace poise::bench
