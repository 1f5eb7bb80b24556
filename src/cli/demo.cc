// `poise demo`: the main job. On a temporary emulated device it shows, step by
// step and with checks, what poise does: DAX files, reflink copies that share
// blocks, copy-on-write, the reverse map, crash safety, direct mappings by
// several owners, a poisoned block and who was told, metadata rewritten off a
// failed block, the checker, a device removed under load with nothing lost,
// three processes sharing the filesystem through poise serve when memory fails,
// and ordinary programs (cp, dd) meeting a memory failure through a FUSE mount.
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cli/cli.h"
#include "cli/exit_codes.h"
#include "cli/sizes.h"
#include "fuse/mount.h"
#include "serve/server.h"

namespace poise::cli {

namespace {

struct DemoArgs {
  std::string dir;
  bool keep = false;
};

constexpr uint64_t kDemoDeviceBytes = 256ull << 20;

void step(int n, const std::string& title) { fmt::print("\n{}. {}\n", n, title); }

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// Owners of the block at `file_offset` of `path`, as the reverse map tells them.
std::string owners_of(Filesystem& fs, const std::string& path, uint64_t file_offset, uint64_t* device_offset) {
  auto ino = fs.lookup(path);
  auto map = fs.fsmap(0, fs.info().size_bytes);
  if (!ino || !map) return "?";
  for (const auto& r : *map) {
    if (r.owner != OwnerKind::File || r.ino != *ino) continue;
    if (file_offset < r.file_offset_bytes || file_offset >= r.file_offset_bytes + r.length_bytes) continue;
    *device_offset = r.device_offset_bytes + (file_offset - r.file_offset_bytes);
    auto at = fs.fsmap(*device_offset, 4096);
    std::vector<std::string> names;
    for (const auto& o : *at) {
      if (o.owner != OwnerKind::File) continue;
      auto p = fs.path_of(o.ino);
      names.push_back(fmt::format("{} @ {}", p ? *p : "?", o.file_offset_bytes));
    }
    return fmt::format("{} owner(s): {}", names.size(), fmt::join(names, ", "));
  }
  return "unmapped";
}

#define DEMO_TRY(expr, what)                                             \
  do {                                                                   \
    const auto& demo_result_ = (expr);                                   \
    if (!demo_result_.has_value()) return ::poise::cli::report(what, demo_result_.error()); \
  } while (0)

// Scene 10: a server on a thread of this process, three client processes
// (fork) that each map one file through it: /shared/a, its reflink /shared/b,
// and an unrelated /shared/c. A block of /shared/a fails: the two processes
// whose mappings show it are told at once and lose exactly that page; the
// third is untouched. Each process reports what it saw through a pipe.
int served_processes_scene(Filesystem& fs, Device& device, const std::string& dir, CheckReport* findings) {
  DEMO_TRY(fs.mkdir("/shared"), "mkdir");
  auto a = fs.create("/shared/a");
  DEMO_TRY(a, "create");
  DEMO_TRY(fs.write(*a, 0, bytes_of(std::string(8192, 'a'))), "write");
  auto b = fs.create("/shared/b");
  DEMO_TRY(b, "create");
  DEMO_TRY(fs.reflink(*a, *b), "reflink");
  auto c = fs.create("/shared/c");
  DEMO_TRY(c, "create");
  DEMO_TRY(fs.write(*c, 0, bytes_of(std::string(8192, 'c'))), "write");
  serve::ServerOptions options;
  options.socket_path = dir + "/demo.sock";
  options.log = nullptr;
  auto server = serve::Server::listen(fs, device, options);
  DEMO_TRY(server, "serve");
  int stop[2];
  if (::pipe(stop) != 0) return kExitFailure;
  std::thread serving([&] { (*server)->run(stop[0]); });
  struct Client {
    std::string path;
    pid_t pid = -1;
    int report = -1;  // the child's account, read when it is done
    int go = -1;
  };
  std::vector<Client> clients = {{"/shared/a"}, {"/shared/b"}, {"/shared/c"}};
  int ready[2];
  if (::pipe(ready) != 0) return kExitFailure;
  for (auto& client : clients) {
    int report[2], go[2];
    if (::pipe(report) != 0 || ::pipe(go) != 0) return kExitFailure;
    std::fflush(nullptr);
    client.pid = ::fork();
    if (client.pid == 0) {
      ::close(report[0]);
      ::close(go[1]);
      std::string said;
      auto remote = connect(options.socket_path);
      std::atomic<int> told{0};
      std::string told_text;
      std::mutex told_mutex;
      auto owner = std::make_shared<MapOwner>(MapOwner{"p", [&](const MappingEvent& e) {
                                                         std::lock_guard lock(told_mutex);
                                                         told_text = fmt::format("file bytes {}..{} ({})", e.file_offset,
                                                                                 e.file_offset + e.length, to_string(e.cause));
                                                         ++told;
                                                       }, nullptr});
      std::optional<Mapping> m;
      if (remote) {
        auto ino = (*remote)->lookup(client.path);
        if (ino) {
          auto mapped = (*remote)->map(*ino, 0, 8192, MapAccess::Read, owner);
          if (mapped) m = std::move(*mapped);
        }
      }
      (void)!::write(ready[1], "r", 1);
      char g;
      (void)!::read(go[0], &g, 1);
      if (!m) {
        said = "could not map its file";
      } else {
        for (int i = 0; i < 200 && told.load() == 0; ++i) ::usleep(5000);
        char first = 0, second = 0;
        auto r0 = guarded([&] { first = static_cast<char>(m->data()[0]); });
        auto r1 = guarded([&] { second = static_cast<char>(m->data()[4096]); });
        std::lock_guard lock(told_mutex);
        said = fmt::format("{}; reads page 0: {}; page 1: {}", told.load() ? "told of " + told_text : "told nothing",
                           r0 ? fmt::format("'{}'", first) : std::string(std::strerror(r0.error().code)),
                           r1 ? fmt::format("'{}'", second) : std::string(std::strerror(r1.error().code)));
      }
      (void)!::write(report[1], said.data(), said.size());
      std::fflush(nullptr);
      std::_Exit(0);
    }
    ::close(report[1]);
    ::close(go[0]);
    client.report = report[0];
    client.go = go[1];
  }
  ::close(ready[1]);
  // A client that died before it was ready must not hang the demo.
  size_t readies = 0;
  for (; readies < clients.size(); ++readies) {
    pollfd p{ready[0], POLLIN, 0};
    char r;
    if (::poll(&p, 1, 10000) != 1 || ::read(ready[0], &r, 1) != 1) break;
  }
  ::close(ready[0]);
  if (readies < clients.size()) {
    for (auto& client : clients) ::kill(client.pid, SIGKILL);
    for (auto& client : clients) ::waitpid(client.pid, nullptr, 0);
    findings->problems.push_back("a demo client process did not start");
    fmt::print("   WRONG: a client process did not start (bug!)\n");
    (void)!::write(stop[1], "x", 1);
    serving.join();
    server->reset();
    return kExitOk;
  }
  uint64_t dev = 0;
  auto map = fs.fsmap(0, device.size_bytes());
  DEMO_TRY(map, "fsmap");
  for (const auto& r : *map) {
    if (r.owner == OwnerKind::File && r.ino == *a && r.file_offset_bytes == 0) dev = r.device_offset_bytes;
  }
  fmt::print("   processes {}, {}, {} map /shared/a, its reflink /shared/b, and /shared/c through the server\n",
             clients[0].pid, clients[1].pid, clients[2].pid);
  fmt::print("   poisoning device bytes {}..{} (block 0 of /shared/a and /shared/b)\n", dev, dev + 4096);
  DEMO_TRY(device.inject_poison(dev, 4096), "inject-poison");
  DEMO_TRY(device.notify_failure(dev, 4096, FailureFlags::None), "memory failure");
  bool exact = true;
  for (auto& client : clients) {
    (void)!::write(client.go, "g", 1);
    std::string said(512, '\0');
    ssize_t n = 0, got = 0;
    for (;;) {  // until the client is done (at most 10 s between pieces)
      pollfd p{client.report, POLLIN, 0};
      if (::poll(&p, 1, 10000) != 1) {
        ::kill(client.pid, SIGKILL);
        break;
      }
      n = ::read(client.report, said.data() + got, said.size() - static_cast<size_t>(got));
      if (n <= 0) break;
      got += n;
    }
    said.resize(static_cast<size_t>(std::max<ssize_t>(got, 0)));
    ::waitpid(client.pid, nullptr, 0);
    ::close(client.report);
    ::close(client.go);
    fmt::print("   process {} ({}): {}\n", client.pid, client.path, said);
    const bool shares = client.path != "/shared/c";
    const bool was_told = said.find("told of file bytes 0..4096") != std::string::npos;
    const bool lost_page0 = said.find("page 0: Input/output error") != std::string::npos;
    const bool kept_page1 = said.find("page 1: '") != std::string::npos;
    exact = exact && was_told == shares && lost_page0 == shares && kept_page1;
  }
  fmt::print("   {}\n", exact ? "exactly the two processes that map the block were told and lost exactly that page"
                                : "WRONG: the wrong processes were told (bug!)");
  if (!exact) findings->problems.push_back("a failure notice reached the wrong processes");
  (void)!::write(stop[1], "x", 1);
  serving.join();
  server->reset();
  ::close(stop[0]);
  ::close(stop[1]);
  return kExitOk;
}

// Runs a shell command line; its output (both streams) and exit status.
std::pair<std::string, int> run_program(const std::string& command) {
  std::fflush(nullptr);
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return {std::strerror(errno), -1};
  std::string out;
  char buf[512];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  int status = ::pclose(pipe);
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return {out, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status)};
}

// Scene 11: the filesystem mounted through FUSE in this process; cp and dd
// (separate programs, knowing nothing of poise) meet memory failures. Under a
// file the kernel caches whole (the shell wrote it through the mount), the
// lost page is restored from the kernel's copy, which poise vouches for by
// checksum: nothing is lost. Under a file whose middle page the kernel never
// had, that page is lost: cp gets EIO, the pages on either side still read.
int fuse_scene(Filesystem& fs, Device& device, const std::string& dir, CheckReport* findings) {
  const std::string mnt = dir + "/mnt";
  ::mkdir(mnt.c_str(), 0755);
  fusemount::MountOptions options;
  options.dir = mnt;
  options.source = "poise-demo";
  options.cache_seconds = 3600;  // only poise's own invalidation can make the kernel forget
  auto mount = fusemount::Mount::start(fs, options);
  if (!mount.has_value()) {
    fmt::print("   (skipped: {}; the mount needs root, /dev/fuse and fuse3)\n", mount.error().message);
    ::rmdir(mnt.c_str());
    return kExitOk;
  }
  fs.set_event_listener([m = mount->get()](const FsEvent& e) { m->on_event(e); });
  struct StopListening {  // however this scene ends, the listener goes before the mount
    Filesystem& fs;
    ~StopListening() { fs.set_event_listener({}); }
  } stop_listening{fs};
  std::string text;
  for (int page = 0; page < 3; ++page) {
    std::string line = fmt::format("page {} of the report\n", page);
    text += line + std::string(4096 - line.size(), '.');
  }
  auto [wrote, wrote_code] = run_program(fmt::format("mkdir {0}/docs && printf '%s' '{1}' > {0}/docs/report.txt", mnt, text));
  auto [copied, cp_code] = run_program(fmt::format("cp {}/docs/report.txt {}/before.txt && head -c 20 {}/before.txt", mnt, dir, dir));
  fmt::print("   mounted on {} (FUSE); the shell wrote docs/report.txt (3 pages); cp copies it: exit {} (\"{}...\")\n",
             mnt, cp_code, copied);
  uint64_t dev = 0;
  std::string owners = owners_of(fs, "/docs/report.txt", 4096, &dev);
  fmt::print("   memory fails under its page 1 (device bytes {}..{}; the reverse map says {})\n", dev, dev + 4096, owners);
  DEMO_TRY(device.inject_poison(dev, 4096), "inject-poison");
  DEMO_TRY(device.notify_failure(dev, 4096, FailureFlags::None), "memory failure");
  (*mount)->drain_invalidations();
  // The kernel's copy comes back on a request of its own: wait for the restore.
  const InodeNumber report_ino = fs.lookup("/docs/report.txt").value_or(InodeNumber{});
  bool restored = false;
  for (int i = 0; i < 200 && !restored; ++i) {
    std::string page(4096, '\0');
    restored = fs.read(report_ino, 4096, {reinterpret_cast<std::byte*>(page.data()), page.size()}).has_value();
    if (!restored) ::usleep(10'000);
  }
  auto [cp_after, cp_after_code] = run_program(fmt::format("cmp {}/docs/report.txt {}/before.txt", mnt, dir));
  fmt::print("   the kernel held that page, and it matches what poise served: restored to good memory\n"
             "   from that copy ({}); cmp with the copy made before: exit {}\n",
             restored ? "poise reads the page again" : "NOT restored", cp_after_code);
  const bool restore_ok = wrote_code == 0 && cp_code == 0 && restored && cp_after_code == 0;

  // A file the kernel has no copy of: nothing can vouch for its lost page.
  auto ledger = fs.create("/docs/ledger.txt");
  const bool wrote_ledger =
      ledger.has_value() && fs.write(*ledger, 0, std::as_bytes(std::span<const char>(text))).has_value();
  owners = owners_of(fs, "/docs/ledger.txt", 4096, &dev);
  fmt::print("   docs/ledger.txt came through the API (the kernel has no copy); memory fails under its\n"
             "   page 1 ({}):\n", owners);
  DEMO_TRY(device.inject_poison(dev, 4096), "inject-poison");
  DEMO_TRY(device.notify_failure(dev, 4096, FailureFlags::None), "memory failure");
  (*mount)->drain_invalidations();
  auto [cp_lost, cp_lost_code] = run_program(fmt::format("cp {}/docs/ledger.txt {}/after.txt", mnt, dir));
  auto [first, first_code] = run_program(fmt::format("dd if={}/docs/ledger.txt bs=4096 count=1 status=none | head -c 20", mnt));
  auto [last, last_code] = run_program(
      fmt::format("dd if={}/docs/ledger.txt bs=4096 skip=2 count=1 status=none | head -c 20", mnt));
  fmt::print("   cp: exit {} ({})\n", cp_lost_code, cp_lost.substr(cp_lost.rfind(':') == std::string::npos ? 0 : cp_lost.rfind(':') + 2));
  fmt::print("   dd of page 0: \"{}...\"; dd of page 2: \"{}...\"\n", first, last);
  const bool exact = wrote_ledger && cp_lost_code != 0 &&
                     cp_lost.find("Input/output error") != std::string::npos &&
                     first.starts_with("page 0 of the report") && last.starts_with("page 2 of the report");
  fmt::print("   {}\n", restore_ok && exact ? "restored where a vouched copy existed; elsewhere exactly the lost page fails"
                                             : "WRONG: a page was lost that could be restored, an ordinary program "
                                               "read lost memory, or good pages were lost (bug!)");
  if (!restore_ok || !exact) findings->problems.push_back("the FUSE mount did not handle the memory failures exactly");
  fs.set_event_listener({});
  mount->reset();
  ::rmdir(mnt.c_str());
  ::unlink((dir + "/before.txt").c_str());
  ::unlink((dir + "/after.txt").c_str());
  return kExitOk;
}

int run_demo(const DemoArgs& args) {
  std::string dir = args.dir;
  if (dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr ? tmp : "/tmp") + "/poise-demo-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      eprint("poise: demo: cannot create a temporary directory: {}\n", std::strerror(errno));
      return kExitFailure;
    }
    dir = pattern;
  }
  std::string image = dir + "/demo.img";
  fmt::print("poise demo: a filesystem for byte-addressable memory, on an emulated {} device\n",
             human_size(kDemoDeviceBytes));
  fmt::print("(every figure below is read back from the filesystem, not printed from a script)\n");

