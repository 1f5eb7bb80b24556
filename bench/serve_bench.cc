// poise serve: a 4 KiB read and a stat through the socket against the same
// calls in-process and against tmpfs system calls; map() of a 1 GiB file in a
// client; a client's mapped sequential I/O against memcpy on the raw device
// mapping; the recall of one poisoned block mapped by 100 client processes;
// pre-remove with 10,000 client mappings spread over 100 processes. The server
// runs on a thread of this process; the clients of the last two rows are
// processes of their own (fork), each with its own connection.
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "bench/bench.h"
#include "poise/client.h"
#include "poise/device.h"
#include "serve/server.h"

namespace poise::bench {

namespace {

double median_of(int samples, const std::function<void()>& fn) {
  auto m = medians_taking_turns(1, samples, Cache::Warm, [&](size_t, int) { fn(); });
  return m[0];
}

std::string us(double seconds) { return fmt::format("{:.1f} us", seconds * 1e6); }

// Client processes that each map `maps` ranges of `path`, say they are ready,
// and wait (their follow threads answer the server) until killed.
std::vector<pid_t> start_mappers(const std::string& socket, int processes, int maps, const std::string& path,
                                 uint64_t range_bytes) {
  int ready[2];
  POISE_ASSERT(::pipe(ready) == 0);
  std::vector<pid_t> pids;
  for (int p = 0; p < processes; ++p) {
    pid_t pid = ::fork();
    if (pid == 0) {
      ::close(ready[0]);
      auto fs = connect(socket);
      if (!fs) std::_Exit(1);
      auto ino = (*fs)->lookup(path);
      if (!ino) std::_Exit(2);
      std::vector<Mapping> held;
      for (int m = 0; m < maps; ++m) {
        auto mapping = (*fs)->map(*ino, uint64_t(m) * range_bytes, range_bytes, MapAccess::Read);
        if (!mapping) std::_Exit(3);
        held.push_back(std::move(*mapping));
      }
      (void)!::write(ready[1], "r", 1);
      for (;;) ::pause();
    }
    pids.push_back(pid);
  }
  ::close(ready[1]);
  char c;
  for (int p = 0; p < processes; ++p) {
    if (::read(ready[0], &c, 1) != 1) std::fprintf(stderr, "bench: a mapping client failed\n");
  }
  ::close(ready[0]);
  return pids;
}

void stop_mappers(const std::vector<pid_t>& pids) {
  for (pid_t p : pids) ::kill(p, SIGKILL);
  for (pid_t p : pids) ::waitpid(p, nullptr, 0);
}

// A server for `fs` on `socket_path`, on a thread of this process until it goes.
class ServingThread {
 public:
  ServingThread(Filesystem& fs, Device& device, const std::string& socket_path) {
    serve::ServerOptions options;
    options.socket_path = socket_path;
    options.log = nullptr;
    server_ = std::move(*serve::Server::listen(fs, device, options));
    POISE_ASSERT(::pipe(stop_) == 0);
    thread_ = std::thread([this] { server_->run(stop_[0]); });
  }
  ~ServingThread() {
    (void)!::write(stop_[1], "x", 1);
    thread_.join();
    server_.reset();
    ::close(stop_[0]);
    ::close(stop_[1]);
  }

