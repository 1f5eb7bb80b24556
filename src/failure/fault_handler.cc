#include "failure/fault_handler.h"

#include <setjmp.h>
#include <signal.h>
#include <ucontext.h>

#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <utility>
#include <thread>

#include "base/safe_copy.h"
#include "base/signal_chain.h"
#include "poise/device.h"
#include "mapping/address_index.h"
#include "mapping/registry.h"

#if defined(__SANITIZE_THREAD__)
// TSan flags any allocation inside a signal handler, a rule made for
// asynchronous signals. poise's faults are synchronous (see fault_handler.h):
// the faulting thread is in application code touching a mapping, so handling
// the fault there, allocation included, is by design.
// atexit_sleep_ms=0: poise's machine-check thread never ends, and TSan would
// otherwise wait a second for it at every exit.
// die_after_fork=0: poise serve's tests fork client processes from a process
// whose server threads run, and those clients start threads of their own.
extern "C" const char* __tsan_default_options() {
  return "report_signal_unsafe=0 atexit_sleep_ms=0 die_after_fork=0";
}
#endif

namespace poise {

namespace {

struct sigaction previous_segv;
struct sigaction previous_bus;
// The process whose mappings the address index describes. A child made by
// fork() inherits the index but none of the device memory (the mapping layer
// marks it MADV_DONTFORK): in the child nothing is ours, so an access to a
// mapping's addresses takes the default path (SIGSEGV) instead of being
// resolved into device memory that the parent may free and reuse.
std::atomic<pid_t> owner_pid{0};

// Asynchronous machine checks (BUS_MCEERR_AO) arrive at any moment, perhaps
// while the interrupted thread holds a filesystem lock: the handler only queues
// them (async-signal-safe: atomics and an eventfd write), and a poise thread runs
// the failure flow. A full queue drops the notice; the next access of the memory
// then gets the synchronous machine check (AR).
// A slot is claimed (Empty -> Writing) by one handler only, so two notices
// racing for a slot never mix their fields; the thread reads only Full ones.
enum SlotState : int { kEmpty, kWriting, kFull };
struct AsyncNotice {
  std::atomic<uintptr_t> addr{0};
  std::atomic<uint64_t> length{0};
  std::atomic<int> state{kEmpty};
};
constexpr size_t kAsyncSlots = 256;
AsyncNotice async_notices[kAsyncSlots];
std::atomic<uint64_t> async_next{0};
std::atomic<int> async_event_fd{-1};
// The process whose machine-check thread runs: a child made by fork() has
// none of its parent's threads and starts its own (start_machine_check_thread).
std::atomic<pid_t> async_thread_pid{0};

void queue_async(uintptr_t addr, uint64_t length) {
  // The pid first: it is published after the descriptor, so a child never
  // writes to its parent's eventfd (the same kernel object) by mistake.
  if (async_thread_pid.load(std::memory_order_acquire) != ::getpid()) return;  // nobody to tell
  const int fd = async_event_fd.load(std::memory_order_acquire);
  if (fd < 0) return;
  AsyncNotice& slot = async_notices[async_next.fetch_add(1, std::memory_order_relaxed) % kAsyncSlots];
  int empty = kEmpty;
  if (!slot.state.compare_exchange_strong(empty, kWriting, std::memory_order_acquire)) return;  // full: dropped
  slot.addr.store(addr, std::memory_order_relaxed);
  slot.length.store(length, std::memory_order_relaxed);
  slot.state.store(kFull, std::memory_order_release);
  const uint64_t one = 1;
  (void)!::write(fd, &one, sizeof one);
}

// Devices whose own view (data()) a machine check may name. The handler reads
// only the atomics; the machine-check thread reads `device` under the mutex,
// which unwatch_device() takes before the device may go.
struct WatchedDevice {
  std::atomic<uintptr_t> base{0};
  std::atomic<uint64_t> size{0};
  Device* device = nullptr;
  int count = 0;
  int busy = 0;  // notices being told to it now (the mutex is not held meanwhile)
};
constexpr size_t kWatchedMax = 16;
WatchedDevice watched[kWatchedMax];
std::mutex watched_mutex;
std::condition_variable watched_idle;
// The machine-check thread is telling a device (a holder's callbacks may run
// there, and may unmount: that unwatch must not wait for itself).
thread_local bool telling_device = false;
// The machine-check thread, while it waits for notices: it holds no lock then.
thread_local volatile sig_atomic_t machine_check_thread_idle = 0;

bool in_device_view(uintptr_t addr) {
  for (const WatchedDevice& w : watched) {
    const uintptr_t base = w.base.load(std::memory_order_acquire);
    if (base != 0 && addr >= base && addr - base < w.size.load(std::memory_order_acquire)) return true;
  }
  return false;
}

// Tells the device whose view holds [addr, +length) (the machine-check thread).
// The mutex is not held while the device is told (its holder runs callbacks
// that may unmount); unwatch_device() waits for the notice instead.
void notify_device_view(uintptr_t addr, uint64_t length) {
  std::unique_lock lock(watched_mutex);
  for (WatchedDevice& w : watched) {
    const uintptr_t base = w.base.load(std::memory_order_relaxed);
    const uint64_t size = w.size.load(std::memory_order_relaxed);
    if (w.device == nullptr || addr < base || addr - base >= size) continue;
    const uint64_t offset = addr - base;
    Device* device = w.device;
    ++w.busy;
    lock.unlock();
    telling_device = true;
    (void)device->notify_failure(offset, std::min(length, size - offset), FailureFlags::None);
    telling_device = false;
    lock.lock();
    --w.busy;
    watched_idle.notify_all();
    return;
  }
}

void run_async_notices(int event_fd) {
  // Early notice: the kernel sends BUS_MCEERR_AO for memory it finds failed in
  // this process's mappings to a thread that asked for it, this one, whose
  // handler only queues it (the eventfd read below restarts).
  (void)::prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0);
  for (;;) {
    uint64_t count = 0;
    machine_check_thread_idle = 1;
    const ssize_t got = ::read(event_fd, &count, sizeof count);
    machine_check_thread_idle = 0;
    if (got != sizeof count) continue;
    for (AsyncNotice& slot : async_notices) {
      if (slot.state.load(std::memory_order_acquire) != kFull) continue;
      const uint64_t length = slot.length.load(std::memory_order_relaxed);
      const uintptr_t addr = slot.addr.load(std::memory_order_relaxed) & ~(length - 1);  // the failed granule
      slot.state.store(kEmpty, std::memory_order_release);
      // Not poise's, or unmapped meanwhile: nobody to tell (an address reused by
      // a new mapping since is told instead, as the kernel's early kill would).
      std::shared_ptr<mapping::MapState> m = mapping::find_mapping_at(addr);
      if (!m) {
        notify_device_view(addr, length);
        continue;
      }
      if (auto registry = m->registry.lock()) (void)registry->machine_check(m, addr, length, false);
    }
  }
}

// The innermost guarded() scope of this thread and the error it receives.
thread_local sigjmp_buf* scope_env = nullptr;
thread_local int scope_code = 0;
thread_local char scope_message[512];

bool is_write_fault(void* context) {
#if defined(__x86_64__)
  const auto* uc = static_cast<const ucontext_t*>(context);
  return (uc->uc_mcontext.gregs[REG_ERR] & 2) != 0;  // page-fault error code: W/R bit
#else
  (void)context;
  return true;  // unknown: treat as a store, which also satisfies a load
#endif
}

// A fault that is not poise's goes to the handler installed before.
void chain(int sig, siginfo_t* info, void* context) {
  pass_on(sig == SIGSEGV ? previous_segv : previous_bus, sig, info, context);
}

// A failed access outside any guarded() scope: SIGBUS, as the kernel sends it.
// Ignoring it is not an option (the access would fault forever): no handler, die.
void raise_sigbus(void* addr, bool lost_memory, void* context) {
  siginfo_t si;
  std::memset(&si, 0, sizeof si);
  si.si_signo = SIGBUS;
  si.si_code = lost_memory ? BUS_MCEERR_AR : BUS_ADRERR;
  si.si_addr = addr;
  si.si_addr_lsb = lost_memory ? 12 : 0;
  if (!call_previous(previous_bus, SIGBUS, &si, context)) die_of(SIGBUS);
}

// Decides what a signal means. Everything with a destructor lives here, so that
// it is gone before the handler may leave by siglongjmp.
mapping::FaultOutcome decide(int sig, siginfo_t* info, void* context) {
  using mapping::FaultOutcome;
  auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  if (::getpid() != owner_pid.load(std::memory_order_relaxed)) return FaultOutcome{FaultOutcome::NotOurs};
  if (sig == SIGBUS && info->si_code != BUS_MCEERR_AR && info->si_code != BUS_MCEERR_AO) {
    return FaultOutcome{FaultOutcome::NotOurs};
  }
  if (sig == SIGBUS && info->si_code == BUS_MCEERR_AO) {
    // Asynchronous: the interrupted thread may hold any lock (the address index's
    // too), so nothing is looked up here. The poise thread finds the mapping.
    // Only where the kernel chose poise's own thread for the early notice (it
    // asked for them: PR_MCE_KILL_EARLY), idle and so holding nothing, is the
    // address looked up now, so that a notice for memory that is not poise's
    // goes on to the application's handler instead of being swallowed.
    if (machine_check_thread_idle && !in_device_view(addr) && !mapping::find_mapping_at(addr)) {
      return FaultOutcome{FaultOutcome::NotOurs};
    }
    const unsigned lsb = info->si_addr_lsb >= 12 && info->si_addr_lsb < 48 ? info->si_addr_lsb : 12;
    queue_async(addr, 1ull << lsb);
    return FaultOutcome{FaultOutcome::Retry};
  }
  std::shared_ptr<mapping::MapState> m = mapping::find_mapping_at(addr);
  if (!m && sig == SIGBUS && info->si_code == BUS_MCEERR_AR) {
    // Lost memory named at a device's own view: the kernel reports the first
    // mapping of the page it finds, which may be the device's rather than the
    // file mapping that consumed it. A copy of poise's own that reads there
    // takes it (its caller reports the bytes). Otherwise the machine-check
    // thread tells the device (this thread may hold any poise lock), and the
    // access fails: EIO to a guarded() scope, else SIGBUS as the kernel sends it.
    const unsigned lsb = info->si_addr_lsb >= 12 && info->si_addr_lsb < 48 ? info->si_addr_lsb : 12;
    if (in_device_view(addr) && !copy_covers(addr, lsb)) {
      const uint64_t length = 1ull << lsb;
      queue_async(addr & ~(length - 1), length);
      return FaultOutcome{FaultOutcome::Failed, EIO, true, "machine check: the device memory behind this page is lost"};
    }
  }
  if (!m) return FaultOutcome{FaultOutcome::NotOurs};
  std::shared_ptr<mapping::MappingRegistry> registry = m->registry.lock();
  if (!registry) return FaultOutcome{FaultOutcome::Failed, ESHUTDOWN, false, "the filesystem of this mapping is gone"};
  if (sig == SIGSEGV) return registry->handle_fault(m, addr, is_write_fault(context));

  // A machine check: tell the device's holder about the memory behind the range,
  // from a poise thread when it is asynchronous.
  const bool action_required = info->si_code == BUS_MCEERR_AR;
  unsigned lsb = info->si_addr_lsb >= 12 && info->si_addr_lsb < 48 ? info->si_addr_lsb : 12;
  uint64_t length = 1ull << lsb;
  return registry->machine_check(m, addr & ~(length - 1), length, action_required);
}

void on_signal(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  mapping::FaultOutcome outcome = decide(sig, info, context);
  if (outcome.kind == mapping::FaultOutcome::Retry) {
    errno = saved_errno;
    return;
  }
  if (outcome.kind == mapping::FaultOutcome::NotOurs) {
    chain(sig, info, context);
    errno = saved_errno;
    return;
  }
  const bool lost = outcome.lost_memory;
  scope_code = outcome.code;
  std::snprintf(scope_message, sizeof scope_message, "%s", outcome.message.c_str());
  outcome = {};  // nothing with a destructor may be left on this frame
  if (scope_env != nullptr) siglongjmp(*scope_env, 1);
  raise_sigbus(info->si_addr, lost, context);
  errno = saved_errno;
}

}  // namespace