  step(1, "Format an emulated memory device (a sparse file mapped into memory)");
  auto device = open_device(image, {CreateMode::CreateIfMissing, kDemoDeviceBytes});
  if (!device) return report("demo", device.error());
  DEMO_TRY(Filesystem::format(**device), "format");
  fmt::print("   {}: {}, persistence domain '{}'\n", image, (*device)->describe(), to_string((*device)->domain()));
  auto mounted = Filesystem::mount(**device);
  if (!mounted) return report("mount", mounted.error());
  std::unique_ptr<Filesystem> fs = std::move(*mounted);
  FsInfo fresh = fs->info();
  fmt::print("   {} free; metadata (superblocks, journal, checkpoint) uses {}\n", human_size(fresh.free_bytes),
             human_size(fresh.used_bytes));

  step(2, "Write files: data goes straight into device memory, no page cache");
  DEMO_TRY(fs->mkdir("/db"), "mkdir");
  DEMO_TRY(fs->mkdir("/logs"), "mkdir");
  std::string table(8 << 20, '\0');
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<char>('a' + (i / 4096) % 26);
  auto table_ino = fs->create("/db/table.dat");
  DEMO_TRY(table_ino, "create");
  DEMO_TRY(fs->write(*table_ino, 0, bytes_of(table)), "write");
  auto log_ino = fs->create("/logs/app.log");
  DEMO_TRY(log_ino, "create");
  DEMO_TRY(fs->write(*log_ino, 0, bytes_of("service started\n")), "write");
  uint64_t table_device = 0;
  owners_of(*fs, "/db/table.dat", 0, &table_device);
  fmt::print("   /db/table.dat: {} in {} block(s), first block at device offset {} ({}2 MiB aligned)\n",
             human_size(table.size()), fs->stat(*table_ino)->blocks, table_device,
             table_device % (2 << 20) == 0 ? "" : "not ");

