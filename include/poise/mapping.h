// Direct mappings (DAX) and pins: zero-copy access to a file's own device memory.
//
// Filesystem::map() puts a file range into the caller's address space as one
// contiguous virtual range, however fragmented the file: loads and stores go
// straight to the device. Holes read as zeros and get a block on the first store;
// a block shared by reflink is copied on the first store (only that page of that
// mapping is remapped). After the first touch, no access costs anything extra.
//
// When the layout changes underneath (truncate, punch-hole, copy-on-write), the
// affected pages are revoked before their memory is freed or reused; the next
// access either sees the new layout or, past the end of file, fails. When memory
// fails, the pages showing it are revoked in every mapping of every file that
// owns it, and each mapping's owner is told (MapOwner::on_event). When the
// device is about to be removed, every mapping is revoked and its owner told;
// accesses wait until the removal is cancelled or fail once it completes.
//
// A failed access — lost memory, past the end of file, filesystem shut down — is
// reported the way the kernel does: SIGBUS (BUS_MCEERR_AR for lost memory) to the
// accessing thread. Code that would rather get an error runs its accesses inside
// guarded(), which returns the error instead.
//
// Pins are the short-lived form: a read-only view of device memory (for a
// zero-copy send, say) whose bytes stay put while it is held: API writes to the
// range, truncate, punch-hole and every other path that frees blocks wait for it.
// (Stores through a mapping do not.) A thread must release its pins before it
// modifies that file. Through poise serve a pin is the connection's rather
// than the thread's, and a pin held when the connection ends keeps showing
// what it showed, as a private copy (docs/protocol.md, "Pins").
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "poise/result.h"
#include "poise/types.h"

namespace poise {

enum class MapAccess : uint8_t { Read, ReadWrite };

enum class MappingCause : uint8_t {
  MemoryFailure,  // the device memory behind these pages failed
  DeviceRemoval,  // the device is about to be removed: stop using the mapping
  Shutdown,       // the filesystem shut down: the mapping is dead
};
const char* to_string(MappingCause cause);

// What a mapping's owner is told.
struct MappingEvent {
  uint64_t mapping_id = 0;
  std::string owner;  // MapOwner::name
  InodeNumber ino;
  uint64_t file_offset = 0;  // the affected file bytes [file_offset, +length)
  uint64_t length = 0;
  MappingCause cause = MappingCause::MemoryFailure;
  bool consumed = false;  // this mapping's own access ran into the failure
};

// For poise serve: another process shows the same pages as a mapping made in
// this one (the server's copy of a client's mapping, a "lease"). Told of every
// change of the mapping's pages, in order, with the mapping's lock held: it
// returns once the other process shows the change too, or is dead, so that no
// memory is freed or reused while another process still reaches it.
class MappingMirror {
 public:
  virtual ~MappingMirror() = default;
  // Pages [first, +count) of the mapping now show `state` (a
  // mapping::PageState) at device block `dev_block` (for states on the device).
  virtual void pages_changed(uint64_t first, uint64_t count, uint8_t state, uint64_t dev_block) = 0;
  // The mapping is dead (shutdown, removal): every later access fails.
  virtual void died(MappingCause cause) = 0;
};

// Who holds a mapping: a name for reports and an optional sink for early notice.
// The sink is called from the thread that handles the event, with no poise lock
// held; it should be quick and must not block on the mapping's users.
struct MapOwner {
  std::string name;
  std::function<void(const MappingEvent&)> on_event;  // empty: no early notice
  std::shared_ptr<MappingMirror> mirror;  // poise serve only: nullptr
};

namespace mapping {
class MappingRegistry;
struct MapState;
}  // namespace mapping

// A live direct mapping. Unmapped when destroyed. Unmap it before unmounting;
// after a shutdown every access to it fails.
class Mapping {
 public:
  Mapping() = default;
  explicit Mapping(std::shared_ptr<mapping::MapState> state) : state_(std::move(state)) {}
  Mapping(Mapping&&) noexcept = default;
  Mapping& operator=(Mapping&& o) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { unmap(); }

  bool is_mapped() const { return state_ != nullptr; }
  std::byte* data() const;
  size_t size() const;
  uint64_t file_offset() const;  // of data()[0]
  uint64_t id() const;
  const MapOwner* owner() const;  // who holds it (nullptr when not mapped)
  MapAccess access() const;
  // Makes the stores made through this mapping durable (as msync(2)).
  Result<void> sync();
  void unmap();

 private:
  std::shared_ptr<mapping::MapState> state_;
};

// Who gave out a pin, told when it is released: the mapping registry of an
// in-process filesystem, or a poise serve client library.
class PinKeeper {
 public:
  virtual ~PinKeeper() = default;
  virtual void unpin(uint64_t id) = 0;
};

// A read-only view of a file range's device memory, held briefly.
class Pin {
 public:
  Pin() = default;
  Pin(std::shared_ptr<PinKeeper> keeper, uint64_t id, std::vector<std::span<const std::byte>> segments)
      : keeper_(std::move(keeper)), id_(id), segments_(std::move(segments)) {}
  Pin(Pin&&) noexcept = default;
  Pin& operator=(Pin&& o) noexcept;
  Pin(const Pin&) = delete;
  Pin& operator=(const Pin&) = delete;
  ~Pin() { release(); }

  bool is_pinned() const { return keeper_ != nullptr; }
  // The range in order, as pieces of device memory (holes as shared zeros).
  const std::vector<std::span<const std::byte>>& segments() const { return segments_; }
  void release();

 private:
  std::shared_ptr<PinKeeper> keeper_;
  uint64_t id_ = 0;
  std::vector<std::span<const std::byte>> segments_;
};

// Runs fn; if an access inside it to a poise mapping fails, returns that error
// (EIO: memory lost, with the file bytes; EFAULT: past the end of file; ESHUTDOWN:
// filesystem shut down or device removed) instead of raising SIGBUS. The failed
// access does not complete and fn does not resume, so fn should be plain loads and
// stores (memcpy and the like), not code that needs its destructors run.
Result<void> guarded(const std::function<void()>& fn);

}  // namespace poise
