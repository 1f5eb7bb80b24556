// Tests that need a real device-dax namespace and a real kernel's memory-failure
// handling: run inside the QEMU guest by tests/qemu/run.sh (see its header),
// never on the host. Each test skips unless POISE_DAX names a device-dax
// character device made with --align 4K (and, for one test, POISE_DAX_2M one
// made with the default 2 MiB alignment). Every device's contents are destroyed.
//
// How a real memory failure is caused here: madvise(MADV_HWPOISON) on a page of
// one's own mapping runs the kernel's memory_failure() for the page behind it,
// which delivers SIGBUS BUS_MCEERR_AR to the caller inside the call; writing a
// page frame number to debugfs hwpoison/corrupt-pfn from another process runs
// it too, and the kernel then tells the processes that map the page and asked
// for early notice (PR_MCE_KILL_EARLY) with BUS_MCEERR_AO. Both are the same
// kernel path a hardware machine check takes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "device/backends.h"
#include "fs/mapping_test_util.h"
#include "fs/test_util.h"
#include "poise/client.h"
#include "poise/filesystem.h"
#include "poise/mapping.h"

namespace poise {
namespace {

using testing::as_bytes;
using testing::write_file;
constexpr uint64_t kPage = 4096;

std::string env_path(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

#define NEEDS_DEVICE(var, name)                                         \
  const std::string var = env_path(name);                              \
  if (var.empty()) GTEST_SKIP() << name " names no device-dax device (run by tests/qemu/run.sh)"

std::string pattern(char c, size_t n) {
  std::string s(n, c);
  for (size_t i = 0; i < n; i += 512) s[i] = static_cast<char>('0' + (i / kPage) % 10);
  return s;
}

Result<std::string> read_range(Filesystem& fs, const std::string& path, uint64_t offset, size_t n) {
  InodeNumber ino = TRY(fs.lookup(path));
  std::string out(n, '\0');
  size_t got = TRY(fs.read(ino, offset, {reinterpret_cast<std::byte*>(out.data()), n}));
  out.resize(got);
  return out;
}

bool recorded_bad(Filesystem& fs, uint64_t device_offset) {
  auto map = fs.fsmap(device_offset, kPage);
  if (!map) return false;
  for (const auto& r : *map) {
    if (r.owner == OwnerKind::Bad) return true;
  }
  return false;
}

// The physical frame behind a virtual address of this process (root only).
uint64_t frame_of(const void* addr) {
  int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  uint64_t entry = 0;
  const off_t at = static_cast<off_t>(reinterpret_cast<uintptr_t>(addr) / kPage * sizeof entry);
  const bool ok = ::pread(fd, &entry, sizeof entry, at) == sizeof entry;
  ::close(fd);
  if (!ok || (entry & (1ull << 63)) == 0) return 0;  // not present
  return entry & ((1ull << 55) - 1);
}

using testing::Inbox;  // a collecting owner for mapping events

// --- the device itself ------------------------------------------------------

TEST(DaxGuest, TheDeviceMapsAt4KiBAndRoundTripsBytes) {
  NEEDS_DEVICE(path, "POISE_DAX");
  auto device = open_dax_device(path);
  ASSERT_TRUE(device.has_value()) << device.error().message;
  Device& d = **device;
  EXPECT_EQ(d.alignment_bytes(), kPage);
  EXPECT_GE(d.map_fd(), 3) << "direct mappings need the device's descriptor";
  EXPECT_NE(d.describe().find(path), std::string::npos);
  const uint64_t at = d.size_bytes() - 3 * kPage + 100;
  const std::string text = "bytes on a real device-dax namespace";
  d.write(at, text.data(), text.size());
  d.drain();
  std::string back(text.size(), '\0');
  ASSERT_TRUE(d.read(at, back.data(), back.size()).has_value());
  EXPECT_EQ(back, text);
  auto bad = d.bad_ranges();
  ASSERT_TRUE(bad.has_value()) << bad.error().message;
  std::printf("# %s: %llu bytes, alignment %llu, persistence domain %s, %zu kernel bad ranges\n", path.c_str(),
              static_cast<unsigned long long>(d.size_bytes()), static_cast<unsigned long long>(d.alignment_bytes()),
              to_string(d.domain()), bad->size());
}

TEST(DaxGuest, ATwoMiBAlignedNamespaceHoldsAFilesystemButRefusesDirectMappingsClearly) {
  NEEDS_DEVICE(path, "POISE_DAX_2M");
  auto device = open_dax_device(path);
  ASSERT_TRUE(device.has_value()) << device.error().message;
  EXPECT_EQ((*device)->alignment_bytes(), 2ull << 20);
  ASSERT_OK(Filesystem::format(**device));
  auto fs = Filesystem::mount(**device);
  ASSERT_TRUE(fs.has_value()) << fs.error().message;
  write_file(**fs, "/f", pattern('x', 3 * kPage));
  EXPECT_EQ(testing::read_file(**fs, "/f"), pattern('x', 3 * kPage));
  auto m = (*fs)->map(*(*fs)->lookup("/f"), 0, kPage, MapAccess::Read);
  ASSERT_FALSE(m.has_value());
  EXPECT_EQ(m.error().code, ENOTSUP);
  EXPECT_NE(m.error().message.find("alignment"), std::string::npos) << m.error().message;
  ASSERT_OK((*fs)->unmount());
}

// --- what the kernel delivers -----------------------------------------------

sigjmp_buf probe_env;
siginfo_t probe_info;
void probe_handler(int, siginfo_t* info, void*) {
  probe_info = *info;
  siglongjmp(probe_env, 1);
}

// Not poise at all: the raw kernel behaviour poise is built on, reported so the
// README can say what a real kernel delivered. In a child, so no handler of
// poise's is installed.
TEST(DaxGuest, TheKernelReportsAPoisonedDaxPageAsBusMceerrArAtThePage) {
  NEEDS_DEVICE(path, "POISE_DAX");
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int fd = ::open(path.c_str(), O_RDWR);
    const off_t at = 8 << 20;  // poise's tests format the device again afterwards
    auto* p = static_cast<volatile char*>(::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd, at));
    if (fd < 0 || p == MAP_FAILED) _exit(2);
    p[0] = 'k';  // fault it in: the kernel signals only where the page is mapped
    struct sigaction sa {};
    sa.sa_sigaction = probe_handler;
    sa.sa_flags = SA_SIGINFO;
    ::sigaction(SIGBUS, &sa, nullptr);
    long result[5] = {0, 0, 0, 0, 0};
    if (sigsetjmp(probe_env, 1) == 0) {
      ::madvise(const_cast<char*>(p), kPage, MADV_HWPOISON);
      result[0] = -1;  // no signal
    } else {
      result[0] = probe_info.si_code;
      result[1] = probe_info.si_addr_lsb;
      result[2] = reinterpret_cast<uintptr_t>(probe_info.si_addr) == reinterpret_cast<uintptr_t>(p);
    }
    // And after it: the page reads again (the kernel keeps no record for dax).
    if (sigsetjmp(probe_env, 1) == 0) {
      result[3] = p[0] == 'k' ? 1 : 2;
    } else {
      result[3] = -probe_info.si_code;
    }
    (void)!::write(pipe_fds[1], result, sizeof result);
    _exit(0);
  }
  ::close(pipe_fds[1]);
  long result[5] = {};
  ASSERT_EQ(::read(pipe_fds[0], result, sizeof result), static_cast<ssize_t>(sizeof result));
  int status = 0;
  ::waitpid(child, &status, 0);
  std::printf("# kernel delivered: si_code %ld (%s), si_addr_lsb %ld, si_addr %s the page; a later load %s\n",
              result[0], result[0] == BUS_MCEERR_AR ? "BUS_MCEERR_AR" : result[0] == BUS_MCEERR_AO ? "BUS_MCEERR_AO" : "?",
              result[1], result[2] ? "is" : "is not", result[3] == 1 ? "reads the old bytes" : "faults");
  EXPECT_EQ(result[0], BUS_MCEERR_AR);
  EXPECT_EQ(result[1], 12);
  EXPECT_EQ(result[2], 1);
}

// --- poise on a real memory failure -----------------------------------------

class DaxFs : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = env_path("POISE_DAX");
    if (path_.empty()) GTEST_SKIP() << "POISE_DAX names no device-dax device (run by tests/qemu/run.sh)";
    auto device = open_dax_device(path_);
    ASSERT_TRUE(device.has_value()) << device.error().message;
    device_ = std::move(*device);
    ASSERT_OK(Filesystem::format(*device_));
    remount();
  }
  void TearDown() override {
    if (fs_) (void)fs_->unmount();
  }
  void remount() {
    if (fs_) ASSERT_OK(fs_->unmount());
    fs_.reset();
    auto fs = Filesystem::mount(*device_);
    ASSERT_TRUE(fs.has_value()) << fs.error().message;
    fs_ = std::move(*fs);
  }
  std::string path_;
  std::unique_ptr<Device> device_;
  std::unique_ptr<Filesystem> fs_;
};