  step(3, "Reflink: a copy that shares every block, no data copied");
  uint64_t used_before = fs->info().used_bytes;
  auto snap = fs->create("/db/snapshot.dat");
  DEMO_TRY(snap, "create");
  DEMO_TRY(fs->reflink(*table_ino, *snap), "reflink");
  uint64_t dev = 0;
  fmt::print("   /db/snapshot.dat = reflink of /db/table.dat: used space grew by {} bytes\n",
             fs->info().used_bytes - used_before);
  fmt::print("   reverse map, block at file offset 1 MiB: {}\n", owners_of(*fs, "/db/table.dat", 1 << 20, &dev));

  step(4, "Copy-on-write: writing the copy copies only the block written");
  used_before = fs->info().used_bytes;
  DEMO_TRY(fs->write(*snap, 1 << 20, bytes_of(std::string(4096, '#'))), "write");
  std::string check(table.size(), '\0');
  DEMO_TRY(fs->read(*table_ino, 0, {reinterpret_cast<std::byte*>(check.data()), check.size()}), "read");
  fmt::print("   wrote 4 KiB into the copy: used space grew by {} bytes; the original is {}\n",
             fs->info().used_bytes - used_before, check == table ? "unchanged (verified)" : "CHANGED (bug!)");
  uint64_t dev_a = 0, dev_b = 0;
  fmt::print("   now the original's block:  {} (device offset {})\n", owners_of(*fs, "/db/table.dat", 1 << 20, &dev_a), dev_a);
  fmt::print("   and the copy's block:      {} (device offset {})\n", owners_of(*fs, "/db/snapshot.dat", 1 << 20, &dev_b), dev_b);
  fmt::print("   the next block is still shared: {}\n", owners_of(*fs, "/db/table.dat", (1 << 20) + 4096, &dev));

