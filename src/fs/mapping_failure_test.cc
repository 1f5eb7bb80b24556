// Memory failure in direct mappings (DESIGN flow 3; invariants I3, I5): a
// failed block tells exactly the owners of that page and nobody else, machine
// checks (synchronous, asynchronous, in a forked child) are routed through the
// same path, and the fault handler chains to the application's own handlers
// and gives them the fields the kernel would.
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "base/random.h"
#include "fs/mapping_test_util.h"

namespace poise {
namespace {
using namespace poise::testing;  // NOLINT(google-build-using-namespace)

// The kernel's DAX memory-failure test, in poise: two owners map file A, a
// third maps its reflinked copy B; poison one shared block.
TEST_F(MappingTest, PoisonedSharedBlockTellsExactlyTheOwnersOfThatPage) {
  write_file(*fs_, "/a", pattern('0') + pattern('1') + pattern('2'));
  ASSERT_OK(fs_->create("/b"));
  ASSERT_OK(fs_->reflink(ino("/a"), ino("/b")));
  write_file(*fs_, "/c", pattern('c', 2 * kPage));
  Inbox inbox;
  Mapping a1 = map("/a", 0, 3 * kPage, MapAccess::Read, inbox.owner("a1"));
  Mapping a2 = map("/a", 0, 3 * kPage, MapAccess::ReadWrite, inbox.owner("a2"));
  Mapping b1 = map("/b", 0, 3 * kPage, MapAccess::Read, inbox.owner("b1"));
  Mapping a_other = map("/a", 2 * kPage, kPage, MapAccess::Read, inbox.owner("a-other-page"));
  Mapping c1 = map("/c", 0, 2 * kPage, MapAccess::Read, inbox.owner("c1"));
  uint64_t lost = device_offset_of(*fs_, "/a", kPage);

  ASSERT_OK(device_->inject_poison(lost + 64, 64));
  // a1 consumes it: its access fails synchronously with the file bytes.
  auto consumed = load(a1.data() + kPage + 64, 8);
  ASSERT_FALSE(consumed.has_value());
  EXPECT_EQ(consumed.error().code, EIO);
  EXPECT_NE(consumed.error().message.find("4096..8192"), std::string::npos) << consumed.error().message;

  for (const char* name : {"a1", "a2", "b1"}) {
    auto got = inbox.of(name);
    ASSERT_EQ(got.size(), 1u) << name;
    EXPECT_EQ(got[0].file_offset, kPage) << name;
    EXPECT_EQ(got[0].length, kPage) << name;
    EXPECT_EQ(got[0].cause, MappingCause::MemoryFailure);
    EXPECT_EQ(got[0].consumed, std::string(name) == "a1") << name;
  }
  EXPECT_TRUE(inbox.of("a-other-page").empty());
  EXPECT_TRUE(inbox.of("c1").empty());
  // Every mapping of the page now fails; every other page works.
  EXPECT_EQ(load(a2.data() + kPage, 1).error().code, EIO);
  EXPECT_EQ(load(b1.data() + kPage + 4000, 1).error().code, EIO);
  EXPECT_EQ(*load(b1.data(), 2), "00");
  EXPECT_EQ(*load(a_other.data(), 2), "22");
  EXPECT_EQ(*load(c1.data(), 2), "cc");
  EXPECT_EQ(read_range(*fs_, "/a", kPage, 10).error().code, EIO);
  EXPECT_EQ(read_range(*fs_, "/b", kPage, 10).error().code, EIO);
  EXPECT_EQ(*read_range(*fs_, "/b", 2 * kPage, 2), "22");
  expect_clean();
  // Rewriting the whole block through the API relocates it: the mapping shows it.
  write_file(*fs_, "/a", pattern('N'), kPage);
  EXPECT_EQ(*load(a2.data() + kPage, 2), "NN");
  EXPECT_EQ(load(b1.data() + kPage, 1).error().code, EIO);  // B still lost it
  for (Mapping* m : {&a1, &a2, &b1, &a_other, &c1}) m->unmap();
  remount();
  EXPECT_EQ(read_range(*fs_, "/b", kPage, 10).error().code, EIO);  // I5: still known after remount
  EXPECT_EQ(*read_range(*fs_, "/a", kPage, 2), "NN");
}

TEST_F(MappingTest, PoisonNobodyMapsIsRecordedAndTellsNoOne) {
  write_file(*fs_, "/quiet", pattern('q', 2 * kPage));
  write_file(*fs_, "/busy", pattern('b', 2 * kPage));
  Inbox inbox;
  Mapping busy = map("/busy", 0, 2 * kPage, MapAccess::ReadWrite, inbox.owner("busy"));
  ASSERT_OK(device_->notify_failure(device_offset_of(*fs_, "/quiet", kPage), kPage, FailureFlags::MustKill));
  EXPECT_EQ(read_range(*fs_, "/quiet", kPage, 1).error().code, EIO);
  EXPECT_EQ(*read_range(*fs_, "/quiet", 0, 2), "qq");
  EXPECT_TRUE(inbox.of("busy").empty());
  EXPECT_EQ(*load(busy.data() + kPage, 2), "bb");
  EXPECT_EQ(fs_->check().bad_blocks, 1u);
}

// The failure handler locks and tells only files that have mappings; a mapping
// being made meanwhile must still never show the lost page: those registered
// before the failure are told, those after see it lost in their layout.
TEST_F(MappingTest, MappingsMadeWhileMemoryFailsNeverShowTheLostPage) {
  write_file(*fs_, "/f", pattern('f', 2 * kPage));
  const uint64_t lost = device_offset_of(*fs_, "/f", kPage);
  Inbox inbox;
  std::vector<Mapping> maps;
  std::atomic<int> made{0};
  std::atomic<bool> go{false};
  std::thread mapper([&] {
    while (!go.load()) std::this_thread::yield();
    for (int i = 0; i < 200; ++i) {
      maps.push_back(map("/f", 0, 2 * kPage, MapAccess::Read, inbox.owner("m" + std::to_string(i))));
      made.store(i + 1);
    }
  });
  go.store(true);
  while (made.load() < 20) std::this_thread::yield();
  const int made_before = made.load();  // these existed before the failure began
  ASSERT_OK(device_->notify_failure(lost, kPage, FailureFlags::None));
  mapper.join();
  ASSERT_EQ(maps.size(), 200u);
  for (int i = 0; i < 200; ++i) {
    auto got = load(maps[i].data() + kPage, 1);
    ASSERT_FALSE(got.has_value()) << "mapping " << i << " shows the lost page";
    EXPECT_EQ(got.error().code, EIO) << i;
    EXPECT_EQ(*load(maps[i].data(), 2), "ff") << i;
    if (i < made_before) {
      EXPECT_EQ(inbox.of("m" + std::to_string(i)).size(), 1u) << "mapping " << i << " was not told";
    }
  }
  for (Mapping& m : maps) m.unmap();
  expect_clean();
}

// A real machine check arrives as SIGBUS with BUS_MCEERR_AR at the address; a
// crafted one (rt_tgsigqueueinfo to this thread) takes the same path.
TEST_F(MappingTest, MachineCheckSigbusBecomesARangedNotification) {
  write_file(*fs_, "/m", pattern('m', 4 * kPage));
  Inbox inbox;
  Mapping m = map("/m", 0, 4 * kPage, MapAccess::Read, inbox.owner("m"));
  std::byte* target = m.data() + 2 * kPage + 123;
  auto raised = guarded([&] {
    siginfo_t si;
    std::memset(&si, 0, sizeof si);
    si.si_signo = SIGBUS;
    si.si_code = BUS_MCEERR_AR;
    si.si_addr = target;
    si.si_addr_lsb = 12;
    ::syscall(SYS_rt_tgsigqueueinfo, ::getpid(), ::gettid(), SIGBUS, &si);
  });
  ASSERT_FALSE(raised.has_value());
  EXPECT_EQ(raised.error().code, EIO);
  auto got = inbox.of("m");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].file_offset, 2 * kPage);
  EXPECT_EQ(got[0].length, kPage);
  EXPECT_TRUE(got[0].consumed);
  EXPECT_EQ(read_range(*fs_, "/m", 2 * kPage, 1).error().code, EIO);
  EXPECT_EQ(*read_range(*fs_, "/m", 3 * kPage, 1), "m");
}