namespace failure {

void install_fault_handler() {
  // Every mount says whose mappings the index holds: a child made by fork() that
  // mounts a filesystem of its own handles its own faults from then on (its
  // index started empty, see address_index.cc).
  owner_pid.store(::getpid(), std::memory_order_relaxed);
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    POISE_ASSERT(::sigaction(SIGSEGV, &sa, &previous_segv) == 0);
    POISE_ASSERT(::sigaction(SIGBUS, &sa, &previous_bus) == 0);
  });
}

void start_machine_check_thread() {
  static std::mutex start_mutex;
  if (async_thread_pid.load(std::memory_order_acquire) == ::getpid()) return;
  std::lock_guard lock(start_mutex);
  if (async_thread_pid.load(std::memory_order_acquire) == ::getpid()) return;
  // In a child made by fork(), the parent's queue and watched devices mean
  // nothing here (the parent's device memory is not inherited).
  for (AsyncNotice& slot : async_notices) slot.state.store(kEmpty, std::memory_order_relaxed);
  {
    std::lock_guard lock(watched_mutex);
    for (WatchedDevice& w : watched) {
      w.base.store(0, std::memory_order_release);
      w.size.store(0, std::memory_order_release);
      w.device = nullptr;
      w.count = w.busy = 0;
    }
  }
  const int fd = ::eventfd(0, EFD_CLOEXEC);
  POISE_ASSERT(fd >= 0);
  std::thread(run_async_notices, fd).detach();  // lives as long as the process
  async_event_fd.store(fd, std::memory_order_release);
  async_thread_pid.store(::getpid(), std::memory_order_release);  // from here on the handler queues
}