  step(5, "Crash safety: every operation is durable when it returns");
  auto late = fs->create("/logs/after-crash.log");
  DEMO_TRY(late, "create");
  DEMO_TRY(fs->write(*late, 0, bytes_of("written just before the crash\n")), "write");
  DEMO_TRY(fs->rename("/logs/app.log", "/logs/app.log.1"), "rename");
  fs->shutdown();  // stop without a checkpoint or unmount, as a crash would
  fs.reset();
  fmt::print("   created a file, renamed another, then stopped without unmounting (a simulated crash)\n");
  mounted = Filesystem::mount(**device);
  if (!mounted) return report("mount after crash", mounted.error());
  fs = std::move(*mounted);
  std::string back(64, '\0');
  auto got = fs->read(*fs->lookup("/logs/after-crash.log"), 0, {reinterpret_cast<std::byte*>(back.data()), back.size()});
  back.resize(got.value_or(0));
  fmt::print("   mounted again (journal replayed): after-crash.log holds \"{}\", app.log.1 {}\n",
             back.substr(0, back.size() - 1), fs->lookup("/logs/app.log.1") ? "exists" : "is MISSING (bug!)");

  step(6, "Direct mappings, then memory fails: exactly the owners of a poisoned block are told");
  const uint64_t at = 2 << 20;  // a block of the table still shared with the snapshot
  uint64_t lost = 0;
  fmt::print("   the block at file offset 2 MiB has {}\n", owners_of(*fs, "/db/table.dat", at, &lost));
  std::mutex told_mutex;
  std::vector<std::string> told;
  auto owner = [&](const std::string& name) {
    return std::make_shared<MapOwner>(MapOwner{name, [&told_mutex, &told](const MappingEvent& e) {
                                                 std::lock_guard lock(told_mutex);
                                                 told.push_back(fmt::format("{} (file bytes {}..{}, {}{})", e.owner, e.file_offset,
                                                                            e.file_offset + e.length, to_string(e.cause),
                                                                            e.consumed ? ", its own access" : ""));
                                               }});
  };
  InodeNumber table_now = *fs->lookup("/db/table.dat"), snap_now = *fs->lookup("/db/snapshot.dat");
  auto db = fs->map(table_now, 0, 4 << 20, MapAccess::ReadWrite, owner("db-worker"));
  auto analytics = fs->map(table_now, 0, 4 << 20, MapAccess::Read, owner("analytics"));
  auto backup = fs->map(snap_now, 0, 4 << 20, MapAccess::Read, owner("backup"));
  auto logger = fs->map(*fs->lookup("/logs/app.log.1"), 0, 4096, MapAccess::Read, owner("log-tailer"));
  DEMO_TRY(db, "map");
  DEMO_TRY(analytics, "map");
  DEMO_TRY(backup, "map");
  DEMO_TRY(logger, "map");
  fmt::print("   four live mappings: db-worker and analytics map the table, backup maps the snapshot, log-tailer a log\n");
  fmt::print("   (each is one contiguous range of the file's own device memory: loads and stores, no copies)\n");
  DEMO_TRY((*device)->inject_poison(lost + 256, 64), "inject-poison");
  fmt::print("   poisoned 64 bytes of device memory at {} (as a failing DIMM or CXL module would)\n", lost + 256);
  char sink[16];
  std::byte* db_at = db->data() + at + 256;
  auto consumed = guarded([&] { std::memcpy(sink, db_at, sizeof sink); });
  fmt::print("   db-worker loads from it through its mapping: {}\n",
             consumed.has_value() ? "no error (bug!)" : "error, synchronously: " + consumed.error().message);
  for (const auto& t : told) fmt::print("   told: {}\n", t);
  fmt::print("   not told: log-tailer (it maps nothing that failed)\n");
  auto read_at = [&](const char* path, uint64_t offset) {
    std::string buf(4096, '\0');
    auto r = fs->read(*fs->lookup(path), offset, {reinterpret_cast<std::byte*>(buf.data()), buf.size()});
    return r.has_value() ? std::string("reads fine") : "fails: " + r.error().message;
  };
  fmt::print("   the snapshot at 2 MiB: {}\n", read_at("/db/snapshot.dat", at));
  fmt::print("   the table at 0:        {}\n", read_at("/db/table.dat", 0));
  auto marked = fs->fsmap(lost, 4096);
  bool fenced = false;
  for (const auto& r : *marked) fenced = fenced || r.owner == OwnerKind::Bad;
  fmt::print("   the reverse map marks device block {} bad: {}; it is recorded on media and never allocated again\n",
             lost / 4096, fenced ? "yes" : "NO (bug!)");
  DEMO_TRY(fs->write(table_now, at, bytes_of(std::string(4096, 'R'))), "rewrite");
  uint64_t dev_now = 0;
  owners_of(*fs, "/db/table.dat", at, &dev_now);
  fmt::print("   rewriting that whole block moves it to good memory (device offset {}): the table {}\n", dev_now,
             read_at("/db/table.dat", at));
  db->unmap();
  analytics->unmap();
  backup->unmap();
  logger->unmap();