// An asynchronous machine check (BUS_MCEERR_AO: the memory failed, nobody
// consumed it yet) may interrupt a thread holding any lock: the handler only
// queues it and returns at once; a poise thread runs the failure flow, which
// revokes the page and tells its owner (defect 3).
TEST_F(MappingTest, AnAsynchronousMachineCheckIsHandledByAPoiseThread) {
  write_file(*fs_, "/ao", pattern('a', 4 * kPage));
  Inbox inbox;
  std::atomic<bool> told_on_this_thread{false};
  const std::thread::id self_id = std::this_thread::get_id();
  auto owner = std::make_shared<MapOwner>(MapOwner{"ao", [&](const MappingEvent& e) {
    if (std::this_thread::get_id() == self_id) told_on_this_thread = true;
    inbox.owner("ao")->on_event(e);
  }});
  Mapping m = map("/ao", 0, 4 * kPage, MapAccess::Read, owner);
  const uint64_t lost = device_offset_of(*fs_, "/ao", kPage);
  siginfo_t si;
  std::memset(&si, 0, sizeof si);
  si.si_signo = SIGBUS;
  si.si_code = BUS_MCEERR_AO;
  si.si_addr = m.data() + kPage + 7;
  si.si_addr_lsb = 12;
  const pid_t self = ::gettid();
  ASSERT_EQ(::syscall(SYS_rt_tgsigqueueinfo, ::getpid(), self, SIGBUS, &si), 0);
  // The handler returned (we are here); the notice comes from another thread.
  for (int i = 0; i < 500 && inbox.of("ao").empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  auto got = inbox.of("ao");
  ASSERT_EQ(got.size(), 1u) << "the owner was never told";
  EXPECT_EQ(got[0].file_offset, kPage);
  EXPECT_FALSE(got[0].consumed) << "nobody consumed it: an early notice";
  EXPECT_FALSE(told_on_this_thread) << "the failure flow ran inside the signal handler";
  bool bad = false;
  for (const auto& r : *fs_->fsmap(lost, kPage)) bad |= r.owner == OwnerKind::Bad;
  EXPECT_TRUE(bad);
  EXPECT_EQ(*read_range(*fs_, "/ao", 0, 1), "a");
}

// On real memory the kernel names a failed page at the first mapping of it that
// it finds in the process, which may be the filesystem's own view of the device
// rather than the file mapping that consumed it (seen on a real device-dax in
// tests/qemu). Such a machine check still fails the access with EIO, and the
// device is told from the machine-check thread: the block is recorded bad and
// every owner hears of it. Before, the process died of it.
TEST_F(MappingTest, AMachineCheckNamedAtTheDevicesOwnViewReachesTheFilesystem) {
  device_->set_reports_machine_checks(true);
  remount();  // a mount of real memory watches the device's view
  write_file(*fs_, "/v", pattern('v', 4 * kPage));
  Inbox inbox;
  Mapping m = map("/v", 0, 4 * kPage, MapAccess::Read, inbox.owner("v"));
  ASSERT_EQ(*load(m.data(), 4 * kPage), pattern('v', 4 * kPage));
  const uint64_t lost = device_offset_of(*fs_, "/v", kPage);
  const uint64_t early = device_offset_of(*fs_, "/v", 3 * kPage);
  auto raise = [&](uint64_t device_offset, int code) {
    siginfo_t si;
    std::memset(&si, 0, sizeof si);
    si.si_signo = SIGBUS;
    si.si_code = code;
    si.si_addr = device_->data() + device_offset + 99;
    si.si_addr_lsb = 12;
    ::syscall(SYS_rt_tgsigqueueinfo, ::getpid(), ::gettid(), SIGBUS, &si);
  };
  auto consumed = guarded([&] { raise(lost, BUS_MCEERR_AR); });
  ASSERT_FALSE(consumed.has_value()) << "the access went on as if nothing failed";
  EXPECT_EQ(consumed.error().code, EIO);
  auto bad_at = [&](uint64_t device_offset) {
    for (const auto& r : *fs_->fsmap(device_offset, kPage)) {
      if (r.owner == OwnerKind::Bad) return true;
    }
    return false;
  };
  // Recorded first, then revoked and told: wait for the owner's notice too.
  for (int i = 0; i < 500 && (!bad_at(lost) || inbox.of("v").empty()); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(bad_at(lost));
  EXPECT_FALSE(bad_at(lost + kPage)) << "an address inside the page marked the next block too";
  auto got = inbox.of("v");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].file_offset, kPage);
  EXPECT_EQ(got[0].length, kPage);
  EXPECT_EQ(load(m.data() + kPage, 1).error().code, EIO);
  EXPECT_EQ(read_range(*fs_, "/v", kPage, 1).error().code, EIO);

  // Asynchronous at the view: queued, handled by the poise thread.
  raise(early, BUS_MCEERR_AO);
  for (int i = 0; i < 500 && !bad_at(early); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(bad_at(early));
  EXPECT_FALSE(bad_at(early + kPage)) << "an unaligned address marked the next block too";
  EXPECT_EQ(read_range(*fs_, "/v", 3 * kPage, 1).error().code, EIO);
  EXPECT_EQ(*read_range(*fs_, "/v", 2 * kPage, 1), pattern('v', 4 * kPage).substr(2 * kPage, 1));
  m.unmap();
  // After the unmount nothing is watched: the device may go.
  remount();
  EXPECT_TRUE(bad_at(lost));
}

// The same failure told twice (a client's report and the kernel's early notice
// to the server, both seen under QEMU) is one failure: one event, each owner
// told once.
TEST_F(MappingTest, AFailureToldTwiceIsReportedOnce) {
  write_file(*fs_, "/twice", pattern('t', 2 * kPage));
  Inbox inbox;
  Mapping m = map("/twice", 0, 2 * kPage, MapAccess::Read, inbox.owner("t"));
  std::atomic<int> events{0};
  fs_->set_event_listener([&](const FsEvent& e) { events += e.kind == FsEvent::Kind::MemoryFailure; });
  const uint64_t lost = device_offset_of(*fs_, "/twice", kPage);
  ASSERT_OK(device_->notify_failure(lost, kPage, FailureFlags::None));
  ASSERT_OK(device_->notify_failure(lost + 100, 50, FailureFlags::None));
  EXPECT_EQ(events.load(), 1);
  EXPECT_EQ(inbox.of("t").size(), 1u);
  // A range that is only partly known is news: it is reported.
  ASSERT_OK(device_->notify_failure(lost - kPage, 2 * kPage, FailureFlags::None));
  EXPECT_EQ(events.load(), 2);
  fs_->set_event_listener(nullptr);
}

// A child made by fork() has none of its parent's threads: one that mounts and
// maps starts a machine-check thread of its own, so an asynchronous machine
// check in the child is still handled (before, the parent's "started once"
// kept the child from ever starting one, and the notice was lost).
// Release builds only: the sanitizers' runtimes and fork() of this threaded
// test process do not mix (as for the forked clients of serve_test).
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
TEST_F(MappingTest, AChildMadeByForkHearsAsynchronousMachineChecksInItsOwnMappings) {
  write_file(*fs_, "/parent", pattern('p'));
  Mapping started = map("/parent", 0, kPage, MapAccess::Read);  // the parent's thread runs
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    started = Mapping();  // (the parent's device memory is not the child's)
    MemoryDevice device(64ull << 20, MemoryDevice::Backing::Shared);
    if (!Filesystem::format(device).has_value()) _exit(2);
    auto fs = Filesystem::mount(device);
    if (!fs) _exit(3);
    auto ino = (*fs)->create("/c");
    if (!ino || !(*fs)->write(*ino, 0, as_bytes(pattern('c'))).has_value()) _exit(4);
    std::atomic<bool> told{false};
    auto owner = std::make_shared<MapOwner>(MapOwner{"child", [&](const MappingEvent&) { told = true; }});
    auto m = (*fs)->map(*ino, 0, kPage, MapAccess::Read, owner);
    if (!m) _exit(5);
    siginfo_t si;
    std::memset(&si, 0, sizeof si);
    si.si_signo = SIGBUS;
    si.si_code = BUS_MCEERR_AO;
    si.si_addr = m->data();
    si.si_addr_lsb = 12;
    ::syscall(SYS_rt_tgsigqueueinfo, ::getpid(), ::gettid(), SIGBUS, &si);
    for (int i = 0; i < 500 && !told; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    _exit(told ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: the child's owner was never told";
}
#endif

// Not MappingTest: its SetUp would install poise's handler before the test's own.
TEST(FaultHandler, SignalsForOtherAddressesGoToTheHandlerInstalledBefore) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // a fresh process: our handler installs after the test's
  EXPECT_EXIT(
      {
        struct sigaction sa;
        std::memset(&sa, 0, sizeof sa);
        sa.sa_handler = [](int) { std::_Exit(42); };
        ::sigaction(SIGBUS, &sa, nullptr);
        MemoryDevice device(64ull << 20, MemoryDevice::Backing::Shared);
        (void)Filesystem::format(device);
        auto fs = Filesystem::mount(device);  // installs poise's handler, chaining to ours
        static char not_poise[64];
        siginfo_t si;
        std::memset(&si, 0, sizeof si);
        si.si_signo = SIGBUS;
        si.si_code = BUS_MCEERR_AR;
        si.si_addr = not_poise;
        ::syscall(SYS_rt_tgsigqueueinfo, ::getpid(), ::gettid(), SIGBUS, &si);
        std::_Exit(1);
      },
      ::testing::ExitedWithCode(42), "");
}

// A synchronous fault that is not poise's, with SIGSEGV ignored before poise
// installed its handler: the kernel would force the default action (returning
// would run the access again, forever), and so does poise (defect 7).
TEST(FaultHandler, AnIgnoredSegvStillEndsAFaultThatIsNotPoises) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto body = [] {
    ::signal(SIGSEGV, SIG_IGN);
    ::alarm(20);  // a fault retried forever ends here instead, by SIGALRM
    MemoryDevice device(64ull << 20, MemoryDevice::Backing::Shared);
    (void)Filesystem::format(device);
    auto fs = Filesystem::mount(device);  // installs poise's handler over SIG_IGN
    void* p = ::mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    volatile char c = *static_cast<volatile char*>(p);
    (void)c;
    std::_Exit(0);
  };
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  EXPECT_DEATH(body(), "");  // the sanitizer reports the SEGV itself
#else
  EXPECT_EXIT(body(), ::testing::KilledBySignal(SIGSEGV), "");
#endif
}

// What an application's own SIGBUS handler receives from poise for an access
// outside guarded(), field by field, as the kernel fills them (seen on a real
// device-dax in tests/qemu: BUS_MCEERR_AR, si_addr_lsb 12): lost memory is
// BUS_MCEERR_AR with si_addr_lsb 12 at the accessed address; past the end of
// file is BUS_ADRERR (defect 9: no test looked at the si_code before).
std::atomic<uintptr_t> expected_sigbus_addr{0};
void report_sigbus_fields(int, siginfo_t* info, void*) {
  int code = 10;
  if (info->si_code == BUS_MCEERR_AR) code += 1;
  if (info->si_code == BUS_ADRERR) code += 8;
  if (info->si_addr_lsb == (info->si_code == BUS_MCEERR_AR ? 12 : 0)) code += 2;
  if (reinterpret_cast<uintptr_t>(info->si_addr) == expected_sigbus_addr.load()) code += 4;
  std::_Exit(code);
}

TEST(FaultHandler, AnApplicationsHandlerGetsTheSigbusFieldsTheKernelWouldGive) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto body = [](bool lost_memory) {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = report_sigbus_fields;
    sa.sa_flags = SA_SIGINFO;
    ::sigaction(SIGBUS, &sa, nullptr);
    MemoryDevice device(64ull << 20, MemoryDevice::Backing::Shared);
    (void)Filesystem::format(device);
    auto fs = Filesystem::mount(device);  // poise's handler chains to the application's
    write_file(**fs, "/f", pattern('f', kPage));
    auto m = (*fs)->map(*(*fs)->lookup("/f"), 0, 2 * kPage, MapAccess::Read);
    if (lost_memory) (void)device.notify_failure(device_offset_of(**fs, "/f", 0), kPage, FailureFlags::None);
    const std::byte* at = m->data() + (lost_memory ? 123 : kPage + 5);  // page 1 lies past the end of file
    expected_sigbus_addr = reinterpret_cast<uintptr_t>(at);
    volatile char c = static_cast<char>(*at);
    (void)c;
    std::_Exit(1);
  };
  EXPECT_EXIT(body(true), ::testing::ExitedWithCode(17), "") << "BUS_MCEERR_AR, lsb 12, the address";
  EXPECT_EXIT(body(false), ::testing::ExitedWithCode(24), "") << "BUS_ADRERR, lsb 0, the address";
}

