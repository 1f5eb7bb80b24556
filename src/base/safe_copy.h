// Copies that survive a bus error in their source: a machine check consumed in
// device memory (SIGBUS BUS_MCEERR_AR), or a page of an emulated device whose
// backing file is gone (BUS_ADRERR). Like the kernel's copy_mc_to_kernel, the
// copy stops and says where instead of the process dying; the caller turns that
// into EIO for exactly that range and a ranged failure notification.
//
// A SIGBUS handler is installed on first use; it takes only faults inside a copy
// of this thread and chains every other signal to the handler installed before
// (poise's mapping fault handler chains to it in turn). No signal is taken on
// the fast path: a copy costs a sigsetjmp without a mask save.
//
// Thread-safety: any thread; each thread's copy is its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>

namespace poise {

struct CopyFault {
  uintptr_t addr = 0;  // the failed address (inside the source)
  int code = 0;        // the SIGBUS si_code the kernel delivered
  unsigned addr_lsb = 12;  // log2 of the failed granule (si_addr_lsb for a machine check)
};

// Copies n bytes; nullopt when all were copied, else where the source failed
// (dst then holds an unspecified prefix).
std::optional<CopyFault> copy_or_fault(void* dst, const void* src, size_t n);

// Runs fn, which only loads from [src, +n) (plain loads: nothing with a
// destructor, no allocation, no lock: it does not resume after a fault); a bus
// error in that range ends it and says where.
std::optional<CopyFault> access_or_fault(const void* src, size_t n, const std::function<void()>& fn);

// Whether a copy of this thread is reading [addr, +2^lsb) now: its handler takes
// a machine check there (async-signal-safe, for other SIGBUS handlers).
bool copy_covers(uintptr_t addr, unsigned lsb);

}  // namespace poise