  step(7, "Metadata on a failed block is rewritten from memory, not lost");
  uint64_t meta_at = 0;
  for (const auto& r : *fs->fsmap(0, fs->info().size_bytes)) {
    if (r.owner == OwnerKind::Metadata && r.metadata_kind == MetadataKind::InodeTable) meta_at = r.device_offset_bytes;
  }
  DEMO_TRY((*device)->notify_failure(meta_at, 4096, FailureFlags::None), "metadata failure");
  uint64_t meta_now = 0;
  for (const auto& r : *fs->fsmap(0, fs->info().size_bytes)) {
    if (r.owner == OwnerKind::Metadata && r.metadata_kind == MetadataKind::InodeTable) meta_now = r.device_offset_bytes;
  }
  fmt::print("   the inode table's block at device offset {} failed; the table now lives at {} and the\n"
             "   failed block is fenced off; every file is still there ({} inodes)\n",
             meta_at, meta_now, fs->check().inodes);

  step(8, "The checker verifies every invariant: tree, link counts, extents vs reverse map vs free space");
  CheckReport findings = fs->check();
  fmt::print("   {}: {} inodes, {} extents, {} blocks used of which {} shared and {} failed\n",
             findings.clean() ? "clean" : "PROBLEMS FOUND", findings.inodes, findings.extents, findings.used_blocks,
             findings.shared_blocks, findings.bad_blocks);
  for (const auto& note : findings.notes) fmt::print("   note: {}\n", note);

