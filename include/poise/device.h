// Device: a byte-addressable memory range that poise lays a filesystem on, and the
// only path by which the filesystem stores to it.
//
// Loads go straight through data() (that is the point of DAX). Stores go through
// write()/fill(), which store and write back the touched cache lines but do not
// wait; drain() is the fence after which everything written back is durable. A
// caller that stored through data() directly must flush() the range itself.
// Keeping every store behind this seam is what lets the crash-simulating device
// drop exactly what a power cut would.
//
// Backends: an emulated device on a regular file (sparse, mapped shared), a
// device-dax character device (/dev/daxX.Y, mapped with libpmem2), and in-memory
// devices for tests (src/device/memory_device.h, crash_device.h).
//
// Thread-safety: write, fill, flush and drain may be called from any thread for
// disjoint ranges; the filesystem orders overlapping stores itself.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "poise/result.h"

namespace poise {

// Where a store becomes durable (see DESIGN.md, "Persistence domains").
enum class PersistenceDomain : uint8_t {
  CpuCache,          // eADR: caches are flushed on power loss
  MemoryController,  // ADR: stores need a cache-line flush and a fence
  PageCache,         // emulated on a regular file: needs sync() for a machine crash
};

const char* to_string(PersistenceDomain domain);

// A stretch of the device that the hardware reports as unreadable.
struct BadRange {
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
  bool operator==(const BadRange&) const = default;
};

// What a failure notification says; the flags combine.
enum class FailureFlags : uint32_t {
  None = 0,
  ActionRequired = 1u << 0,  // a consumer touched the memory: its error is synchronous
  MustKill = 1u << 1,        // users of the range must stop using it
  PreRemove = 1u << 2,       // the device is about to be removed
  Remove = 1u << 3,          // the device is gone
};
constexpr FailureFlags operator|(FailureFlags a, FailureFlags b) {
  return FailureFlags(uint32_t(a) | uint32_t(b));
}
constexpr bool has(FailureFlags set, FailureFlags flag) { return (uint32_t(set) & uint32_t(flag)) != 0; }

// The one party a device tells about lost memory: the filesystem mounted on it.
// A notification covers any range in one call, the whole device included, so
// its cost never depends on the length (invariant I2).
class FailureHolder {
 public:
  virtual ~FailureHolder() = default;
  virtual Result<void> notify_failure(uint64_t offset, uint64_t length, FailureFlags flags) = 0;
  // The removal announced by a PreRemove notification will not happen after all.
  virtual void removal_cancelled() {}
};

// Told when poison is planted in an emulated device, so that direct mappings of
// that memory fault on their next access as a machine check would.
class PoisonListener {
 public:
  virtual ~PoisonListener() = default;
  virtual void poison_planted(uint64_t offset, uint64_t length) = 0;
};

// A device's life: removal blocks new access first (Dying), then tells the
// holder, then waits for accessors in flight, and only then is Dead (I7).
enum class DeviceState : uint8_t { Alive, Dying, Dead };

class PoisonList;

class Device {
 public:
  virtual ~Device() = default;

  virtual uint64_t size_bytes() const = 0;
  virtual PersistenceDomain domain() const = 0;
  // The alignment the device needs for mappings (4 KiB for files, 2 MiB or 1 GiB
  // for some device-dax namespaces).
  virtual uint64_t alignment_bytes() const = 0;
  virtual std::string describe() const = 0;

  // The whole device, mapped. Valid for the life of the Device. A fork()ed child
  // does not inherit device memory (MADV_DONTFORK): the child cannot use the
  // Device or a Filesystem on it (an access faults), so it can never write into
  // the parent's live filesystem. Open the image again after exec instead.
  virtual const std::byte* data() const = 0;
  virtual std::byte* data() = 0;

  // A descriptor whose file offsets are device offsets, for mapping device
  // memory a second time (direct mappings of files); -1 if the backend has none.
  virtual int map_fd() const { return -1; }
  // Real memory whose failures the kernel reports as machine checks (SIGBUS
  // BUS_MCEERR_AO/AR at data()'s addresses): a filesystem on it asks for early
  // notice of them (PR_MCE_KILL_EARLY) and turns each into notify_failure().
  virtual bool reports_machine_checks() const { return false; }

  // Copies bytes out inside a read-side section that removal waits for. EIO for
  // poisoned memory, ENXIO once removal has begun. The copy is machine-check
  // safe: memory that fails under it (SIGBUS BUS_MCEERR_AR, or a page of an
  // emulated device's file that is gone) ends the copy with EIO naming the
  // bytes, and the process lives; take_failed_read() then says where.
  // REQUIRES: offset + length <= size_bytes().
  virtual Result<void> read(uint64_t offset, void* dst, size_t length) const;
  // The device bytes a read() of this thread last found failed under its copy
  // (a machine check), once: the caller reports them (notify_failure) when it
  // holds no locks.
  static std::optional<BadRange> take_failed_read();

