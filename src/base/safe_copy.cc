#include "base/safe_copy.h"

#include "base/signal_chain.h"

#include <setjmp.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>

#include "poise/result.h"

namespace poise {

namespace {

struct CopyScope {
  sigjmp_buf env;
  uintptr_t lo = 0;
  uintptr_t hi = 0;
  CopyFault fault;
};
thread_local CopyScope* scope = nullptr;
struct sigaction previous_bus;

void on_sigbus(int sig, siginfo_t* info, void* context) {
  CopyScope* s = scope;
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  const bool mce = info->si_code == BUS_MCEERR_AR || info->si_code == BUS_MCEERR_AO;
  const unsigned lsb = mce && info->si_addr_lsb >= 12 && info->si_addr_lsb < 48 ? info->si_addr_lsb : 0;
  // A machine check names the failed granule (its start may lie before the copy's).
  const uintptr_t first = addr & ~((uintptr_t{1} << lsb) - 1);
  const uintptr_t end = first + (uintptr_t{1} << lsb);
  if (s != nullptr && first < s->hi && end > s->lo) {
    s->fault.addr = std::max(first, s->lo);
    s->fault.code = info->si_code;
    s->fault.addr_lsb = lsb >= 12 ? lsb : 12;
    siglongjmp(s->env, 1);
  }
  pass_on(previous_bus, sig, info, context);
}

void install_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    // SA_NODEFER: leaving by siglongjmp without restoring the mask keeps SIGBUS open.
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    POISE_ASSERT(::sigaction(SIGBUS, &sa, &previous_bus) == 0);
  });
}

}  // namespace

std::optional<CopyFault> access_or_fault(const void* src, size_t n, const std::function<void()>& fn) {
  install_once();
  CopyScope here;
  here.lo = reinterpret_cast<uintptr_t>(src);
  here.hi = here.lo + n;
  CopyScope* const outer = scope;
  if (sigsetjmp(here.env, 0) == 0) {
    scope = &here;
    // The handler reads `scope`: the stores around the access must stay where
    // they are (the compiler may know fn does not read it and drop the first).
    std::atomic_signal_fence(std::memory_order_seq_cst);
    fn();
    std::atomic_signal_fence(std::memory_order_seq_cst);
    scope = outer;
    return std::nullopt;
  }
  scope = outer;
  // Reached through another handler (poise's mapping fault handler chains here,
  // from a SIGSEGV), SIGBUS or SIGSEGV may still be blocked: open both again.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGBUS);
  sigaddset(&set, SIGSEGV);
  ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  return here.fault;
}

bool copy_covers(uintptr_t addr, unsigned lsb) {
  const CopyScope* s = scope;
  const uintptr_t first = addr & ~((uintptr_t{1} << lsb) - 1);
  return s != nullptr && first < s->hi && first + (uintptr_t{1} << lsb) > s->lo;
}

std::optional<CopyFault> copy_or_fault(void* dst, const void* src, size_t n) {
  return access_or_fault(src, n, [&] { std::memcpy(dst, src, n); });
}

}  // namespace poise