 private:
  std::unique_ptr<serve::Server> server_;
  int stop_[2] = {-1, -1};
  std::thread thread_;
};

}  // namespace

void serve_bench(const Options& o, Table* t) {
  const uint64_t big = o.quick ? (64ull << 20) : (1ull << 30);
  MemoryDevice device(big + (256ull << 20), MemoryDevice::Backing::Shared);
  POISE_ASSERT(Filesystem::format(device).has_value());
  auto fs = std::move(*Filesystem::mount(device));
  std::string dir = fmt::format("/dev/shm/poise-serve-bench-{}", ::getpid());
  ::mkdir(dir.c_str(), 0700);
  const std::string socket_path = dir + "/s.sock";
  auto serving = std::make_unique<ServingThread>(*fs, device, socket_path);
  auto client = std::move(*connect(socket_path));

  // --- a 4 KiB read and a stat
  std::vector<std::byte> block(4096, std::byte{7});
  auto small = *fs->create("/small");
  POISE_ASSERT(fs->write(small, 0, block).has_value());
  std::string tmpfs_file = dir + "/small";
  int tfd = ::open(tmpfs_file.c_str(), O_CREAT | O_RDWR, 0644);
  POISE_ASSERT(::pwrite(tfd, block.data(), block.size(), 0) == 4096);
  std::vector<std::byte> out(4096);
  const int samples = o.quick ? 2000 : 20000;
  double socket_read = median_of(samples, [&] { (void)client->read(small, 0, out); });
  double local_read = median_of(samples, [&] { (void)fs->read(small, 0, out); });
  double tmpfs_read = median_of(samples, [&] { (void)!::pread(tfd, out.data(), out.size(), 0); });
  t->add({"4 KiB read through poise serve (vs in-process / vs tmpfs pread)", us(socket_read),
          fmt::format("{} / {}", us(local_read), us(tmpfs_read)),
          fmt::format("{:.0f}x / {:.0f}x", socket_read / local_read, socket_read / tmpfs_read), "(report)", true});
  struct stat st {};
  double socket_stat = median_of(samples, [&] { (void)client->stat("/small"); });
  double local_stat = median_of(samples, [&] { (void)fs->stat("/small"); });
  double tmpfs_stat = median_of(samples, [&] { (void)::stat(tmpfs_file.c_str(), &st); });
  t->add({"stat through poise serve (vs in-process / vs tmpfs stat)", us(socket_stat),
          fmt::format("{} / {}", us(local_stat), us(tmpfs_stat)),
          fmt::format("{:.0f}x / {:.0f}x", socket_stat / local_stat, socket_stat / tmpfs_stat), "(report)", true});
  ::close(tfd);

  // --- map() of a big file in a client, and its mapped sequential I/O
  auto file = *fs->create("/big");
  POISE_ASSERT(fs->fallocate(file, 0, big, FallocateMode::ExtendSize).has_value());
  double map_time = median_of(o.quick ? 5 : 21, [&] { (void)client->map(file, 0, big, MapAccess::ReadWrite); });
  t->add({fmt::format("map() of a {} MiB file in a client (the server's copy, its pages pushed)", big >> 20),
          us(map_time), "-", "-", "<= 200 us", map_time <= 200e-6});
  {
    auto m = std::move(*client->map(file, 0, big, MapAccess::ReadWrite));
    auto raw = std::move(*fs->map(file, 0, big, MapAccess::ReadWrite));  // the same memory, in-process
    std::vector<std::byte> chunk(1 << 20, std::byte{3});
    auto copy_in = [&](std::byte* base) {
      for (uint64_t at = 0; at < big; at += chunk.size()) std::memcpy(base + at, chunk.data(), chunk.size());
    };
    auto copy_out = [&](const std::byte* base) {
      for (uint64_t at = 0; at < big; at += chunk.size()) std::memcpy(chunk.data(), base + at, chunk.size());
    };
    copy_in(m.data());
    copy_in(raw.data());
    double cw = 1e9, rw = 1e9, cr = 1e9, rr = 1e9;
    for (int round = 0; round < 5; ++round) {
      cw = std::min(cw, best_of(1, [&] { copy_in(m.data()); }));
      rw = std::min(rw, best_of(1, [&] { copy_in(raw.data()); }));
      cr = std::min(cr, best_of(1, [&] { copy_out(m.data()); }));
      rr = std::min(rr, best_of(1, [&] { copy_out(raw.data()); }));
    }
    auto gbs = [&](double s) { return fmt::format("{:.1f} GB/s", static_cast<double>(big) / s / 1e9); };
    t->add({"a client's mapped sequential 1 MiB writes (vs memcpy to an in-process mapping)", gbs(cw), gbs(rw),
            fmt::format("{:.0f}%", 100 * rw / cw), ">= 95%", rw / cw >= 0.95});
    t->add({"a client's mapped sequential 1 MiB reads (vs memcpy from an in-process mapping)", gbs(cr), gbs(rr),
            fmt::format("{:.0f}%", 100 * rr / cr), ">= 95%", rr / cr >= 0.95});
  }

  // --- recall of one poisoned block mapped by 100 client processes
  const int processes = o.quick ? 10 : 100;
  {
    auto shared = *fs->create("/shared");
    POISE_ASSERT(fs->write(shared, 0, block).has_value());
    auto pids = start_mappers(socket_path, processes, 1, "/shared", 4096);
    auto owners = *fs->fsmap(0, device.size_bytes());
    uint64_t off = 0;
    for (const auto& r : owners) {
      if (r.owner == OwnerKind::File && r.ino == shared) off = r.device_offset_bytes;
    }
    double t0 = now_seconds();
    POISE_ASSERT(device.notify_failure(off, 4096, FailureFlags::None).has_value());
    double recall = now_seconds() - t0;
    stop_mappers(pids);
    t->add({fmt::format("poisoned block mapped by {} client processes: all recalled and acknowledged", processes),
            fmt::format("{:.2f} ms", recall * 1e3), "-", "-", "<= 5 ms", recall <= 5e-3});
  }

  // --- pre-remove of a 1 TiB device with 10,000 client mappings over 100
  // processes: a sparse emulated device on /dev/shm (as in the in-process
  // row of poise_bench mapping), served on a socket of its own.
  {
    const int maps = o.quick ? 10 : 100;
    const uint64_t size = o.quick ? (64ull << 30) : (1ull << 40);
    const std::string image = dir + "/big.img";
    auto big_device = std::move(*open_device(image, {CreateMode::CreateIfMissing, size, DeviceAccess::ReadWrite,
                                                     Backing::Sparse}));
    POISE_ASSERT(Filesystem::format(*big_device).has_value());
    auto big_fs = std::move(*Filesystem::mount(*big_device));
    const std::string big_socket = dir + "/big.sock";
    auto big_serving = std::make_unique<ServingThread>(*big_fs, *big_device, big_socket);
    auto spread = *big_fs->create("/spread");
    POISE_ASSERT(big_fs->fallocate(spread, 0, uint64_t(maps) * 65536, FallocateMode::ExtendSize).has_value());
    auto pids = start_mappers(big_socket, processes, maps, "/spread", 65536);
    double t0 = now_seconds();
    POISE_ASSERT(big_device->pre_remove().has_value());
    double pre_remove = now_seconds() - t0;
    big_device->cancel_removal();
    stop_mappers(pids);
    big_serving.reset();
    (void)big_fs->unmount();
    big_fs.reset();
    big_device.reset();
    ::unlink(image.c_str());
    ::unlink((image + ".poison").c_str());
    t->add({fmt::format("pre-remove, {} client mappings over {} processes (freeze, sync, recall all, notify), "
                        "{} GiB device",
                        processes * maps, processes, size >> 30),
            fmt::format("{:.1f} ms", pre_remove * 1e3), "-", "-", "<= 1 s", pre_remove <= 1.0});
  }

  client.reset();
  serving.reset();
  (void)fs->unmount();
  ::unlink((dir + "/small").c_str());
  ::rmdir(dir.c_str());
}

}  // namespace poise::bench
