// The FUSE mount (`poise serve IMAGE --mount DIR`, `poise mount IMAGE DIR`):
// ordinary programs use the filesystem through the kernel, with libfuse3's
// low-level API. Every request names inodes, and is answered by the mounted
// Filesystem's inode calls (lookup_at, create_at, ...): no request resolves a
// path, so a rename by another process can never redirect one.
//
// Permissions are the kernel's (`default_permissions`): it checks mode bits,
// owner and group against the attributes poise returns, as for a local
// filesystem; files a program creates belong to its uid and gid.
//
// What the kernel caches, and how poise keeps it honest:
// - attributes and names for `cache_seconds`, file pages for as long as it
//   likes (keep_cache); every change made by another path (the socket, the
//   CLI, an in-process caller) is reported by the filesystem's change listener
//   and the kernel's copy of exactly what changed is invalidated: the pages of
//   the changed range, the attributes, the name. Changes made through the mount
//   itself need none (the kernel made them to its own cache first). Stores
//   through a direct mapping (a library client's) have no such report: while
//   any direct mapping is live, each open drops the file's cached pages
//   instead, so the next open sees them;
// - when memory fails under a file, the kernel's cached copy of the failed
//   pages is first retrieved (FUSE_NOTIFY_RETRIEVE): a page whose bytes match
//   the checksum of what this mount last served or received for it is
//   exactly the file's content, and is written back to good memory
//   (Filesystem::restore_lost_block: nothing is lost). Then the kernel's pages
//   of exactly the failed range are invalidated, and a read of bytes that
//   could not be restored fails with EIO, as through the library. A page is
//   vouched for only by that checksum, never by the kernel: a page being read
//   in, or dirtied through a mapping, does not match and is not used;
// - before a removal (pre-remove), every page the kernel caches of every file
//   it knows is invalidated; after the removal every request fails with EIO.
//
// mmap through the mount maps the kernel's page-cache copy, not device memory
// (a FUSE filesystem cannot hand the kernel device pages): direct mappings are
// the library's (poise::connect) feature.
//
// Threads: a few workers read requests from /dev/fuse; one more thread sends
// invalidations (the failure flow only queues them, so it never waits on the
// kernel). Thread-safety: start() and the destructor on one thread; on_event()
// from any. Destroy it only while the filesystem is not frozen (a worker may
// wait in a freeze): cancel or finish a pending removal first.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "fuse/served_pages.h"
#include "poise/filesystem.h"

struct fuse_session;
struct fuse_conn_info;

namespace poise::fusemount {

struct MountOptions {
  std::string dir;     // the mount point: an existing directory
  std::string source;  // what mount(8) shows as the source: the image
  bool read_only = false;
  bool allow_other = false;  // other users may use the mount (checked by mode bits)
  // Device nodes and set-user/group-ID bits of the image take effect only when
  // asked for (-o dev, -o suid): an image is untrusted media (as mount(8)'s
  // "user" option and fusermount3 decide), so by default nodev,nosuid.
  bool dev = false;
  bool suid = false;
  // -o writeback: the kernel keeps written pages and sends them later, in
  // bigger requests (FUSE_CAP_WRITEBACK_CACHE). It then owns the file's size
  // and times until it writes back, and a write reaches poise (and a failure
  // of its memory, a removal, another path) only then: see the README.
  bool writeback = false;
  // The benchmark's switch: move data between the kernel and the server by
  // splice(2) where libfuse can (FUSE_CAP_SPLICE_*). Measured, not offered:
  // for writes neither way was faster from run to run.
  bool splice = false;
  double cache_seconds = 1.0;  // how long the kernel trusts names and attributes
  unsigned threads = 4;
  // Called once when the kernel ends the session by itself (umount,
  // fusermount3 -u), from a worker thread: the server then stops.
  std::function<void()> on_unmounted;
};

// What every poise mount asks of the kernel when the session starts (request
// sizes, timestamps, caching, ACLs, export, writeback and splice as
// `options` say): called from the session's init, and by the benchmark's
// null filesystem so that it runs with the same settings.
void configure_connection(fuse_conn_info* conn, const MountOptions& options);

// One worker thread of a session whose channel is non-blocking: takes and
// answers requests until `stop_fd` (an eventfd) is readable or the kernel ends
// the session. Returns true in the last case, having made `stop_fd` readable
// for the other workers.
bool serve_requests(fuse_session* session, int stop_fd);

class Mount {
 public:
  // Mounts and starts serving. EINVAL for a bad option, ENOTDIR, or the
  // error libfuse met (its message goes to standard error too).
  static Result<std::unique_ptr<Mount>> start(Filesystem& fs, MountOptions options);
  // Unmounts (lazily, if programs still use the mount: they then get ENOTCONN)
  // unless the kernel already has, and waits for every thread.
  ~Mount();
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;

