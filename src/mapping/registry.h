// MappingRegistry: every live direct mapping and pin of one mounted filesystem
// (the kernel's address_space + VMAs + GUP pins, DESIGN layer mapping/).
//
// Indexes: by file (inode -> its mappings and pins, each with its file range), by
// device range (device block -> the mapping runs showing it), and by address (a
// process-wide index the fault handler uses, address_index.h).
//
// Page states live in each mapping's PageRuns and are mirrored exactly in the
// process's page tables: a state change and the mmap(2) that enforces it happen
// together under the mapping's mutex. Revocation replaces pages with
// inaccessible anonymous memory, so a revoked address no longer reaches device
// memory at all (I1); the CPU's TLB is shot down before mmap returns.
//
// Locks, in order: the filesystem's inode lock (held by every caller that changes
// a file's layout, and by installs through MappingBackend::with_layout) ->
// MapState::mu -> mutex_ (the indexes). Notices are collected under the locks and
// delivered after them (deliver()).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <absl/container/btree_map.h>
#include <absl/container/flat_hash_map.h>

#include "mapping/page_runs.h"
#include "poise/device.h"
#include "poise/mapping.h"

namespace poise::mapping {

inline constexpr uint64_t kPageSize = 4096;

// One piece of a file's layout, in file pages.
struct PageExtent {
  uint64_t first_page = 0;
  uint64_t count = 0;
  PageState state = PageState::Zero;  // never Absent
  uint64_t dev_block = 0;
};

// What the registry needs from the filesystem.
class MappingBackend {
 public:
  virtual ~MappingBackend() = default;
  // Calls fn with the layout of file pages [first, +count) — pages past the end
  // of file left out — while the file's layout cannot change. Data blocks are
  // Writable only when `writable` and not shared. `eof_page` is the first page
  // past the end of file.
  virtual Result<void> with_layout(InodeNumber ino, uint64_t first, uint64_t count, bool writable,
                                   const std::function<void(uint64_t eof_page, std::span<const PageExtent>)>& fn) = 0;
  // Makes one page of the file writable in place: gives a hole a block, copies a
  // shared block. Waits while the filesystem is frozen.
  virtual Result<void> prepare_write(InodeNumber ino, uint64_t page) = 0;
  // A consumer touched poisoned memory: the ActionRequired failure flow.
  virtual Result<void> consume_poison(uint64_t dev_offset, uint64_t length) = 0;
  // Returns when the filesystem is not frozen; ESHUTDOWN once it has shut down.
  virtual Result<void> wait_until_thawed() = 0;
  // A mapping or pin keeps its file alive, as an open file does.
  virtual Result<void> retain(InodeNumber ino) = 0;
  virtual void release(InodeNumber ino) = 0;
  virtual std::string describe(InodeNumber ino) = 0;  // a path, for messages
};

// What a fault in a mapping comes to.
struct FaultOutcome {
  enum Kind : uint8_t { Retry, NotOurs, Failed } kind = Retry;
  int code = 0;  // Failed: the errno
  bool lost_memory = false;  // Failed: the memory failed (BUS_MCEERR_AR)
  std::string message;
};

// Where a follower registry (a poise serve client) sends what the server must
// decide: its faults, its syncs and its unmaps.
class FaultForwarder {
 public:
  virtual ~FaultForwarder() = default;
  // The server takes the fault on its copy of mapping m; its page changes have
  // reached this process (follow()) when this returns.
  virtual FaultOutcome forward_fault(const MapState& m, uint64_t page, bool is_write) = 0;
  virtual Result<void> sync(const MapState& m) = 0;
  virtual void unmapped(const MapState& m) = 0;  // REQUIRES: no poise lock held
};

// One mapping. Fields above `mu` never change after map().
struct MapState {
  uint64_t id = 0;
  std::shared_ptr<MapOwner> owner;
  InodeNumber ino;
  uint64_t first_page = 0;  // file page shown at va
  uint64_t pages = 0;
  MapAccess access = MapAccess::Read;
  std::byte* va = nullptr;
  std::weak_ptr<MappingRegistry> registry;

