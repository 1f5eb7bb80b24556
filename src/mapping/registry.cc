#include "mapping/registry.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "mapping/address_index.h"

namespace poise::mapping {

namespace {

constexpr int kFaultAttemptsMax = 16;
constexpr size_t kZeroBytes = 64 * 1024;
alignas(kPageSize) const std::byte kZeros[kZeroBytes] = {};

// The mapping whose access is being handled on this thread, so that its own
// notice says `consumed`.
thread_local uint64_t consuming_mapping = 0;

uint64_t ceil_pages(uint64_t bytes) { return (bytes + kPageSize - 1) / kPageSize; }

// Changes what the page tables show at [addr, +length). Called as a raw system
// call: it changes no byte of memory, only which memory the addresses reach (the
// kernel shoots down the TLBs before it returns), so it must not look like a
// store to tools that watch stores (TSan's mmap interceptor treats it as one).
void* remap(void* addr, size_t length, int prot, int flags, int fd, off_t offset) {
  long r = ::syscall(SYS_mmap, addr, length, prot, flags, fd, offset);
  return r == -1 ? MAP_FAILED : reinterpret_cast<void*>(r);
}

std::string bytes_text(uint64_t from, uint64_t to) {
  return std::to_string(from) + ".." + std::to_string(to);
}

}  // namespace

MappingRegistry::MappingRegistry(Device& device) : device_(device) {}

MappingRegistry::~MappingRegistry() {
  // Handles that outlive the filesystem keep their (dead, inaccessible) address
  // range until they are dropped; Mapping::unmap gives it back.
  std::vector<Notice> ignored;
  kill_all(MappingCause::Shutdown, &ignored);
  for (const auto& m : all_mappings()) unindex_address_range(m->va);
}

void MappingRegistry::attach(MappingBackend* backend) {
  std::unique_lock lock(backend_mutex_);
  backend_ = backend;
}

void MappingRegistry::detach(std::vector<Notice>* notices) {
  if (holds_any_pin()) {
    std::fputs("poise: a filesystem is being destroyed by a thread that still holds one of its pins; "
               "release the pin first (waiting would never end)\n",
               stderr);
    std::abort();
  }
  kill_all(MappingCause::Shutdown, notices);
  wait_for_all_pins();
  std::unique_lock lock(backend_mutex_);
  backend_ = nullptr;
}

MappingEvent MappingRegistry::event_for(const MapState& m, uint64_t first, uint64_t count,
                                        MappingCause cause) const {
  MappingEvent e;
  e.mapping_id = m.id;
  e.owner = m.owner->name;
  e.ino = m.ino;
  e.file_offset = (m.first_page + first) * kPageSize;
  e.length = count * kPageSize;
  e.cause = cause;
  e.consumed = consuming_mapping == m.id;
  return e;
}

void MappingRegistry::deliver(std::vector<Notice>& notices) {
  for (Notice& n : notices) {
    if (n.owner && n.owner->on_event) n.owner->on_event(n.event);
  }
  notices.clear();
}

// --- page tables ------------------------------------------------------------

Result<void> MappingRegistry::set_pages(MapState& m, uint64_t first, uint64_t count, PageState state,
                                        uint64_t dev_block) {
  if (count == 0) return {};
  void* addr = m.va + first * kPageSize;
  size_t length = count * kPageSize;
  void* p = MAP_FAILED;
  switch (state) {
    case PageState::Writable:
    case PageState::ReadOnly: {
      int prot = state == PageState::Writable ? PROT_READ | PROT_WRITE : PROT_READ;
      p = remap(addr, length, prot, MAP_SHARED | MAP_FIXED, device_.map_fd(),
                 static_cast<off_t>(dev_block * kPageSize));
      // A fork()ed child must never reach device memory: no revocation, freeze
      // or removal reaches its page tables, and the block may be freed and reused.
      if (p != MAP_FAILED && ::syscall(SYS_madvise, addr, length, MADV_DONTFORK) != 0) {
        int e = errno;
        (void)remap(addr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
        return fail(e, std::string("cannot keep device memory from forked children: ") + std::strerror(e));
      }
      break;
    }
    case PageState::Zero:
      p = remap(addr, length, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
      break;
    case PageState::Absent:
    case PageState::Lost:
    case PageState::Poisoned:
      p = remap(addr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) {
        // Out of mappings (vm.max_map_count): still cut off access. The device
        // memory stays mapped but unreachable; if even that fails, stopping is
        // the only way to keep the promise that freed memory is never reached.
        POISE_ASSERT(::mprotect(addr, length, PROT_NONE) == 0);
        p = addr;
      }
      break;
  }
  if (p == MAP_FAILED) {
    int e = errno;
    return fail(e, "cannot map " + std::to_string(length) + " bytes of device memory: " + std::strerror(e));
  }
  {
    std::lock_guard lock(mutex_);
    m.runs.set(first, count, state, dev_block, [&](const PageRun& run, bool added) { index_run(m, run, added); });
  }
  // A client process showing the same pages follows before anything proceeds.
  if (m.owner && m.owner->mirror) m.owner->mirror->pages_changed(first, count, static_cast<uint8_t>(state), dev_block);
  return {};
}

void MappingRegistry::index_run(MapState& m, const PageRun& run, bool added) {
  if (!on_device(run.state)) return;
  if (added) {
    by_device_.emplace(run.dev_block, DevEntry{&m, run.first, run.count, run.state});
    return;
  }
  auto [lo, hi] = by_device_.equal_range(run.dev_block);
  for (auto it = lo; it != hi; ++it) {
    if (it->second.map == &m && it->second.first == run.first) {
      by_device_.erase(it);
      return;
    }
  }
  POISE_ASSERT(false && "device index lost a run");
}

std::vector<std::shared_ptr<MapState>> MappingRegistry::mappings_of(InodeNumber ino) const {
  std::lock_guard lock(mutex_);
  auto it = by_file_.find(ino.value());
  return it == by_file_.end() ? std::vector<std::shared_ptr<MapState>>{} : it->second;
}

std::vector<std::shared_ptr<MapState>> MappingRegistry::all_mappings() const {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<MapState>> out;
  for (const auto& [ino, list] : by_file_) out.insert(out.end(), list.begin(), list.end());
  return out;
}

// --- map, unmap, sync -------------------------------------------------------

Result<Mapping> MappingRegistry::map(InodeNumber ino, uint64_t offset, uint64_t length, MapAccess access,
                                     std::shared_ptr<MapOwner> owner) {
  if (length == 0) return fail(EINVAL, "a mapping of zero bytes");
  if (offset > (1ull << 50) || length > (1ull << 50)) return fail(EFBIG, "mapping beyond the 1 PiB file size limit");
  if (device_.map_fd() < 0) {
    return fail(ENOTSUP, device_.describe() + ": files on it cannot be mapped directly (no shareable memory)");
  }
  if (device_.alignment_bytes() > kPageSize) {
    return fail(ENOTSUP, device_.describe() + ": its " + std::to_string(device_.alignment_bytes()) +
                             "-byte alignment cannot map single 4 KiB blocks");
  }
  if (device_.state() != DeviceState::Alive) return fail(ENXIO, device_.describe() + ": the device is being removed");
  if (suspended()) return fail(EAGAIN, "the device is about to be removed: no new mappings");
  if (!owner) owner = std::make_shared<MapOwner>(MapOwner{"anonymous", {}});

  std::shared_lock backend_lock(backend_mutex_);
  if (backend_ == nullptr) return fail(ESHUTDOWN, "filesystem is not mounted");
  const uint64_t first = offset / kPageSize;
  const uint64_t pages = ceil_pages(offset + length) - first;
  TRY(backend_->retain(ino));
  auto made = new_state(ino, first, pages, access, std::move(owner));
  if (!made.has_value()) {
    backend_->release(ino);
    return Unexpected<Error>(std::move(made).error());
  }
  std::shared_ptr<MapState> m = std::move(*made);
  void* va = m->va;
  {
    std::lock_guard lock(mutex_);
    if (all_killed_) {  // shut down (or removed) while this mapping was being made
      ::munmap(va, pages * kPageSize);
      backend_->release(ino);
      return fail(ESHUTDOWN, "filesystem has shut down");
    }
    by_file_[ino.value()].push_back(m);
    live_mappings_.fetch_add(1, std::memory_order_release);
  }
  index_address_range(m->va, pages * kPageSize, m);

  // Show the whole range now: one mmap per extent, no fault on first access.
  Result<void> installed = {};
  auto shown = backend_->with_layout(ino, first, pages, access == MapAccess::ReadWrite,
                                     [&](uint64_t, std::span<const PageExtent> layout) {
                                       std::lock_guard lock(m->mu);
                                       // Killed meanwhile: no live page may appear in it.
                                       if (suspended() || m->dead) return;
                                       for (const PageExtent& e : layout) {
                                         auto r = set_pages(*m, e.first_page - first, e.count, e.state, e.dev_block);
                                         if (!r.has_value()) installed = std::move(r);
                                       }
                                     });
  if (!shown.has_value() || !installed.has_value()) {
    backend_lock.unlock();
    unmap(m);
    return Unexpected<Error>(!shown.has_value() ? std::move(shown).error() : std::move(installed).error());
  }
  return Mapping(m);
}

void MappingRegistry::unmap(const std::shared_ptr<MapState>& m) {
  {
    std::lock_guard lock(m->mu);
    if (m->unmapped) return;
    m->unmapped = true;
    std::lock_guard index_lock(mutex_);
    m->runs.visit(0, m->pages, [&](const PageRun& run) { index_run(*m, run, false); });
    m->runs = PageRuns(0);
    auto& list = by_file_[m->ino.value()];
    list.erase(std::remove(list.begin(), list.end(), m), list.end());
    if (list.empty()) by_file_.erase(m->ino.value());
    live_mappings_.fetch_sub(1, std::memory_order_release);
    m->dead = true;
  }
  unindex_address_range(m->va);
  ::munmap(m->va, m->pages * kPageSize);
  if (forwarder_ != nullptr) {
    {
      std::lock_guard lock(mutex_);
      followers_.erase(m->id);
    }
    forwarder_->unmapped(*m);
    return;
  }
  std::shared_lock backend_lock(backend_mutex_);
  if (backend_ != nullptr) backend_->release(m->ino);
}

Result<std::shared_ptr<MapState>> MappingRegistry::new_state(InodeNumber ino, uint64_t first, uint64_t pages,
                                                            MapAccess access, std::shared_ptr<MapOwner> owner) {
  void* va = ::mmap(nullptr, pages * kPageSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (va == MAP_FAILED) {
    return fail(ENOMEM, "no address space for a mapping of " + std::to_string(pages * kPageSize) + " bytes");
  }
  auto m = std::make_shared<MapState>();
  m->id = next_id_.fetch_add(1);
  m->owner = std::move(owner);
  m->ino = ino;
  m->first_page = first;
  m->pages = pages;
  m->access = access;
  m->va = static_cast<std::byte*>(va);
  m->registry = weak_from_this();
  m->runs = PageRuns(pages);
  return m;
}

// --- follower registries (poise serve clients) --------------------------------

Result<Mapping> MappingRegistry::map_follower(InodeNumber ino, uint64_t offset, uint64_t length, MapAccess access,
                                              std::shared_ptr<MapOwner> owner) {
  POISE_ASSERT(forwarder_ != nullptr);
  if (length == 0) return fail(EINVAL, "a mapping of zero bytes");
  if (offset > (1ull << 50) || length > (1ull << 50)) return fail(EFBIG, "mapping beyond the 1 PiB file size limit");
  if (!owner) owner = std::make_shared<MapOwner>(MapOwner{"anonymous", {}, nullptr});
  const uint64_t first = offset / kPageSize;
  const uint64_t pages = ceil_pages(offset + length) - first;
  std::shared_ptr<MapState> m = TRY(new_state(ino, first, pages, access, std::move(owner)));
  void* va = m->va;
  {
    std::lock_guard lock(mutex_);
    if (all_killed_) {
      ::munmap(va, pages * kPageSize);
      return fail(ESHUTDOWN, "the connection to the poise server is closed");
    }
    by_file_[ino.value()].push_back(m);
    followers_[m->id] = m;
    live_mappings_.fetch_add(1, std::memory_order_release);
  }
  index_address_range(m->va, pages * kPageSize, m);
  return Mapping(m);
}

Result<void> MappingRegistry::follow(uint64_t id, uint64_t first, uint64_t count, PageState state, uint64_t dev_block) {
  std::shared_ptr<MapState> m;
  {
    std::lock_guard lock(mutex_);
    auto it = followers_.find(id);
    if (it != followers_.end()) m = it->second.lock();
  }
  if (!m) return {};  // unmapped here meanwhile: nothing shows the pages
  std::lock_guard lock(m->mu);
  if (m->dead || first > m->pages || count > m->pages - first) return {};
  return set_pages(*m, first, count, state, dev_block);
}

void MappingRegistry::follow_death(uint64_t id, MappingCause cause) {
  std::shared_ptr<MapState> m;
  {
    std::lock_guard lock(mutex_);
    auto it = followers_.find(id);
    if (it != followers_.end()) m = it->second.lock();
  }
  if (!m) return;
  std::lock_guard lock(m->mu);
  if (m->dead) return;
  (void)set_pages(*m, 0, m->pages, PageState::Absent, 0);
  m->dead = true;
  m->dead_cause = cause;
}

std::shared_ptr<MapOwner> MappingRegistry::owner_of(uint64_t id) const {
  std::lock_guard lock(mutex_);
  auto it = followers_.find(id);
  if (it == followers_.end()) return nullptr;
  auto m = it->second.lock();
  return m ? m->owner : nullptr;
}

void MappingRegistry::flush_writable_locked(MapState& m) {
  m.runs.visit(0, m.pages, [&](const PageRun& run) {
    if (run.state == PageState::Writable) device_.flush(run.dev_block * kPageSize, run.count * kPageSize);
  });
}

Result<void> MappingRegistry::sync(MapState& m) {
  {
    std::lock_guard lock(m.mu);
    if (m.dead) return fail(ESHUTDOWN, "mapping is dead");
    if (forwarder_ == nullptr) flush_writable_locked(m);
  }
  // A client's stores are the server's to write back: the cache lines are the
  // same whichever process's mapping flushes them.
  if (forwarder_ != nullptr) return forwarder_->sync(m);
  if (device_.domain() == PersistenceDomain::PageCache) return device_.sync();
  device_.drain();
  return {};
}

void MappingRegistry::flush_writable(std::optional<InodeNumber> ino) {
  for (const auto& m : ino ? mappings_of(*ino) : all_mappings()) {
    std::lock_guard lock(m->mu);
    flush_writable_locked(*m);
  }
}

// --- pins -------------------------------------------------------------------

Result<Pin> MappingRegistry::pin(InodeNumber ino, uint64_t offset, uint64_t length) {
  if (length == 0) return fail(EINVAL, "a pin of zero bytes");
  if (offset > (1ull << 50) || length > (1ull << 50)) return fail(EFBIG, "pin beyond the 1 PiB file size limit");
  if (device_.state() != DeviceState::Alive) return fail(ENXIO, device_.describe() + ": the device is being removed");
  // Removal waits for every pin to go: none may start once it is announced.
  if (suspended()) return fail(EAGAIN, "the device is about to be removed: no new pins");
  std::shared_lock backend_lock(backend_mutex_);
  if (backend_ == nullptr) return fail(ESHUTDOWN, "filesystem is not mounted");
  const uint64_t first = offset / kPageSize;
  const uint64_t count = ceil_pages(offset + length) - first;
  std::vector<std::span<const std::byte>> segments;
  Result<void> refused = {};
  uint64_t id = 0;
  TRY(backend_->retain(ino));  // the file outlives the pin, as it does an open File
  auto layout_seen = backend_->with_layout(ino, first, count, false, [&](uint64_t eof_page, std::span<const PageExtent> layout) {
    if (first + count > eof_page) {
      refused = fail(EINVAL, "pin reaches past the end of the file");
      return;
    }
    for (const PageExtent& e : layout) {
      uint64_t from = std::max(offset, e.first_page * kPageSize);
      uint64_t to = std::min(offset + length, (e.first_page + e.count) * kPageSize);
      if (e.state == PageState::Lost || e.state == PageState::Poisoned) {
        refused = fail(EIO, "file bytes " + bytes_text(from, to) + " are lost (device block " +
                                std::to_string(e.dev_block) + " failed)");
        return;
      }
      if (e.state == PageState::Zero) {
        for (uint64_t at = from; at < to; at += kZeroBytes) segments.emplace_back(kZeros, std::min(kZeroBytes, to - at));
        continue;
      }
      const std::byte* base = device_.data() + e.dev_block * kPageSize;
      segments.emplace_back(base + (from - e.first_page * kPageSize), to - from);
    }
    std::lock_guard lock(mutex_);
    if (all_killed_) {
      refused = fail(ESHUTDOWN, "filesystem has shut down");
      return;
    }
    id = next_id_.fetch_add(1);
    pins_[ino.value()].push_back(PinEntry{id, first, count, std::this_thread::get_id()});
    pin_files_[id] = ino.value();
    live_pins_.fetch_add(1, std::memory_order_release);
  });
  if (!layout_seen.has_value() || !refused.has_value()) {
    backend_->release(ino);
    return Unexpected<Error>(!layout_seen.has_value() ? std::move(layout_seen).error() : std::move(refused).error());
  }
  return Pin(shared_from_this(), id, std::move(segments));
}

void MappingRegistry::unpin(uint64_t id) {
  uint64_t ino = 0;
  {
    std::lock_guard lock(mutex_);
    auto f = pin_files_.find(id);
    POISE_ASSERT(f != pin_files_.end());
    ino = f->second;
    pin_files_.erase(f);
    live_pins_.fetch_sub(1, std::memory_order_release);
    auto& list = pins_[ino];
    list.erase(std::remove_if(list.begin(), list.end(), [&](const PinEntry& p) { return p.id == id; }), list.end());
    if (list.empty()) pins_.erase(ino);
  }
  pins_released_.notify_all();
  std::shared_lock backend_lock(backend_mutex_);
  if (backend_ != nullptr) backend_->release(InodeNumber(ino));
}

void MappingRegistry::wait_for_all_pins() {
  std::unique_lock lock(mutex_);
  pins_released_.wait(lock, [&] { return pin_files_.empty(); });
}

void MappingRegistry::wait_for_pins(InodeNumber ino, uint64_t first, uint64_t count) {
  // Pins are taken under the inode's lock, which every caller holds exclusively:
  // none appears meanwhile, so "none at all" needs no lock (the write path).
  if (live_pins_.load(std::memory_order_acquire) == 0) return;
  std::unique_lock lock(mutex_);
  pins_released_.wait(lock, [&] {
    auto it = pins_.find(ino.value());
    if (it == pins_.end()) return true;
    return std::none_of(it->second.begin(), it->second.end(), [&](const PinEntry& p) {
      return p.first < first + count && first < p.first + p.count;
    });
  });
}

bool MappingRegistry::holds_pin(InodeNumber ino) const {
  if (live_pins_.load(std::memory_order_acquire) == 0) return false;
  std::lock_guard lock(mutex_);
  auto it = pins_.find(ino.value());
  if (it == pins_.end()) return false;
  auto me = std::this_thread::get_id();
  return std::any_of(it->second.begin(), it->second.end(), [&](const PinEntry& p) { return p.thread == me; });
}

bool MappingRegistry::holds_any_pin() const {
  if (live_pins_.load(std::memory_order_acquire) == 0) return false;
  std::lock_guard lock(mutex_);
  auto me = std::this_thread::get_id();
  for (const auto& [ino, entries] : pins_) {
    for (const PinEntry& p : entries) {
      if (p.thread == me) return true;
    }
  }
  return false;
}

size_t MappingRegistry::pin_count() const {
  std::lock_guard lock(mutex_);
  return pin_files_.size();
}

size_t MappingRegistry::mapping_count() const { return live_mappings_.load(std::memory_order_acquire); }

// --- revocation -------------------------------------------------------------

void MappingRegistry::for_each_overlap(InodeNumber ino, uint64_t first, uint64_t count,
                                       const std::function<void(MapState&, uint64_t, uint64_t)>& fn) {
  if (live_mappings_.load(std::memory_order_acquire) == 0) return;  // the common case: nothing mapped
  for (const auto& m : mappings_of(ino)) {
    std::lock_guard lock(m->mu);
    if (m->dead) continue;
    uint64_t s = std::max(first, m->first_page);
    uint64_t e = std::min(first + count, m->first_page + m->pages);
    if (s < e) fn(*m, s, e);
  }
}

void MappingRegistry::invalidate(InodeNumber ino, uint64_t first, uint64_t count) {
  // Lost pages stay lost until the file itself replaces the block; then the
  // layout says so and the next access installs the new block.
  for_each_overlap(ino, first, count, [&](MapState& m, uint64_t s, uint64_t e) {
    (void)set_pages(m, s - m.first_page, e - s, PageState::Absent, 0);
  });
}

void MappingRegistry::write_protect(InodeNumber ino, uint64_t first, uint64_t count) {
  for_each_overlap(ino, first, count, [&](MapState& m, uint64_t s, uint64_t e) {
    std::vector<PageRun> writable;
    m.runs.visit(s - m.first_page, e - s, [&](const PageRun& run) {
      if (run.state == PageState::Writable) writable.push_back(run);
    });
    for (const PageRun& run : writable) {
      device_.flush(run.dev_block * kPageSize, run.count * kPageSize);  // stores so far reach the media
      if (!set_pages(m, run.first, run.count, PageState::ReadOnly, run.dev_block).has_value()) {
        (void)set_pages(m, run.first, run.count, PageState::Absent, 0);  // no mapping left: revoke instead
      }
    }
  });
}

void MappingRegistry::mark_lost(InodeNumber ino, uint64_t first, uint64_t count, uint64_t dev_block,
                                std::vector<Notice>* notices) {
  for_each_overlap(ino, first, count, [&](MapState& m, uint64_t s, uint64_t e) {
    (void)set_pages(m, s - m.first_page, e - s, PageState::Lost, dev_block + (s - first));
    notices->push_back(Notice{m.owner, event_for(m, s - m.first_page, e - s, MappingCause::MemoryFailure)});
  });
}

bool MappingRegistry::maps_file(InodeNumber ino) const {
  if (live_mappings_.load(std::memory_order_acquire) == 0) return false;
  std::lock_guard lock(mutex_);
  return by_file_.contains(ino.value());
}

void MappingRegistry::suspend_all(std::vector<Notice>* notices) {
  suspended_.store(true, std::memory_order_release);
  for (const auto& m : all_mappings()) {
    std::lock_guard lock(m->mu);
    if (m->dead) continue;
    flush_writable_locked(*m);
    (void)set_pages(*m, 0, m->pages, PageState::Absent, 0);
    notices->push_back(Notice{m->owner, event_for(*m, 0, m->pages, MappingCause::DeviceRemoval)});
  }
}

void MappingRegistry::resume_all() { suspended_.store(false, std::memory_order_release); }

void MappingRegistry::kill_all(MappingCause cause, std::vector<Notice>* notices) {
  {
    std::lock_guard lock(mutex_);  // a mapping registered from here on is refused
    all_killed_ = true;
  }
  for (const auto& m : all_mappings()) {
    std::lock_guard lock(m->mu);
    if (m->dead) continue;
    (void)set_pages(*m, 0, m->pages, PageState::Absent, 0);
    m->dead = true;
    m->dead_cause = cause;
    if (m->owner && m->owner->mirror) m->owner->mirror->died(cause);
    notices->push_back(Notice{m->owner, event_for(*m, 0, m->pages, cause)});
  }
}

void MappingRegistry::poison_planted(uint64_t offset, uint64_t length) {
  const uint64_t b0 = offset / kPageSize;
  const uint64_t b1 = ceil_pages(offset + length);
  struct Hit {
    std::shared_ptr<MapState> map;
    uint64_t first, count;
  };
  std::vector<Hit> hits;
  {
    std::lock_guard lock(mutex_);
    for (auto it = by_device_.lower_bound(b0 >= kDeviceRunPagesMax ? b0 - kDeviceRunPagesMax : 0);
         it != by_device_.end() && it->first < b1; ++it) {
      const DevEntry& d = it->second;
      uint64_t s = std::max(b0, it->first);
      uint64_t e = std::min(b1, it->first + d.count);
      if (s >= e || d.state == PageState::Poisoned || d.state == PageState::Lost) continue;
      for (const auto& m : by_file_[d.map->ino.value()]) {
        if (m.get() == d.map) hits.push_back(Hit{m, d.first + (s - it->first), e - s});
      }
    }
  }
  for (const Hit& h : hits) {
    std::lock_guard lock(h.map->mu);
    if (h.map->dead) continue;
    std::vector<PageRun> showing;  // collected first: set_pages changes the runs
    h.map->runs.visit(h.first, h.count, [&](const PageRun& run) {
      if (run.state == PageState::ReadOnly || run.state == PageState::Writable) showing.push_back(run);
    });
    for (const PageRun& run : showing) (void)set_pages(*h.map, run.first, run.count, PageState::Poisoned, run.dev_block);
  }
}

std::vector<MappingRegistry::ShownRun> MappingRegistry::shown_runs(uint64_t first_block, uint64_t count) const {
  std::vector<ShownRun> out;
  std::lock_guard lock(mutex_);
  uint64_t b0 = first_block;
  uint64_t b1 = count > UINT64_MAX - first_block ? UINT64_MAX : first_block + count;
  for (auto it = by_device_.lower_bound(b0 >= kDeviceRunPagesMax ? b0 - kDeviceRunPagesMax : 0);
       it != by_device_.end() && it->first < b1; ++it) {
    const DevEntry& d = it->second;
    if (it->first + d.count <= b0) continue;
    out.push_back(ShownRun{d.map->id, d.map->ino, d.map->first_page + d.first, it->first, d.count, d.state});
  }
  return out;
}

std::vector<BadRange> MappingRegistry::device_ranges(MapState& m, uintptr_t addr, uint64_t length) {
  std::vector<BadRange> out;
  std::lock_guard lock(m.mu);
  if (m.unmapped) return out;
  auto base = reinterpret_cast<uintptr_t>(m.va);
  uint64_t first = (std::max(addr, base) - base) / kPageSize;
  uint64_t end = std::min<uint64_t>(m.pages, ceil_pages(addr + length - base));
  if (first >= end) return out;
  m.runs.visit(first, end - first, [&](const PageRun& run) {
    if (on_device(run.state)) out.push_back(BadRange{run.dev_block * kPageSize, run.count * kPageSize});
  });
  return out;
}

// --- faults -----------------------------------------------------------------

Result<void> MappingRegistry::resolve(const std::shared_ptr<MapState>& m, uint64_t page, bool* beyond_eof) {
  std::shared_lock backend_lock(backend_mutex_);
  if (backend_ == nullptr) return fail(ESHUTDOWN, "filesystem is not mounted");
  TRY(backend_->wait_until_thawed());
  PageRun run;
  {
    std::lock_guard lock(m->mu);
    if (m->dead) return fail(ESHUTDOWN, "the mapping is dead");
    run = m->runs.at(page);
  }
  if (run.state != PageState::Absent) return {};  // another thread got there first
  const bool writable = m->access == MapAccess::ReadWrite;
  Result<void> installed = {};
  TRY(backend_->with_layout(m->ino, m->first_page + run.first, run.count, writable,
                            [&](uint64_t eof_page, std::span<const PageExtent> layout) {
                              std::lock_guard lock(m->mu);
                              if (m->dead || suspended()) return;
                              if (m->first_page + page >= eof_page) {
                                *beyond_eof = true;
                                return;
                              }
                              for (const PageExtent& e : layout) {
                                auto r = set_pages(*m, e.first_page - m->first_page, e.count, e.state, e.dev_block);
                                if (!r.has_value()) installed = std::move(r);
                              }
                            }));
  return installed;
}

FaultOutcome MappingRegistry::handle_fault(const std::shared_ptr<MapState>& m, uintptr_t addr, bool is_write) {
  auto failed = [](int code, std::string message, bool lost = false) {
    return FaultOutcome{FaultOutcome::Failed, code, lost, std::move(message)};
  };
  const uint64_t page = (addr - reinterpret_cast<uintptr_t>(m->va)) / kPageSize;
  const uint64_t file_byte = (m->first_page + page) * kPageSize;
  if (forwarder_ != nullptr) {  // a poise serve client: the server decides
    {
      std::lock_guard lock(m->mu);
      if (m->dead) return failed(ESHUTDOWN, std::string("mapping is dead: ") + to_string(m->dead_cause));
    }
    return forwarder_->forward_fault(*m, page, is_write);
  }
  for (int attempt = 0; attempt < kFaultAttemptsMax; ++attempt) {
    PageRun run;
    MappingCause cause;
    {
      std::lock_guard lock(m->mu);
      if (m->dead) {
        cause = m->dead_cause;
        return failed(ESHUTDOWN, std::string("mapping ") + std::to_string(m->id) + " is dead: " + to_string(cause));
      }
      run = m->runs.at(page);
    }
    switch (run.state) {
      case PageState::Writable:
        return FaultOutcome{};  // already fixed by another thread: retry the access
      case PageState::ReadOnly:
      case PageState::Zero: {
        if (!is_write) return FaultOutcome{};
        if (m->access == MapAccess::Read) return FaultOutcome{FaultOutcome::NotOurs};
        {
          std::shared_lock backend_lock(backend_mutex_);
          if (backend_ == nullptr) return failed(ESHUTDOWN, "filesystem is not mounted");
          auto prepared = backend_->prepare_write(m->ino, m->first_page + page);
          if (!prepared.has_value()) {
            const Error& e = prepared.error();
            return failed(e.code == EIO ? EIO : e.code == ENOSPC ? ENOSPC : e.code == EFAULT ? EFAULT : ESHUTDOWN,
                          "store to file byte " + std::to_string(file_byte) + " refused: " + e.message,
                          e.code == EIO);
          }
        }
        std::lock_guard lock(m->mu);  // show the page's new block on the next round
        if (!m->dead && m->runs.at(page).state == run.state) (void)set_pages(*m, page, 1, PageState::Absent, 0);
        continue;
      }
      case PageState::Absent: {
        bool beyond = false;
        auto resolved = resolve(m, page, &beyond);
        if (!resolved.has_value()) {
          const Error& e = resolved.error();
          return failed(e.code == ENOENT ? ESHUTDOWN : e.code, e.message);
        }
        if (beyond) return failed(EFAULT, "file byte " + std::to_string(file_byte) + " is past the end of the file");
        continue;
      }
      case PageState::Lost:
        return failed(EIO, "file bytes " + bytes_text(file_byte, file_byte + kPageSize) + " are lost (device block " +
                               std::to_string(run.dev_block) + " failed)", true);
      case PageState::Poisoned: {
        // A consumed machine check: the failure flow revokes the page everywhere
        // and tells every owner; this access gets the error.
        uint64_t dev = run.dev_block;
        {
          std::shared_lock backend_lock(backend_mutex_);
          if (backend_ == nullptr) return failed(ESHUTDOWN, "filesystem is not mounted");
          consuming_mapping = m->id;
          (void)backend_->consume_poison(dev * kPageSize, kPageSize);
          consuming_mapping = 0;
        }
        return failed(EIO, "file bytes " + bytes_text(file_byte, file_byte + kPageSize) + " are lost (device block " +
                               std::to_string(dev) + " is poisoned)", true);
      }
    }
  }
  return failed(EAGAIN, "file byte " + std::to_string(file_byte) + ": its layout kept changing under the access");
}

FaultOutcome MappingRegistry::machine_check(const std::shared_ptr<MapState>& m, uintptr_t addr, uint64_t length,
                                            bool action_required) {
  consuming_mapping = action_required ? m->id : 0;
  for (const BadRange& r : device_ranges(*m, addr, length)) {
    (void)device_.notify_failure(r.offset_bytes, r.length_bytes,
                                 action_required ? FailureFlags::ActionRequired : FailureFlags::None);
  }
  consuming_mapping = 0;
  if (!action_required) return FaultOutcome{};
  auto base = reinterpret_cast<uintptr_t>(m->va);
  uint64_t file_byte = (m->first_page + (std::max(addr, base) - base) / kPageSize) * kPageSize;
  return FaultOutcome{FaultOutcome::Failed, EIO, true,
                      "machine check: file bytes " + bytes_text(file_byte, file_byte + length) + " are lost"};
}

// --- handles ----------------------------------------------------------------

}  // namespace poise::mapping

namespace poise {

const char* to_string(MappingCause cause) {
  switch (cause) {
    case MappingCause::MemoryFailure: return "memory failure";
    case MappingCause::DeviceRemoval: return "device removal";
    case MappingCause::Shutdown: return "filesystem shut down";
  }
  return "unknown";
}

Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    unmap();
    state_ = std::move(o.state_);
  }
  return *this;
}

std::byte* Mapping::data() const { return state_ ? state_->va : nullptr; }
size_t Mapping::size() const { return state_ ? state_->pages * mapping::kPageSize : 0; }
uint64_t Mapping::file_offset() const { return state_ ? state_->first_page * mapping::kPageSize : 0; }
uint64_t Mapping::id() const { return state_ ? state_->id : 0; }

const MapOwner* Mapping::owner() const { return state_ ? state_->owner.get() : nullptr; }
MapAccess Mapping::access() const { return state_ ? state_->access : MapAccess::Read; }

Result<void> Mapping::sync() {
  if (!state_) return fail(EINVAL, "not mapped");
  auto registry = state_->registry.lock();
  if (!registry) return fail(ESHUTDOWN, "filesystem is gone");
  return registry->sync(*state_);
}

void Mapping::unmap() {
  if (!state_) return;
  if (auto registry = state_->registry.lock()) {
    registry->unmap(state_);
  } else {
    std::lock_guard lock(state_->mu);
    if (!state_->unmapped) ::munmap(state_->va, state_->pages * mapping::kPageSize);
    state_->unmapped = true;
  }
  state_.reset();
}

Pin& Pin::operator=(Pin&& o) noexcept {
  if (this != &o) {
    release();
    keeper_ = std::move(o.keeper_);
    id_ = o.id_;
    segments_ = std::move(o.segments_);
  }
  return *this;
}

void Pin::release() {
  if (!keeper_) return;
  keeper_->unpin(id_);
  keeper_.reset();
  segments_.clear();
}

}  // namespace poise