TEST_F(MappingTest, AFailedAccessOutsideGuardedIsSigbusLikeTheKernels) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  write_file(*fs_, "/s", pattern('s'));
  Mapping m = map("/s", 0, 2 * kPage, MapAccess::Read);  // page 1 lies past the end of file
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // The sanitizer's own SIGBUS handler reports the signal and stops the process.
  EXPECT_DEATH({ volatile char c = static_cast<char>(m.data()[kPage]); (void)c; }, "BUS");
#else
  EXPECT_EXIT({ volatile char c = static_cast<char>(m.data()[kPage]); (void)c; std::_Exit(0); },
              ::testing::KilledBySignal(SIGBUS), "");
#endif
}

// I4 and I7: pre-remove while threads store through the API and through
// mappings. Nothing reaches the device after the freeze; everything fsync'd
// before is there; blocked writers fail after removal.
// A read-only mount hears of memory failure and removal as a read-write one
// does: its mappings lose exactly the failed page, every owner is told of the
// removal, and after it no mapped read reaches the device.
TEST_F(MappingTest, AReadOnlyMountRevokesAndNotifiesOnFailureAndRemoval) {
  write_file(*fs_, "/r", pattern('r', 2 * kPage));
  uint64_t lost = device_offset_of(*fs_, "/r", kPage);
  ASSERT_OK(fs_->unmount());
  fs_.reset();
  MountOptions ro;
  ro.mode = MountMode::ReadOnly;
  auto mounted = Filesystem::mount(*device_, ro);
  ASSERT_OK(mounted);
  std::unique_ptr<Filesystem> fs = std::move(*mounted);
  Inbox inbox;
  auto m = fs->map(*fs->lookup("/r"), 0, 2 * kPage, MapAccess::Read, inbox.owner("reader"));
  ASSERT_OK(m);
  EXPECT_EQ(*load(m->data() + kPage, 4), "rrrr");
  ASSERT_OK(device_->notify_failure(lost, kPage, FailureFlags::None));
  auto told = inbox.of("reader");
  ASSERT_EQ(told.size(), 1u);
  EXPECT_EQ(told[0].cause, MappingCause::MemoryFailure);
  EXPECT_EQ(told[0].file_offset, kPage);
  EXPECT_EQ(load(m->data() + kPage, 4).error().code, EIO) << "the lost page still reads";
  EXPECT_EQ(*load(m->data(), 4), "rrrr") << "only the lost page is revoked";
  ASSERT_OK(device_->pre_remove());  // failed before: no filesystem held the device
  ASSERT_EQ(inbox.of("reader").size(), 2u);
  EXPECT_EQ(inbox.of("reader")[1].cause, MappingCause::DeviceRemoval);
  ASSERT_OK(device_->remove());
  EXPECT_FALSE(load(m->data(), 4).has_value()) << "a mapped read reached a removed device";
  m->unmap();
}


}  // namespace
}  // namespace poise