  step(9, "The device is removed under load: freeze, sync, revoke, notify; nothing acknowledged is lost");
  auto ledger = fs->create("/db/ledger");
  DEMO_TRY(ledger, "create");
  constexpr uint64_t kEntry = 16, kEntries = (2 << 20) / kEntry;  // API entries in the first 2 MiB
  DEMO_TRY(fs->truncate(*ledger, 4 << 20), "truncate");
  auto ledger_map = fs->map(*ledger, 0, 4 << 20, MapAccess::ReadWrite, owner("ledger-writer"));
  DEMO_TRY(ledger_map, "map");
  told.clear();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> api_acked{0}, mapped_stores{0};
  std::atomic<int> writer_errors{0};
  std::thread api_writer([&] {
    for (uint64_t n = 0; !stop && n < kEntries; ++n) {
      std::string entry = fmt::format("entry {:09}\n", n);
      if (!fs->write(*ledger, n * kEntry, bytes_of(entry)).has_value()) {
        ++writer_errors;
        return;
      }
      api_acked = n + 1;
    }
  });
  std::thread mapped_writer([&] {
    std::byte* base = ledger_map->data() + (2 << 20);
    for (uint64_t n = 0; !stop; ++n) {
      uint64_t value = n;
      if (!guarded([&] { std::memcpy(base + (n % 4096) * 8, &value, 8); }).has_value()) {
        ++writer_errors;
        return;
      }
      mapped_stores = n + 1;
    }
  });
  while ((api_acked < 1000 && api_acked < kEntries) || mapped_stores < 1000) std::this_thread::yield();
  DEMO_TRY((*device)->pre_remove(), "pre-remove");
  uint64_t acked_at_freeze = api_acked;
  fmt::print("   pre-remove: the filesystem froze with {} ledger writes acknowledged and {} stores made through\n"
             "   a mapping; both writers now wait\n", acked_at_freeze, mapped_stores.load());
  for (const auto& t : told) fmt::print("   told: {}\n", t);
  DEMO_TRY((*device)->remove(), "remove");
  stop = true;
  api_writer.join();
  mapped_writer.join();
  fmt::print("   removed: {} of 2 blocked writers got an error instead of writing; the filesystem shut down\n",
             writer_errors.load());
  ledger_map->unmap();
  fs.reset();
  device->reset();
  device = open_device(image);
  if (!device) return report("reopen", device.error());
  mounted = Filesystem::mount(**device);
  if (!mounted) return report("mount after removal", mounted.error());
  fs = std::move(*mounted);
  std::string last(kEntry, '\0');
  DEMO_TRY(fs->read(*fs->lookup("/db/ledger"), (acked_at_freeze - 1) * kEntry,
                    {reinterpret_cast<std::byte*>(last.data()), last.size()}),
           "read");
  bool intact = last == fmt::format("entry {:09}\n", acked_at_freeze - 1);
  findings = fs->check();
  fmt::print("   the image mounts again: the last acknowledged entry \"{}\" is {}; the checker says {}\n",
             last.substr(0, kEntry - 1), intact ? "there" : "MISSING (bug!)", findings.clean() ? "clean" : "PROBLEMS FOUND");
  if (!intact) findings.problems.push_back("an acknowledged write was lost");