  // The failure and removal flows (Filesystem::set_event_listener): the
  // kernel's cached pages of what failed, or of everything, are dropped.
  void on_event(const FsEvent& event);
  // Filesystem::set_change_listener: a change by another path than this mount.
  void on_change(const FsChange& change);
  // Waits until every invalidation queued so far has been sent (tests).
  void drain_invalidations();
  const std::string& dir() const { return options_.dir; }

  // Used by the request handlers (mount.cc).
  Filesystem& fs() { return fs_; }
  const MountOptions& options() const { return options_; }
  // The kernel got a reference to it. A special file is kept (Filesystem::retain)
  // while the kernel knows it: the kernel opens FIFOs and device nodes without
  // asking, so an unlinked one still in use must not be freed under it.
  void remember(uint64_t ino, bool special = false);
  void forget(uint64_t ino, uint64_t count);   // ... and dropped `count` of them
  // With -o writeback: whether the kernel keeps its own size of `ino` (it knows
  // the inode), so that no other path may change that file's size or data.
  bool kernel_owns_size(uint64_t ino);
  // Drops the kernel's pages and attributes of `ino` (asynchronously).
  void invalidate(uint64_t ino);
  // The pages the kernel got from this mount, for restores (ServedPages).
  ServedPages& served() { return served_; }
  // A retrieve's reply: the kernel's cached bytes from `offset`.
  void restore_from(uint64_t ino, uint64_t offset, std::span<const std::byte> cached);

 private:
  Mount(Filesystem& fs, MountOptions options) : fs_(fs), options_(std::move(options)) {}
  void serve_requests();
  void send_invalidations();
  struct Invalidation {
    uint64_t ino;
    int64_t offset;  // with length 0: every page from offset on; negative: attributes only
    int64_t length;
    std::string name;  // not empty: the name `name` in directory `ino` instead
    bool retrieve = false;  // ask for the kernel's cached pages instead (restore_from)
  };
  bool known(uint64_t ino);  // the kernel holds a reference to it
  // The whole pages holding file bytes [offset, +length) (length 0: to the end).
  static Invalidation pages_of(uint64_t ino, uint64_t offset, uint64_t length);
  void queue(std::vector<Invalidation> items);

  Filesystem& fs_;
  MountOptions options_;
  fuse_session* session_ = nullptr;
  int stop_fd_ = -1;  // an eventfd: readable once the workers must stop
  std::atomic<bool> ended_by_kernel_{false};
  std::vector<std::thread> workers_;

  std::mutex known_mutex_;
  std::unordered_map<uint64_t, uint64_t> known_;  // inode -> the kernel's references
  std::unordered_set<uint64_t> held_;  // special files retained while known (guarded by known_mutex_)

  ServedPages served_;  // what vouches for the kernel's cached pages (restore_from)

  std::mutex inval_mutex_;
  std::condition_variable inval_cv_;
  std::deque<Invalidation> pending_;  // guarded by inval_mutex_
  bool inval_busy_ = false;           // guarded by inval_mutex_
  bool inval_stop_ = false;           // guarded by inval_mutex_
  std::thread invalidator_;
};

}  // namespace poise::fusemount