  std::mutex mu;
  PageRuns runs{0};  // guarded by mu
  bool dead = false;  // guarded by mu: unmapped, or killed by a shutdown
  bool unmapped = false;  // guarded by mu: va is given back
  MappingCause dead_cause = MappingCause::Shutdown;
};

// A notice for one mapping's owner, delivered after the locks are dropped.
struct Notice {
  std::shared_ptr<MapOwner> owner;
  MappingEvent event;
};


class MappingRegistry final : public std::enable_shared_from_this<MappingRegistry>,
                              public PoisonListener,
                              public PinKeeper {
 public:
  explicit MappingRegistry(Device& device);
  ~MappingRegistry() override;
  MappingRegistry(const MappingRegistry&) = delete;
  MappingRegistry& operator=(const MappingRegistry&) = delete;

  void attach(MappingBackend* backend);
  // Kills every mapping (cause Shutdown), waits for pins, and forgets the backend.
  // A pin of the calling thread would never go: that is a programmer error, and
  // the process stops with a message rather than hang (unmount() refuses it first).
  void detach(std::vector<Notice>* notices);

  // Filesystem::map: offset and length are rounded out to pages.
  Result<Mapping> map(InodeNumber ino, uint64_t offset, uint64_t length, MapAccess access,
                      std::shared_ptr<MapOwner> owner);
  void unmap(const std::shared_ptr<MapState>& m);
  Result<void> sync(MapState& m);
  // Filesystem::pin.
  Result<Pin> pin(InodeNumber ino, uint64_t offset, uint64_t length);

  // A follower registry (a poise serve client): it has no backend; its
  // mappings show what the server's copies show (follow(), follow_death()),
  // and their faults, syncs and unmaps go to the forwarder.
  void set_forwarder(FaultForwarder* forwarder) { forwarder_ = forwarder; }
  // A mapping with every page absent, for the server to fill.
  Result<Mapping> map_follower(InodeNumber ino, uint64_t offset, uint64_t length, MapAccess access,
                               std::shared_ptr<MapOwner> owner);
  // The server's copy of mapping `id` changed pages [first, +count).
  Result<void> follow(uint64_t id, uint64_t first, uint64_t count, PageState state, uint64_t dev_block);
  void follow_death(uint64_t id, MappingCause cause);
  // The owner of mapping `id` (for notices), or nullptr.
  std::shared_ptr<MapOwner> owner_of(uint64_t id) const;
  void unpin(uint64_t id) override;

  // Layout breaking (DESIGN flow 4). REQUIRES: the inode locked exclusively.
  // Revokes file pages [first, +count) in every mapping of the file: the next
  // access asks again.
  void invalidate(InodeNumber ino, uint64_t first, uint64_t count);
  // Before blocks become shared (reflink, clone-range): every Writable page of
  // file pages [first, +count), in every mapping of the file, is written back
  // and made read-only, so that the next store faults and copies on write
  // instead of writing into the sharer. REQUIRES: the inode locked exclusively.
  void write_protect(InodeNumber ino, uint64_t first, uint64_t count);
  // Waits until no pin of the file overlaps [first, +count).
  void wait_for_pins(InodeNumber ino, uint64_t first, uint64_t count);
  // Waits until no pin of any file is held (device removal: a pin reads device
  // memory directly, so the memory may go only once every pin has).
  void wait_for_all_pins();
  // Whether the calling thread holds a pin of the file (it must not modify it).
  bool holds_pin(InodeNumber ino) const;
  // Whether the calling thread holds any pin (it cannot wait for pins to go).
  bool holds_any_pin() const;

  // Memory failure (flow 1): file pages [first, +count) of the file show failed
  // memory. Every mapping showing them revokes them for good; their owners get
  // notices. REQUIRES: the inode locked exclusively.
  // dev_block is the device block behind file page `first`.
  void mark_lost(InodeNumber ino, uint64_t first, uint64_t count, uint64_t dev_block,
                 std::vector<Notice>* notices);
  // Whether any mapping of the file is registered. A mapping registers before
  // it asks for the file's layout, so once this says no, a mapping made later
  // sees every layout change (and failure record) made before the question.
  bool maps_file(InodeNumber ino) const;
  // Pre-remove (flow 3): revokes every mapping; accesses wait for resume() or
  // fail once killed. Flushes the device memory that was writable, first.
  void suspend_all(std::vector<Notice>* notices);
  void resume_all();
  bool suspended() const { return suspended_.load(std::memory_order_acquire); }
  // Shutdown: every mapping dead, every access an error.
  void kill_all(MappingCause cause, std::vector<Notice>* notices);

  // Writes back what stores through writable mappings (of one file, or all)
  // left in the CPU caches; the caller drains.
  void flush_writable(std::optional<InodeNumber> ino);

  // The fault handler's entry: an access at `addr` inside m faulted.
  FaultOutcome handle_fault(const std::shared_ptr<MapState>& m, uintptr_t addr, bool is_write);
  // A machine check at [addr, +length) of m: a ranged notification of the device
  // memory behind it. Action required: the access fails; else it is retried.
  FaultOutcome machine_check(const std::shared_ptr<MapState>& m, uintptr_t addr, uint64_t length,
                             bool action_required);
  // Device ranges (bytes) shown at [addr, +length) of m.
  std::vector<BadRange> device_ranges(MapState& m, uintptr_t addr, uint64_t length);

  // PoisonListener: pages showing newly poisoned memory fault from now on.
  void poison_planted(uint64_t offset, uint64_t length) override;

  // For the checker and tests: every run of device memory shown by a mapping.
  struct ShownRun {
    uint64_t mapping_id;
    InodeNumber ino;
    uint64_t file_page;
    uint64_t dev_block;
    uint64_t count;
    PageState state;
  };
  // Those overlapping device blocks [first_block, +count), through the device index.
  std::vector<ShownRun> shown_runs(uint64_t first_block = 0, uint64_t count = UINT64_MAX) const;
  size_t mapping_count() const;
  size_t pin_count() const;

  // Calls the owners' sinks. REQUIRES: no poise lock held.
  static void deliver(std::vector<Notice>& notices);

 private:
  struct PinEntry {
    uint64_t id;
    uint64_t first;
    uint64_t count;
    std::thread::id thread;
  };
  struct DevEntry {
    MapState* map;  // valid while indexed: unmap() removes its entries first
    uint64_t first;  // page index inside the mapping
    uint64_t count;
    PageState state;
  };

  // Sets pages [first, +count) of m (mapping-relative) to `state` in both the
  // run list and the page tables. REQUIRES: m.mu held.
  Result<void> set_pages(MapState& m, uint64_t first, uint64_t count, PageState state, uint64_t dev_block);
  // A mapping's state over fresh PROT_NONE address space, every page Absent.
  Result<std::shared_ptr<MapState>> new_state(InodeNumber ino, uint64_t first, uint64_t pages, MapAccess access,
                                              std::shared_ptr<MapOwner> owner);
  // Installs file layout into the Absent run around `page`. REQUIRES: nothing held.
  Result<void> resolve(const std::shared_ptr<MapState>& m, uint64_t page, bool* beyond_eof);
  void index_run(MapState& m, const PageRun& run, bool added);  // REQUIRES: mutex_ held
  // Calls fn(m, s, e) with m.mu held for every live mapping of the file that
  // shows file pages [s, e), the part of [first, +count) it covers.
  void for_each_overlap(InodeNumber ino, uint64_t first, uint64_t count,
                        const std::function<void(MapState&, uint64_t, uint64_t)>& fn);
  void flush_writable_locked(MapState& m);  // REQUIRES: m.mu held
  std::vector<std::shared_ptr<MapState>> mappings_of(InodeNumber ino) const;
  std::vector<std::shared_ptr<MapState>> all_mappings() const;
  MappingEvent event_for(const MapState& m, uint64_t first, uint64_t count, MappingCause cause) const;

  Device& device_;
  std::shared_mutex backend_mutex_;  // shared while calling the backend
  MappingBackend* backend_ = nullptr;
  std::atomic<bool> suspended_{false};
  bool all_killed_ = false;  // guarded by mutex_: after kill_all no mapping or pin is made
  std::atomic<uint64_t> next_id_{1};
  // Live mappings and pins: lets the write path skip the indexes when none exist.
  std::atomic<uint64_t> live_mappings_{0};
  std::atomic<uint64_t> live_pins_{0};

  mutable std::mutex mutex_;
  absl::flat_hash_map<uint64_t, std::vector<std::shared_ptr<MapState>>> by_file_;  // by inode
  absl::btree_multimap<uint64_t, DevEntry> by_device_;  // by device block
  absl::flat_hash_map<uint64_t, std::vector<PinEntry>> pins_;  // by inode
  absl::flat_hash_map<uint64_t, uint64_t> pin_files_;  // pin id -> inode
  std::condition_variable pins_released_;
  FaultForwarder* forwarder_ = nullptr;  // set before any mapping exists
  absl::flat_hash_map<uint64_t, std::weak_ptr<MapState>> followers_;  // by id, guarded by mutex_
};

}  // namespace poise::mapping