  // Stores and writes back; durable after the next drain().
  // REQUIRES: offset + length <= size_bytes().
  virtual void write(uint64_t offset, const void* src, size_t length) = 0;
  virtual void fill(uint64_t offset, int byte, size_t length) = 0;
  // A hint before storing to [offset, +length) for the first time (freshly
  // allocated blocks): an emulated device maps the pages in one call instead of
  // taking a page fault per 4 KiB. Does nothing elsewhere.
  virtual void prepare_store(uint64_t offset, uint64_t length) { (void)offset, (void)length; }
  // Writes back cache lines the caller stored to through data().
  virtual void flush(uint64_t offset, size_t length) = 0;
  // Waits until everything written back so far is durable.
  virtual void drain() = 0;
  // Full durability, including the backing file of an emulated device.
  virtual Result<void> sync() = 0;
  // Durability of [offset, +length) only: on an emulated device (page-cache
  // domain) the pages are written to the backing file and waited for, so they
  // survive a machine crash; elsewhere the same as drain().
  virtual Result<void> sync_range(uint64_t offset, uint64_t length) {
    check_range(offset, length);
    drain();
    return {};
  }

  // The hardware's list of bad ranges (empty on a healthy device), in order.
  // An emulated device reports its poison list.
  virtual Result<std::vector<BadRange>> bad_ranges() const;
  // The first emulated poisoned range overlapping [offset, +length), clipped to
  // it: what a mapping's fault consults, in O(log n), without copying the list.
  // Nothing on real hardware, whose failures arrive as machine checks (and whose
  // list the filesystem takes in at mount).
  std::optional<BadRange> first_poisoned(uint64_t offset, uint64_t length) const;

  // Emulated devices only: mark memory as poisoned (reads of it fail with EIO,
  // as a machine check would) or clear it. ENOTSUP on real hardware, whose
  // errors come from the platform (ndctl inject-error for testing).
  virtual Result<void> inject_poison(uint64_t offset, uint64_t length);
  virtual Result<void> clear_poison(uint64_t offset, uint64_t length);

  // The holder: at most one. EBUSY if another is registered.
  Result<void> register_holder(FailureHolder* holder);
  void unregister_holder(FailureHolder* holder);
  // Tells the holder that [offset, +length) failed. ENXIO when nobody holds the
  // device; otherwise what the holder answered. Unregistration waits for it.
  Result<void> notify_failure(uint64_t offset, uint64_t length, FailureFlags flags);
  void set_poison_listener(PoisonListener* listener);

  // Removal (DESIGN flow 3). pre_remove() is notify_failure(0, size, PreRemove):
  // the holder freezes, syncs, revokes and notifies; no new mapping or pin is
  // given out. Then either cancel_removal() (the holder thaws) or remove(): new
  // accesses fail with ENXIO from here on, the holder is told (Remove: it shuts
  // down and waits until every pin has been released, since a pin reads device
  // memory directly), in-flight readers are waited for (liburcu grace period),
  // and the device is Dead. remove() from a thread that itself holds a pin
  // fails with EDEADLK and changes nothing.
  Result<void> pre_remove();
  void cancel_removal();
  Result<void> remove();
  DeviceState state() const { return state_.load(std::memory_order_acquire); }

 protected:
  // Emulated devices return their poison list; real hardware nullptr.
  virtual PoisonList* emulated_poison() const { return nullptr; }
  // Persists the poison list after a change (a file beside an emulated image).
  virtual Result<void> save_poison() { return {}; }

  // Every access stays inside the device; a stray offset is a programmer error.
  void check_range(uint64_t offset, uint64_t length) const {
    POISE_ASSERT(offset <= size_bytes());
    POISE_ASSERT(length <= size_bytes() - offset);
  }

 private:
  enum class PoisonEdit : uint8_t { Inject, Clear };
  Result<void> edit_poison(uint64_t offset, uint64_t length, PoisonEdit edit);

  // Exclusive to (un)register; shared while calling the holder or the listener,
  // so calls may overlap (the holder is thread-safe) but never outlive it.
  mutable std::shared_mutex holder_mutex_;
  FailureHolder* holder_ = nullptr;
  PoisonListener* poison_listener_ = nullptr;
  std::atomic<DeviceState> state_{DeviceState::Alive};
};

inline constexpr uint64_t kDeviceSizeMin = 16ull << 20;

enum class CreateMode : uint8_t { OpenExisting, CreateIfMissing };

// ReadOnly opens and maps the image without write permission (a 0444 image, or
// one on a read-only filesystem, can be inspected) and shares the lock with
// other read-only openers. Stores to such a device are programmer errors.
enum class DeviceAccess : uint8_t { ReadWrite, ReadOnly };

// For an emulated device opened read-write: Reserved makes the host filesystem
// back every byte of the image (fallocate) before any block is handed out, so a
// full host filesystem is an ENOSPC at open instead of a SIGBUS on a store.
// Sparse leaves holes (for huge test images); a store into a hole on a full host
// filesystem then kills the process with SIGBUS, as any shared file mapping would.
enum class Backing : uint8_t { Reserved, Sparse };

struct OpenDeviceOptions {
  CreateMode create = CreateMode::OpenExisting;
  uint64_t size_bytes = 0;  // for a new or growing emulated device; 0 keeps the size
  DeviceAccess access = DeviceAccess::ReadWrite;
  Backing backing = Backing::Reserved;
};

// Opens a device by path: a character device is device-dax, anything else is an
// emulated device on a regular file. The file is locked against a second opener
// (read-only openers share). A failed open never leaves a file it created, and
// never resizes a file before the size is known to be valid. The descriptor is
// never 0, 1 or 2, so a process whose standard streams were closed cannot write
// its output into the image.
Result<std::unique_ptr<Device>> open_device(const std::string& path,
                                            const OpenDeviceOptions& options = {});

}  // namespace poise
