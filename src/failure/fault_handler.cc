#include "failure/fault_handler.h"

#include <setjmp.h>
#include <signal.h>
#include <ucontext.h>

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>

#include "base/signal_chain.h"
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
struct AsyncNotice {
  std::atomic<uintptr_t> addr{0};
  std::atomic<uint64_t> length{0};
  std::atomic<bool> full{false};
};
constexpr size_t kAsyncSlots = 256;
AsyncNotice async_notices[kAsyncSlots];
std::atomic<uint64_t> async_next{0};
std::atomic<int> async_event_fd{-1};

void queue_async(uintptr_t addr, uint64_t length) {
  if (async_event_fd < 0) return;  // no mapping was ever made: nobody to tell
  AsyncNotice& slot = async_notices[async_next.fetch_add(1, std::memory_order_relaxed) % kAsyncSlots];
  if (slot.full.load(std::memory_order_acquire)) return;  // the queue is full: dropped
  slot.addr.store(addr, std::memory_order_relaxed);
  slot.length.store(length, std::memory_order_relaxed);
  slot.full.store(true, std::memory_order_release);
  const uint64_t one = 1;
  (void)!::write(async_event_fd, &one, sizeof one);
}

void run_async_notices() {
  for (;;) {
    uint64_t count = 0;
    if (::read(async_event_fd, &count, sizeof count) != sizeof count) continue;
    for (AsyncNotice& slot : async_notices) {
      if (!slot.full.load(std::memory_order_acquire)) continue;
      const uintptr_t addr = slot.addr.load(std::memory_order_relaxed);
      const uint64_t length = slot.length.load(std::memory_order_relaxed);
      slot.full.store(false, std::memory_order_release);
      // Not poise's, or unmapped meanwhile: nobody to tell (an address reused by
      // a new mapping since is told instead, as the kernel's early kill would).
      std::shared_ptr<mapping::MapState> m = mapping::find_mapping_at(addr);
      if (!m) continue;
      if (auto registry = m->registry.lock()) (void)registry->machine_check(m, addr & ~(length - 1), length, false);
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
    const unsigned lsb = info->si_addr_lsb >= 12 && info->si_addr_lsb < 48 ? info->si_addr_lsb : 12;
    queue_async(addr, 1ull << lsb);
    return FaultOutcome{FaultOutcome::Retry};
  }
  std::shared_ptr<mapping::MapState> m = mapping::find_mapping_at(addr);
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
  static std::once_flag once;
  std::call_once(once, [] {
    const int fd = ::eventfd(0, EFD_CLOEXEC);
    POISE_ASSERT(fd >= 0);
    std::thread(run_async_notices).detach();  // lives as long as the process
    async_event_fd = fd;  // from here on the handler queues
  });
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
