// The parts of a `poise serve` client beside its requests (client.cc): the
// server's device as the client sees it, the client's pins (docs/protocol.md,
// "Pins": the read-only view of the device they read, frozen into private
// copies when the connection ends), and the connections beside the main one
// (the release channel gives pins back without waiting behind the client's
// own requests).
//
// Thread-safety: each class may be used from any thread.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "base/safe_copy.h"
#include "poise/device.h"
#include "poise/mapping.h"
#include "serve/protocol.h"

namespace poise::serve {

// The server's device as this process sees it: only the descriptor the server
// passed (read-only, or read-write once a writable mapping needed it), which
// the mapping layer maps page runs of. Nothing is read or written through it
// otherwise; the server writes back what mapped stores leave in the caches.
class ClientDevice final : public Device {
 public:
  explicit ClientDevice(std::string name) : name_(std::move(name)) {}
  ~ClientDevice() override {
    for (int fd : {ro_.load(), rw_.load()}) {
      if (fd >= 0) ::close(fd);
    }
  }
  void set_fd(int fd, bool writable) { (writable ? rw_ : ro_).store(fd, std::memory_order_release); }
  bool has_fd(bool writable) const { return writable ? rw_.load() >= 0 : map_fd() >= 0; }

  // The read-only view of the whole device that pins read (set once, by the
  // first pin); the fault handler turns a machine check in it into a report.
  void set_view(const std::byte* base, uint64_t size) {
    view_size_.store(size, std::memory_order_relaxed);
    view_.store(base, std::memory_order_release);
  }
  uint64_t size_bytes() const override {
    return view_.load(std::memory_order_acquire) != nullptr ? view_size_.load(std::memory_order_relaxed) : UINT64_MAX;
  }
  PersistenceDomain domain() const override { return PersistenceDomain::PageCache; }
  uint64_t alignment_bytes() const override { return 4096; }
  std::string describe() const override { return name_; }
  const std::byte* data() const override { return view_.load(std::memory_order_acquire); }
  std::byte* data() override { return nullptr; }  // never written
  int map_fd() const override {
    int rw = rw_.load(std::memory_order_acquire);
    return rw >= 0 ? rw : ro_.load(std::memory_order_acquire);
  }
  void write(uint64_t, const void*, size_t) override { POISE_ASSERT(false && "a client never writes the device"); }
  void fill(uint64_t, int, size_t) override { POISE_ASSERT(false && "a client never writes the device"); }
  void flush(uint64_t, size_t) override {}
  void drain() override {}
  Result<void> sync() override { return {}; }

 private:
  std::string name_;
  std::atomic<int> ro_{-1}, rw_{-1};
  std::atomic<const std::byte*> view_{nullptr};
  std::atomic<uint64_t> view_size_{0};
};

// A connected stream socket to the server at `path`.
Result<int> connect_socket(const std::string& path);

// Another connection to the server, attached to the client `token` names
// with `op` (Follow, ReleasePins): its descriptor once the server said yes.
Result<int> open_side_connection(const std::string& socket_path, Op op, uint64_t token, const std::string& what);

// The pins this client holds through the server, and the read-only view of
// the server's device their pieces lie in. Shared by the pins themselves: the
// view lives until the last pin goes, even past the connection. While the
// connection lives, the server's pin keeps the blocks from being freed or
// rewritten. When it ends (disconnect, the server died, or the server drops
// this client's pins and says so first), every pin still held is frozen: its
// pages of the view become private copies of what they showed (each run of
// pinned pages moved into place in one mremap), so a pin never shows bytes
// the blocks hold after their release.
class RemotePins final : public PinKeeper {
 public:
  RemotePins(std::byte* view, uint64_t size) : view_(view), size_(size) {}
  ~RemotePins() override { ::munmap(view_, size_); }
  RemotePins(const RemotePins&) = delete;
  RemotePins& operator=(const RemotePins&) = delete;

  const std::byte* view() const { return view_; }
  uint64_t size() const { return size_; }

