// The process's SIGSEGV and SIGBUS handler for direct mappings (DESIGN flows 1
// and 4, source "real machine checks" and "emulated poison").
//
// - SIGSEGV at an address inside a poise mapping is a page the mapping layer made
//   inaccessible on purpose: a hole's first store, a copy-on-write, a page
//   revoked by a layout change or a removal, lost memory, emulated poison. The
//   registry resolves it (MappingRegistry::handle_fault): the access is retried,
//   or it fails.
// - SIGBUS with BUS_MCEERR_AR / BUS_MCEERR_AO (a machine check the kernel could
//   not recover) inside a poise mapping becomes a ranged notification of the
//   device memory behind [si_addr, +2^si_addr_lsb); for AR the access fails.
// - Anything else — other addresses, other signal codes — goes to the handler
//   that was installed before (ASan's, the application's, or the default).
//
// A failed access goes to the innermost guarded() scope of the thread (which
// returns the error), or else becomes SIGBUS for the thread, as the kernel
// reports it: BUS_MCEERR_AR with si_addr_lsb 12 for lost memory, BUS_ADRERR for
// anything else (past the end of file, shut down).
//
// A child made by fork() inherits no device memory through mappings (they are
// MADV_DONTFORK): in the child every access to a mapping's address range is
// SIGSEGV by the default path (a hole page may still read as zeros).
//
// Faults are handled synchronously in the faulting thread. That is safe because
// they are synchronous: the thread was running application code touching a
// mapping, never poise code holding a poise lock.
#pragma once

namespace poise {
class Device;
}

namespace poise::failure {

// Installs the handlers once per process; later calls do nothing. Thread-safe.
void install_fault_handler();
// Starts the thread that runs the failure flow for asynchronous machine checks
// (BUS_MCEERR_AO), once per process, when the first direct mapping is made:
// before that no mapping can be told, and a process that maps nothing (the
// CLI) runs no extra thread.
// The thread asks the kernel for early notice of memory failures in memory it
// maps (PR_MCE_KILL_EARLY, for itself): the kernel then sends it
// BUS_MCEERR_AO when it finds a failure nobody consumed yet.
void start_machine_check_thread();

// A machine check at an address of a device's own view (Device::data()) rather
// than of a file's mapping: the kernel names the first mapping of the failed
// page it finds in the process, and that may be the filesystem's view of the
// whole device. watch_device() lets the handler turn such an address into a
// device offset and tell the device (notify_failure, from the machine-check
// thread); unwatch_device() waits for a notice in progress. Counted: a device
// watched twice (two mounts) needs two unwatches.
void watch_device(Device& device);
void unwatch_device(Device& device);

}  // namespace poise::failure