// The scenario: a file and its reflink clone, both mapped; a real kernel
// memory failure on one page of the file's mapping.
TEST_F(DaxFs, ARealMachineCheckInAMappingReachesEveryOwnerAndStaysRecorded) {
  write_file(*fs_, "/a", pattern('a', 4 * kPage));
  ASSERT_TRUE(fs_->create("/b").has_value());
  ASSERT_OK(fs_->reflink(*fs_->lookup("/a"), *fs_->lookup("/b")));
  const uint64_t lost = testing::device_offset_of(*fs_, "/a", kPage);
  ASSERT_EQ(testing::device_offset_of(*fs_, "/b", kPage), lost) << "the clone shares the block";
  Inbox inbox;
  auto ma = fs_->map(*fs_->lookup("/a"), 0, 4 * kPage, MapAccess::ReadWrite, inbox.owner("a"));
  auto mb = fs_->map(*fs_->lookup("/b"), 0, 4 * kPage, MapAccess::Read, inbox.owner("b"));
  ASSERT_TRUE(ma.has_value()) << ma.error().message;
  ASSERT_TRUE(mb.has_value()) << mb.error().message;
  ASSERT_EQ(*testing::load(ma->data(), 4 * kPage), pattern('a', 4 * kPage));
  ASSERT_EQ(*testing::load(mb->data(), 4 * kPage), pattern('a', 4 * kPage));

  std::byte* page = ma->data() + kPage;
  auto consumed = guarded([&] { ::madvise(page, kPage, MADV_HWPOISON); });
  ASSERT_FALSE(consumed.has_value()) << "the kernel's SIGBUS never reached poise's machine-check path";
  EXPECT_EQ(consumed.error().code, EIO) << consumed.error().message;
  std::printf("# the consumer got: %s\n", consumed.error().message.c_str());

  // The kernel may name the page at poise's own view of the device rather than
  // at this mapping; then the machine-check thread tells the owners, a moment later.
  for (int i = 0; i < 500 && (inbox.of("a").empty() || inbox.of("b").empty()); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (const char* owner : {"a", "b"}) {
    auto got = inbox.of(owner);
    ASSERT_EQ(got.size(), 1u) << owner << " was not told once";
    EXPECT_EQ(got[0].file_offset, kPage) << owner;
    EXPECT_EQ(got[0].length, kPage) << owner;
    EXPECT_EQ(got[0].cause, MappingCause::MemoryFailure);
    std::printf("# owner %s told: ino %llu, file bytes %llu..%llu, consumed %d\n", owner,
                static_cast<unsigned long long>(got[0].ino.value()), static_cast<unsigned long long>(got[0].file_offset),
                static_cast<unsigned long long>(got[0].file_offset + got[0].length), got[0].consumed ? 1 : 0);
  }
  EXPECT_TRUE(recorded_bad(*fs_, lost));
  // Exactly that page is gone, through both files and both mappings.
  for (const char* f : {"/a", "/b"}) {
    EXPECT_EQ(read_range(*fs_, f, kPage, 1).error().code, EIO) << f;
    EXPECT_EQ(*read_range(*fs_, f, 0, kPage), pattern('a', 4 * kPage).substr(0, kPage)) << f;
    EXPECT_EQ(*read_range(*fs_, f, 2 * kPage, 2 * kPage), pattern('a', 4 * kPage).substr(2 * kPage)) << f;
  }
  EXPECT_EQ(testing::load(mb->data() + kPage, 1).error().code, EIO);
  EXPECT_EQ(*testing::load(mb->data() + 2 * kPage, 1), pattern('a', 4 * kPage).substr(2 * kPage, 1));

  // The kernel forgets (the page reads again); poise's record keeps it bad.
  ma->unmap();
  mb->unmap();
  remount();
  EXPECT_TRUE(recorded_bad(*fs_, lost));
  EXPECT_EQ(read_range(*fs_, "/a", kPage, 1).error().code, EIO);
  EXPECT_EQ(read_range(*fs_, "/b", kPage, 1).error().code, EIO);
  CheckReport report = fs_->check();
  EXPECT_TRUE(report.problems.empty()) << report.problems.front();
}

// A failure the kernel finds without a consumer (corrupt-pfn from another
// process, as a patrol scrub would): poise asked for early notice, hears
// BUS_MCEERR_AO at its own view of the device, and its later reads of exactly
// that block fail while the rest reads.
TEST_F(DaxFs, AnAsynchronousKernelReportMakesPoiseOwnReadsFailForThatBlockOnly) {
  if (::access("/sys/kernel/debug/hwpoison/corrupt-pfn", W_OK) != 0) GTEST_SKIP() << "no hwpoison-inject";
  write_file(*fs_, "/c", pattern('c', 4 * kPage));
  ASSERT_EQ(testing::read_file(*fs_, "/c"), pattern('c', 4 * kPage));  // maps poise's view of the pages
  const uint64_t lost = testing::device_offset_of(*fs_, "/c", 2 * kPage);
  const uint64_t pfn = frame_of(device_->data() + lost);
  ASSERT_NE(pfn, 0u) << "poise's view of the block is not mapped";
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::ofstream("/sys/kernel/debug/hwpoison/corrupt-pfn") << "0x" << std::hex << pfn << std::endl;
    _exit(0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  for (int i = 0; i < 500 && !recorded_bad(*fs_, lost); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(recorded_bad(*fs_, lost)) << "the kernel's report never reached the filesystem";
  auto err = read_range(*fs_, "/c", 2 * kPage, kPage);
  ASSERT_FALSE(err.has_value());
  EXPECT_EQ(err.error().code, EIO);
  std::printf("# a read of the lost block: %s\n", err.error().message.c_str());
  EXPECT_EQ(*read_range(*fs_, "/c", 0, 2 * kPage), pattern('c', 4 * kPage).substr(0, 2 * kPage));
  EXPECT_EQ(*read_range(*fs_, "/c", 3 * kPage, kPage), pattern('c', 4 * kPage).substr(3 * kPage));
  remount();
  EXPECT_TRUE(recorded_bad(*fs_, lost));
}

// --- a client of poise serve meets a real machine check ---------------------

// Under `poise serve` on the device (POISE_SOCKET names its socket, /mapped a
// file of at least 16 KiB): the kernel signals the client whose mapping ran
// into the failed page, not the server. The client reports it; the server
// records the block and from then on every read of it fails, in every process.
TEST(DaxServed, AClientsRealMachineCheckReachesTheServer) {
  NEEDS_DEVICE(socket, "POISE_SOCKET");
  auto client = connect(socket);
  ASSERT_TRUE(client.has_value()) << client.error().message;
  Filesystem& fs = **client;
  auto ino = fs.lookup("/mapped");
  ASSERT_TRUE(ino.has_value()) << ino.error().message;
  std::string before(4 * kPage, '\0');
  ASSERT_EQ(*fs.read(*ino, 0, {reinterpret_cast<std::byte*>(before.data()), before.size()}), before.size());
  auto m = fs.map(*ino, 0, 4 * kPage, MapAccess::Read);
  ASSERT_TRUE(m.has_value()) << m.error().message;
  ASSERT_EQ(*testing::load(m->data(), 4 * kPage), before);
  auto consumed = guarded([&] { ::madvise(m->data() + kPage, kPage, MADV_HWPOISON); });
  ASSERT_FALSE(consumed.has_value()) << "the kernel's SIGBUS never reached the client's machine-check path";
  EXPECT_EQ(consumed.error().code, EIO);
  std::printf("# the client's consumer got: %s\n", consumed.error().message.c_str());
  Result<size_t> lost = size_t{0};
  for (int i = 0; i < 500; ++i) {
    char byte;
    lost = fs.read(*ino, kPage, {reinterpret_cast<std::byte*>(&byte), 1});
    if (!lost.has_value()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_FALSE(lost.has_value()) << "the server still serves the failed block";
  EXPECT_EQ(lost.error().code, EIO);
  std::printf("# through the server afterwards: %s\n", lost.error().message.c_str());
  std::string rest(2 * kPage, '\0');
  ASSERT_EQ(*fs.read(*ino, 2 * kPage, {reinterpret_cast<std::byte*>(rest.data()), rest.size()}), rest.size());
  EXPECT_EQ(rest, before.substr(2 * kPage));
  m->unmap();
}

// A pin through the server reads the device straight through the client's
// read-only view of it; a real machine check there is the client's too. The
// pin shows the file's bytes; the consumer gets EIO in guarded(); the server
// records the block (pages 2 and 3 of /mapped: the test above took page 1).
TEST(DaxServed, ARealMachineCheckInAClientsPinReachesTheServer) {
  NEEDS_DEVICE(socket, "POISE_SOCKET");
  auto client = connect(socket);
  ASSERT_TRUE(client.has_value()) << client.error().message;
  Filesystem& fs = **client;
  auto ino = fs.lookup("/mapped");
  ASSERT_TRUE(ino.has_value()) << ino.error().message;
  std::string before(2 * kPage, '\0');
  ASSERT_EQ(*fs.read(*ino, 2 * kPage, {reinterpret_cast<std::byte*>(before.data()), before.size()}), before.size());
  auto pin = fs.pin(*ino, 2 * kPage, 2 * kPage);
  ASSERT_TRUE(pin.has_value()) << pin.error().message;
  ASSERT_EQ(pin->segments().size(), 1u);
  const std::byte* shown = pin->segments()[0].data();
  ASSERT_EQ(reinterpret_cast<uintptr_t>(shown) % kPage, 0u);
  ASSERT_EQ(*testing::load(shown, 2 * kPage), before);
  auto consumed = guarded([&] { ::madvise(const_cast<std::byte*>(shown) + kPage, kPage, MADV_HWPOISON); });
  ASSERT_FALSE(consumed.has_value()) << "the kernel's SIGBUS in a pinned page never reached the client's machine-check path";
  EXPECT_EQ(consumed.error().code, EIO);
  std::printf("# the pin's reader got: %s\n", consumed.error().message.c_str());
  pin->release();
  Result<size_t> lost = size_t{0};
  for (int i = 0; i < 500; ++i) {
    char byte;
    lost = fs.read(*ino, 3 * kPage, {reinterpret_cast<std::byte*>(&byte), 1});
    if (!lost.has_value()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_FALSE(lost.has_value()) << "the server still serves the block that failed under a pin";
  EXPECT_EQ(lost.error().code, EIO);
  std::string page2(kPage, '\0');
  ASSERT_EQ(*fs.read(*ino, 2 * kPage, {reinterpret_cast<std::byte*>(page2.data()), page2.size()}), page2.size());
  EXPECT_EQ(page2, before.substr(0, kPage));
  EXPECT_ERRNO(fs.pin(*ino, 3 * kPage, 10), EIO);
}

}  // namespace
}  // namespace poise