void watch_device(Device& device) {
  std::lock_guard lock(watched_mutex);
  for (WatchedDevice& w : watched) {
    if (w.device == &device) {
      ++w.count;
      return;
    }
  }
  for (WatchedDevice& w : watched) {
    if (w.device != nullptr) continue;
    w.device = &device;
    w.count = 1;
    w.size.store(device.size_bytes(), std::memory_order_release);
    w.base.store(reinterpret_cast<uintptr_t>(std::as_const(device).data()), std::memory_order_release);
    return;
  }
  // More devices than slots: machine checks at the others' views go unrouted
  // (their file mappings' are still handled), as if this one were not watched.
}

void unwatch_device(Device& device) {
  std::unique_lock lock(watched_mutex);
  for (WatchedDevice& w : watched) {
    if (w.device != &device || --w.count > 0) continue;
    w.base.store(0, std::memory_order_release);
    w.size.store(0, std::memory_order_release);
    // A notice being told to it ends first, unless this is that notice's own
    // thread (a holder's callback unmounting), which must not wait for itself.
    if (!telling_device) watched_idle.wait(lock, [&] { return w.busy == 0; });
    w.device = nullptr;
  }
}

}  // namespace failure

Result<void> guarded(const std::function<void()>& fn) {
  sigjmp_buf env;
  sigjmp_buf* const outer = scope_env;
  if (sigsetjmp(env, 1) == 0) {
    scope_env = &env;
    fn();
    scope_env = outer;
    return {};
  }
  scope_env = outer;
  return fail(scope_code, scope_message);
}

}  // namespace poise
