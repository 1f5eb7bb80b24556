// The FUSE mount against tmpfs, through the same system calls in the same run:
// create, stat (cached attributes), unlink, sequential 1 MiB writes and reads,
// 4 KiB random reads, and untar of a tree of small files (GNU tar). The mount
// runs on threads of this process over an emulated device; it needs root and
// /dev/fuse (without them the rows say so and count as not measured).
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>

#include "bench/bench.h"
#include "bench/null_fuse.h"
#include "fuse/mount.h"

namespace poise::bench {

namespace {

constexpr long kTmpfsMagic = 0x01021994;

struct Scratch {
  std::string dir;
  explicit Scratch(const std::string& parent) {
    std::string pattern = parent + "/poise-fuse-bench-XXXXXX";
    POISE_ASSERT(::mkdtemp(pattern.data()) != nullptr);
    dir = pattern;
  }
  ~Scratch() { (void)!std::system(fmt::format("rm -rf '{}'", dir).c_str()); }
};

double files_per_second(int files, const std::function<void(int)>& each) {
  double t = best_of(3, [&] {
    for (int i = 0; i < files; ++i) each(i);
  });
  return files / t;
}

struct Figures {
  double create = 0, stat = 0, unlink = 0, write_gbs = 0, read_gbs = 0, random_reads = 0, untar = 0;
};

// Every measurement, on a directory of either filesystem.
Figures measure(const std::string& dir, const Options& o, const std::string& tarball, int tar_files) {
  Figures f;
  const int files = o.quick ? 1000 : 10000;
  std::string names = dir + "/names";
  POISE_ASSERT(::mkdir(names.c_str(), 0755) == 0);
  auto name = [&](int i) { return fmt::format("{}/file{:06}", names, i); };
  // Three rounds, each from an empty directory: the best create time counts.
  double best_create = 1e30;
  for (int round = 0; round < 3; ++round) {
    double t0 = now_seconds();
    for (int i = 0; i < files; ++i) {
      int fd = ::open(name(i).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
      POISE_ASSERT(fd >= 0);
      ::close(fd);
    }
    best_create = std::min(best_create, now_seconds() - t0);
    if (round < 2) {
      for (int i = 0; i < files; ++i) ::unlink(name(i).c_str());
    }
  }
  f.create = files / best_create;
  f.stat = files_per_second(files, [&](int i) {
    struct stat st {};
    POISE_ASSERT(::stat(name(i).c_str(), &st) == 0);
  });
  double t0 = now_seconds();
  for (int i = 0; i < files; ++i) POISE_ASSERT(::unlink(name(i).c_str()) == 0);
  f.unlink = files / (now_seconds() - t0);

  const size_t mib = 1 << 20;
  const size_t total = o.quick ? (64u << 20) : (512u << 20);
  std::vector<char> buf(mib, 'x');
  std::string big = dir + "/big";
  f.write_gbs = total / 1e9 / best_of(3, [&] {
    ::unlink(big.c_str());
    int fd = ::open(big.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    POISE_ASSERT(fd >= 0);
    for (size_t off = 0; off < total; off += mib) POISE_ASSERT(::write(fd, buf.data(), mib) == ssize_t(mib));
    ::close(fd);
  });
  f.read_gbs = total / 1e9 / best_of(3, [&] {
    int fd = ::open(big.c_str(), O_RDONLY | O_CLOEXEC);  // (the mount's cached pages go at open)
    POISE_ASSERT(fd >= 0);
    for (size_t off = 0; off < total; off += mib) POISE_ASSERT(::read(fd, buf.data(), mib) == ssize_t(mib));
    ::close(fd);
  });
  const int reads = o.quick ? 5000 : 50000;
  f.random_reads = reads / best_of(3, [&] {
    std::mt19937_64 rng(7);
    int fd = ::open(big.c_str(), O_RDONLY | O_CLOEXEC);
    POISE_ASSERT(fd >= 0);
    for (int i = 0; i < reads; ++i) {
      off_t page = static_cast<off_t>(rng() % (total / 4096));
      POISE_ASSERT(::pread(fd, buf.data(), 4096, page * 4096) == 4096);
    }
    ::close(fd);
  });
  ::unlink(big.c_str());

  f.untar = tar_files / best_of(3, [&] {
    std::string into = dir + "/untar";
    POISE_ASSERT(std::system(fmt::format("rm -rf '{0}' && mkdir '{0}' && tar -C '{0}' -xf '{1}'", into, tarball).c_str()) == 0);
  });
  return f;
}

}  // namespace

void fuse_bench(const Options& o, Table* t) {
  const std::string settings = "FUSE: 4 threads, 1 MiB max read/write, names/attributes cached 3600 s, "
                               "page cache kept across opens (keep_cache, invalidated on other paths' changes), no flush requests, no writeback cache, no splice";
  // The peer: tmpfs (/dev/shm), through the same calls.
  struct statfs sfs {};
  if (::statfs("/dev/shm", &sfs) != 0 || sfs.f_type != kTmpfsMagic) {
    t->add({"FUSE mount vs tmpfs: /dev/shm is not tmpfs here, not measured", "-", "-", "-", "-", false});
    return;
  }
  Scratch peer_dir("/dev/shm");
  Scratch work("/tmp");
  // A source tree of small files, packed once: what untar unpacks on both.
  const int tar_files = o.quick ? 1000 : 10000;
  std::string tree = work.dir + "/tree";
  for (int d = 0; d < tar_files / 100; ++d) {
    std::string sub = fmt::format("{}/d{:03}", tree, d);
    POISE_ASSERT(::mkdir(tree.c_str(), 0755) == 0 || errno == EEXIST);
    POISE_ASSERT(::mkdir(sub.c_str(), 0755) == 0);
    for (int i = 0; i < 100; ++i) {
      int fd = ::open(fmt::format("{}/f{:03}.c", sub, i).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
      std::string body(static_cast<size_t>(200 + (d * 100 + i) * 37 % 8000), 'c');
      POISE_ASSERT(::write(fd, body.data(), body.size()) == ssize_t(body.size()));
      ::close(fd);
    }
  }
  std::string tarball = work.dir + "/tree.tar";
  POISE_ASSERT(std::system(fmt::format("tar -C '{}' -cf '{}' .", tree, tarball).c_str()) == 0);

  // The peer first, before the device takes its memory.
  Figures peer = measure(peer_dir.dir, o, tarball, tar_files);
  MemoryDevice device(o.quick ? (512ull << 20) : (2048ull << 20), MemoryDevice::Backing::Shared);
  // Device memory is there from the start, as a DAX device's is: no first
  // touch of a page is timed (it would favour whichever setting runs later,
  // on blocks an earlier one freed).
  std::memset(device.data(), 0, device.size_bytes());
  POISE_ASSERT(Filesystem::format(device).has_value());
  auto fs = std::move(*Filesystem::mount(device));
  std::string mnt = work.dir + "/mnt";
  POISE_ASSERT(::mkdir(mnt.c_str(), 0755) == 0);
  // The default settings, then the writeback cache (-o writeback), then splice
  // (a measurement only: libfuse moves request and reply data through pipes).
  auto measure_mounted = [&](bool writeback, bool splice) -> std::optional<Figures> {
    fusemount::MountOptions options;
    options.dir = mnt;
    options.source = "poise-bench";
    options.cache_seconds = 3600;
    options.writeback = writeback;
    options.splice = splice;
    auto mount = fusemount::Mount::start(*fs, options);
    if (!mount.has_value()) {
      t->add({"FUSE mount vs tmpfs: not measured (" + mount.error().message + "; needs root and /dev/fuse)", "-",
              "-", "-", "-", false});
      return std::nullopt;
    }
    Figures f = measure(mnt, o, tarball, tar_files);
    (void)!std::system(fmt::format("rm -rf '{}'/*", mnt).c_str());
    mount->reset();
    return f;
  };
  auto measured = measure_mounted(false, false);
  if (!measured) return;
  Figures mine = *measured;
  auto writeback = measure_mounted(true, false);
  auto spliced = measure_mounted(false, true);
  POISE_ASSERT(fs->unmount().has_value());
  // The ceiling: the same calls through a FUSE filesystem that does nothing.
  std::optional<Figures> null_figures;
  if (auto null_fs = NullFuse::start(mnt, 4, false, 3600)) {
    null_figures = measure(mnt, o, tarball, tar_files);
    (void)!std::system(fmt::format("rm -rf '{}'/*", mnt).c_str());
  }

  auto rate = [](double v, const char* unit) { return fmt::format("{:.0f} {}", v, unit); };
  auto gbs = [](double v) { return fmt::format("{:.2f} GB/s", v); };
  auto add = [&](const std::string& what, double a, double b, const std::string& fa, const std::string& fb,
                 double target) {
    t->add({what, fa, fb, fmt::format("{:.0f}%", 100 * a / b), fmt::format(">= {:.0f}%", target * 100),
            a >= target * b});
  };
  add("FUSE create (open O_CREAT + close) vs tmpfs", mine.create, peer.create, rate(mine.create, "/s"),
      rate(peer.create, "/s"), 0.5);
  add("FUSE stat, cached attributes, vs tmpfs", mine.stat, peer.stat, rate(mine.stat, "/s"), rate(peer.stat, "/s"), 0.8);
  add("FUSE unlink vs tmpfs", mine.unlink, peer.unlink, rate(mine.unlink, "/s"), rate(peer.unlink, "/s"), 0.5);
  add("FUSE sequential 1 MiB writes vs tmpfs", mine.write_gbs, peer.write_gbs, gbs(mine.write_gbs),
      gbs(peer.write_gbs), 0.6);
  add("FUSE sequential 1 MiB reads (after open) vs tmpfs", mine.read_gbs, peer.read_gbs, gbs(mine.read_gbs),
      gbs(peer.read_gbs), 0.6);
  add("FUSE 4 KiB random reads vs tmpfs", mine.random_reads, peer.random_reads, rate(mine.random_reads, "/s"),
      rate(peer.random_reads, "/s"), 0.4);
  add(fmt::format("FUSE untar of {} small files vs tmpfs", tar_files), mine.untar, peer.untar,
      rate(mine.untar, "files/s"), rate(peer.untar, "files/s"), 0.5);
  t->add({settings, "-", "-", "-", "(report)", true});
  // What FUSE itself allows here: a filesystem that keeps names in a map and
  // throws data away, with the same settings, against tmpfs; and poise
  // against it (the share of the transport's best that poise reaches).
  if (null_figures) {
    struct Row {
      std::string what;
      double Figures::*figure;
      std::function<std::string(double)> shown;
    };
    const std::vector<Row> rows = {
        {"create", &Figures::create, [&](double v) { return rate(v, "/s"); }},
        {"unlink", &Figures::unlink, [&](double v) { return rate(v, "/s"); }},
        {"sequential 1 MiB writes", &Figures::write_gbs, gbs},
        {fmt::format("untar of {} small files", tar_files), &Figures::untar, [&](double v) { return rate(v, "files/s"); }},
    };
    auto report = [&](const std::string& what, const Row& row, const Figures& a, const Figures& b) {
      t->add({what, row.shown(a.*row.figure), row.shown(b.*row.figure),
              fmt::format("{:.0f}%", 100 * a.*row.figure / b.*row.figure), "(report)", true});
    };
    for (const Row& row : rows) {
      report("null FUSE filesystem " + row.what + " vs tmpfs (the ceiling)", row, *null_figures, peer);
    }
    for (const Row& row : rows) {
      report("FUSE " + row.what + ": poise vs the null FUSE filesystem", row, mine, *null_figures);
    }
  }
  // The same rows that writeback and splice could change, with each change.
  for (const auto& [variant, figures] : {std::pair{"-o writeback", writeback}, std::pair{"splice", spliced}}) {
    if (!figures) continue;
    const std::string tag = std::string(" [") + variant + "]";
    add("FUSE create vs tmpfs" + tag, figures->create, peer.create, rate(figures->create, "/s"),
        rate(peer.create, "/s"), 0.5);
    add("FUSE sequential 1 MiB writes vs tmpfs" + tag, figures->write_gbs, peer.write_gbs, gbs(figures->write_gbs),
        gbs(peer.write_gbs), 0.6);
    add("FUSE sequential 1 MiB reads (after open) vs tmpfs" + tag, figures->read_gbs, peer.read_gbs,
        gbs(figures->read_gbs), gbs(peer.read_gbs), 0.6);
    add("FUSE 4 KiB random reads vs tmpfs" + tag, figures->random_reads, peer.random_reads,
        rate(figures->random_reads, "/s"), rate(peer.random_reads, "/s"), 0.4);
    add(fmt::format("FUSE untar of {} small files vs tmpfs{}", tar_files, tag), figures->untar, peer.untar,
        rate(figures->untar, "files/s"), rate(peer.untar, "files/s"), 0.5);
  }
}

}  // namespace poise::bench
