// Passing a signal on to the handler installed before poise's: poise's SIGBUS
// and SIGSEGV handlers (src/failure/fault_handler.cc, base/safe_copy.cc) take
// only what is theirs and hand everything else on by these rules.
// Thread-safety: async-signal-safe.
#pragma once

#include <signal.h>

namespace poise {

// Calls `prev` if it is a function; false if it is SIG_DFL or SIG_IGN.
bool call_previous(const struct sigaction& prev, int sig, siginfo_t* info, void* context);

// The default action of `sig` (the process dies of it), unblocked first.
[[noreturn]] void die_of(int sig);

// Hands the signal on to `prev`. A synchronous fault cannot be ignored
// (returning would run the access again, forever): like the kernel, which
// forces the default action then, die of it. Only an asynchronous
// machine-check notice (SIGBUS BUS_MCEERR_AO) may be ignored.
void pass_on(const struct sigaction& prev, int sig, siginfo_t* info, void* context);

}  // namespace poise