  // Records pin `id` (its pieces: length, device offset), which `release`
  // gives back to the server. Refused once frozen: the connection is over.
  Result<void> add(uint64_t id, std::vector<std::pair<uint64_t, uint64_t>> pieces,
                   std::function<Result<void>(uint64_t)> release) {
    std::lock_guard lock(mu_);
    if (frozen_) return fail(ESHUTDOWN, "the poise server went away");
    if (!release_) release_ = std::move(release);
    held_[id] = std::move(pieces);
    return {};
  }
  void unpin(uint64_t id) override {
    std::function<Result<void>(uint64_t)> release;
    {
      std::lock_guard lock(mu_);
      if (held_.erase(id) == 0) return;
      if (!frozen_) release = release_;
    }
    // Told without the lock: a freeze (which must answer the server in time)
    // never waits for this round trip; the pin is no longer frozen by it.
    if (release) (void)release(id);  // the server's pin goes (or already went with the connection)
  }
  // Every pin still held becomes a private copy; later releases tell nobody.
  void freeze() {
    std::lock_guard lock(mu_);
    if (frozen_) return;
    frozen_ = true;
    release_ = nullptr;
    // The pinned pages of the view, merged (two pins may share a page).
    std::vector<std::pair<uint64_t, uint64_t>> pages;  // [first byte, end byte), page-aligned
    for (const auto& [id, pieces] : held_) {
      (void)id;
      for (const auto& [length, where] : pieces) {
        if (where == kPinZeros || length == 0) continue;
        pages.emplace_back(where / kPageBytes * kPageBytes, (where + length + kPageBytes - 1) / kPageBytes * kPageBytes);
      }
    }
    std::sort(pages.begin(), pages.end());
    std::vector<std::pair<uint64_t, uint64_t>> runs;
    for (const auto& p : pages) {
      if (!runs.empty() && p.first <= runs.back().second) {
        runs.back().second = std::max(runs.back().second, p.second);
      } else {
        runs.push_back(p);
      }
    }
    for (const auto& [first, end] : runs) {
      if (!freeze_run(first, end - first)) {
        // No memory for one copy of it all, or memory that fails to read: in
        // 2 MiB pieces, and a piece that still fails page by page, so that
        // only what cannot be copied stays as it is.
        constexpr uint64_t kPiece = 2ull << 20;
        for (uint64_t at = first; at < end; at += kPiece) {
          const uint64_t n = std::min(kPiece, end - at);
          if (n > kPageBytes && freeze_run(at, n)) continue;
          for (uint64_t page = at; page < at + n; page += kPageBytes) (void)freeze_run(page, kPageBytes);
        }
      }
    }
  }
  size_t count() const {
    std::lock_guard lock(mu_);
    return held_.size();
  }

 private:
  static constexpr uint64_t kPageBytes = 4096;
  // Bytes [at, +length) of the view (whole pages) become a private copy of
  // themselves, moved into place in one mremap: a reader sees the device's
  // bytes or the identical copy, never a gap. False if nothing changed.
  bool freeze_run(uint64_t at, uint64_t length) {
    void* copy = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (copy == MAP_FAILED) return false;
    if (copy_or_fault(copy, view_ + at, length).has_value() || ::mprotect(copy, length, PROT_READ) != 0 ||
        ::mremap(copy, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, view_ + at) == MAP_FAILED) {
      ::munmap(copy, length);
      return false;
    }
    return true;
  }

  std::byte* const view_;
  const uint64_t size_;
  mutable std::mutex mu_;
  bool frozen_ = false;
  std::function<Result<void>(uint64_t)> release_;  // tells the server (set by the first pin)
  std::map<uint64_t, std::vector<std::pair<uint64_t, uint64_t>>> held_;  // pin -> (length, device offset)
};

// The release channel: a second connection on which this client gives pins
// back, served by another server thread, so that an unpin never waits behind a
// request of this client (one that may itself wait for a pin). Shared with the
// pins' release calls, so a release racing the client's end finds it closed.
class ReleaseChannel {
 public:
  ReleaseChannel(std::string socket_path, uint64_t token) : socket_path_(std::move(socket_path)), token_(token) {}
  ~ReleaseChannel() { close(); }
  ReleaseChannel(const ReleaseChannel&) = delete;
  ReleaseChannel& operator=(const ReleaseChannel&) = delete;

  Result<void> open() {
    std::lock_guard lock(mu_);
    return open_locked();
  }
  // Gives pin `id` back; a channel that broke is opened again once.
  Result<void> unpin(uint64_t id) {
    std::lock_guard lock(mu_);
    if (closed_) return fail(ESHUTDOWN, "the poise server went away (not connected)");
    auto sent = unpin_locked(id);
    if (sent.has_value() || sent.error().code != ESHUTDOWN) return sent;
    TRY(open_locked());
    return unpin_locked(id);
  }
  void close() {
    std::lock_guard lock(mu_);
    closed_ = true;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  Result<void> open_locked() {
    if (closed_) return fail(ESHUTDOWN, "the poise server went away (not connected)");
    if (fd_ >= 0) return {};
    fd_ = TRY(open_side_connection(socket_path_, Op::ReleasePins, token_, "the release channel"));
    return {};
  }
  Result<void> unpin_locked(uint64_t id) {
    if (fd_ < 0) return fail(ESHUTDOWN, "the poise server went away (not connected)");
    Encoder request(Op::Unpin, ++next_);
    request.u64(id);
    Header h;
    std::vector<std::byte> body;
    int32_t status = -1;
    if (!send_frame(fd_, request.finish()) || !receive_frame(fd_, &h, &body) || h.op != Op::Unpin ||
        h.id != next_ || !Decoder(body).i32(&status)) {
      ::close(fd_);
      fd_ = -1;
      return fail(ESHUTDOWN, "the poise server went away");
    }
    return status == 0 ? Result<void>{} : fail(status, "unpin refused");
  }

  const std::string socket_path_;
  const uint64_t token_;
  std::mutex mu_;  // one unpin at a time
  int fd_ = -1;
  uint64_t next_ = 0;
  bool closed_ = false;
};

}  // namespace poise::serve