  step(10, "poise serve: three processes map files through one server, and memory fails under a block two share");
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  // The same scene runs as tests under both (ServeMapping.*, with TSan on an
  // in-process client); forked demo clients of a sanitized process do not
  // survive the sanitizer's runtime, so the demo shows it in release builds.
  fmt::print("   (skipped in this sanitizer build; the release build shows it, the tests check it)\n");
#else
  if (int code = served_processes_scene(*fs, **device, dir, &findings); code != kExitOk) return code;
#endif

  step(11, "A FUSE mount: ordinary programs (cp, dd) meet memory failures: one page restored, one lost");
  if (int code = fuse_scene(*fs, **device, dir, &findings); code != kExitOk) return code;
  DEMO_TRY(fs->unmount(), "unmount");
  fs.reset();
  device->reset();

  if (args.keep || !args.dir.empty()) {
    fmt::print("\nThe image is kept. Try:\n   poise ls {} /db -l\n   poise fsmap {} --json\n   poise check {}\n",
               image, image, image);
  } else {
    ::unlink(image.c_str());
    ::unlink((image + ".poison").c_str());
    ::rmdir(dir.c_str());
    fmt::print("\n(the temporary image was removed; `poise demo --keep` keeps it to explore with ls, fsmap, check)\n");
  }
  return findings.clean() ? kExitOk : kExitCorrupt;
}

}  // namespace

void add_demo_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<DemoArgs>();
  CLI::App* sub = app.add_subcommand("demo", "Show what poise does, on a temporary emulated device");
  sub->add_option("--dir", args->dir, "Directory for the image (kept afterwards)");
  sub->add_flag("--keep", args->keep, "Keep the temporary image");
  sub->callback([run, args] { *run = [args] { return run_demo(*args); }; });
}

}  // namespace poise::cli
