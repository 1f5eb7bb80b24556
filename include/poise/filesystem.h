// poise's public filesystem API: format a device, mount it, and work with files
// and directories by path or by inode number; reflink and clone ranges; ask the
// reverse map who owns any stretch of the device (fsmap); check consistency.
//
// Paths are absolute within the filesystem ("/a/b"; a missing leading slash is
// allowed), components are 1..255 bytes with no '/' or NUL, and "." and ".."
// are resolved. Errors are errno values: ENOENT, EEXIST, ENOTDIR, EISDIR,
// ENOTEMPTY, EINVAL, ENAMETOOLONG, ENOSPC, EFBIG, EIO, EUCLEAN (corrupt
// metadata, with the check that failed), EBADMSG (bad checksum), ENOTSUP
// (newer format), EROFS (read-only mount), EBUSY.
//
// Durability: every namespace and metadata operation is atomic and durable
// when it returns (its journal transaction is fenced). Data written in place
// to existing blocks is durable after fsync() or sync(); data written into new
// blocks is durable with the operation that maps them.
//
// Thread-safety: a Filesystem may be used from any number of threads;
// operations on different files run in parallel. A File is used by one thread
// at a time; close it before unmounting.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "poise/device.h"
#include "poise/mapping.h"
#include "poise/result.h"
#include "poise/types.h"

namespace poise {

class Clock;
class Filesystem;

struct FormatOptions {
  uint64_t journal_blocks = 0;  // 0: 1/64 of the device, 1..64 MiB
  Clock* clock = nullptr;       // nullptr: the real clock
  // The on-media format version: the current one (2, every metadata structure
  // in two copies) unless a test needs an older image (1, one copy), which a
  // read-write mount upgrades.
  uint32_t format_version = 0;  // 0: the current version
};

enum class MountMode : uint8_t { ReadWrite, ReadOnly };

struct MountOptions {
  MountMode mode = MountMode::ReadWrite;
  Clock* clock = nullptr;  // nullptr: the real clock
  uint32_t uid = 0;        // owner of new files
  uint32_t gid = 0;
  // A read-write mount of a version 1 image (one copy of the metadata) adds the
  // second copies and writes version 2, which older poise releases do not read.
  // false keeps the image at version 1.
  bool upgrade_format = true;
};

enum class OpenFlags : uint32_t { None = 0, Create = 1, Exclusive = 2, Truncate = 4 };
constexpr OpenFlags operator|(OpenFlags a, OpenFlags b) {
  return OpenFlags(uint32_t(a) | uint32_t(b));
}
constexpr bool has(OpenFlags set, OpenFlags flag) { return (uint32_t(set) & uint32_t(flag)) != 0; }

enum class FallocateMode : uint8_t { ExtendSize, KeepSize };
// What Filesystem::seek looks for (lseek's SEEK_DATA and SEEK_HOLE).
enum class SeekTarget : uint8_t { Data, Hole };

// rename_at: NoReplace fails with EEXIST if the destination exists (RENAME_NOREPLACE).
// NoReplace: EEXIST if the destination exists. Exchange: both names must exist,
// and swap the inodes they name atomically (renameat2's RENAME_EXCHANGE).
enum class RenameFlags : uint8_t { None, NoReplace, Exchange };

// set_xattr: Create fails with EEXIST if the attribute exists (XATTR_CREATE),
// Replace with ENODATA if it does not (XATTR_REPLACE).
enum class XattrMode : uint8_t { Either, Create, Replace };

// What set_attributes changes; an empty field is left as it is. The change
// time is always set to now.
struct SetAttributes {
  static constexpr int64_t kNow = INT64_MIN;  // a time field set to the filesystem's clock
  std::optional<uint32_t> mode;  // permission bits only (07777)
  std::optional<uint32_t> uid;
  std::optional<uint32_t> gid;
  std::optional<int64_t> atime_ns;
  std::optional<int64_t> mtime_ns;
};

// The checker's findings: `problems` are inconsistencies; `notes` are things a
// later write repairs by itself (a stale superblock copy after a crash).
struct CheckReport {
  std::vector<std::string> problems;
  std::vector<std::string> notes;
  uint64_t inodes = 0;
  uint64_t directories = 0;
  uint64_t extents = 0;
  uint64_t used_blocks = 0;
  uint64_t shared_blocks = 0;  // blocks with more than one owner
  uint64_t bad_blocks = 0;     // failed blocks, fenced off
  uint64_t free_blocks = 0;
  bool clean() const { return problems.empty(); }
};

// A change, for a cache kept outside the filesystem (the FUSE mount's kernel
// page, attribute and name caches): what a change listener is told.
struct FsChange {
  enum class Kind : uint8_t {
    Data,        // bytes [offset, +length) of file `ino` may differ (length 0: to the end)
    Attributes,  // the attributes of `ino` (size, times, mode, links) changed
    Entry,       // the name `name` in directory `ino` was added, removed or relinked
  };
  Kind kind = Kind::Attributes;
  InodeNumber ino;
  uint64_t offset = 0;
  uint64_t length = 0;
  std::string_view name;  // valid during the call only
};

// What the filesystem tells an event listener (poise serve's event stream):
// the failure and removal flows as they happen.
struct FsEvent {
  // Repaired: lost file bytes were put back from a copy (files: what, action: from where).
  enum class Kind : uint8_t { MemoryFailure, PreRemove, RemovalCancelled, Removed, Repaired };
  Kind kind = Kind::MemoryFailure;
  uint64_t device_offset = 0;  // MemoryFailure: the failed device bytes
  uint64_t length = 0;
  struct FileRange {
    InodeNumber ino;
    uint64_t file_offset = 0;
    uint64_t length = 0;
  };
  std::vector<FileRange> files;        // MemoryFailure: every owning file range (each reflink sharer); Repaired: what
  std::vector<std::string> metadata;   // MemoryFailure: metadata that lived there
  std::string action;                  // what was done
};
const char* to_string(FsEvent::Kind kind);

struct RepairOptions {
  // Repair a private copy-on-write view of the device and report what would
  // change; the device itself is not written.
  bool dry_run = false;
};

struct RepairReport {
  std::vector<std::string> changes;   // every change made (with dry_run: that would be made)
  std::vector<std::string> lost;      // what the repair had to drop: records, journal transactions
  std::vector<std::string> problems;  // what check still finds afterwards; empty: clean
  bool clean() const { return problems.empty(); }
};

// An open regular file. It keeps the file alive after its last name is unlinked;
// the blocks are freed when the last File closes.
class File {
 public:
  File() = default;
  File(Filesystem* fs, InodeNumber ino) : fs_(fs), ino_(ino) {}
  File(File&& o) noexcept : fs_(o.fs_), ino_(o.ino_) { o.fs_ = nullptr; }
  File& operator=(File&& o) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() { close(); }

  InodeNumber ino() const { return ino_; }
  bool is_open() const { return fs_ != nullptr; }
  Result<size_t> read(uint64_t offset, std::span<std::byte> out);
  Result<size_t> write(uint64_t offset, std::span<const std::byte> in);
  Result<void> truncate(uint64_t size_bytes);
  Result<void> fsync();
  Result<Stat> stat();
  void close();

 private:
  Filesystem* fs_ = nullptr;
  InodeNumber ino_;
};

class Filesystem {
 public:
  // Lays a new, empty filesystem on the device (destroys what was there).
  static Result<void> format(Device& device, const FormatOptions& options = {});
  // Mounts: verifies the superblocks and checkpoint, replays the journal and
  // rebuilds the reverse map. The device must outlive the Filesystem.
  static Result<std::unique_ptr<Filesystem>> mount(Device& device,
                                                   const MountOptions& options = {});
  // Verifies an unmounted device without writing to it.
  static Result<CheckReport> check_device(Device& device);

  // Offline repair of an unmounted image, in the spirit of xfs_repair and
  // e2fsck -y: damaged copies of metadata are rewritten from the good ones;
  // records that name missing inodes are dropped; directories cut off from the
  // root (a cycle) and files with no name move to /lost+found; link counts are
  // set to the names; blocks two files claim without a refcount record are kept
  // as copy-on-write sharing; written blocks past a file's end are unmapped;
  // journal transactions past damage in mid-log are reported (`lost`) with the
  // inodes they touched. Then a new checkpoint is written. Each change is a
  // journaled transaction: an interrupted repair leaves a consistent image, and
  // running it again goes on. Fails where the image cannot be read at all.
  static Result<RepairReport> repair(Device& device, const RepairOptions& options = {});
  // Whether either superblock copy carries poise's magic, valid or not: a device
  // that held a filesystem whose primary superblock is damaged still answers yes.
  static bool holds_filesystem(const Device& device);

  virtual ~Filesystem() = default;
  // Makes everything durable and lets go of the device. The journal already
  // holds every operation, so a checkpoint is written only when the journal is
  // more than half full (or no room is left for one: the journal keeps it all).
  // The Filesystem is unusable afterwards.
  virtual Result<void> unmount() = 0;
  // Writes a checkpoint now: the journal is emptied, and the next mount replays
  // nothing. ENOSPC if the device has no room for one (nothing is lost).
  // Auto writes an incremental checkpoint where it may: the journal since the
  // last checkpoint is appended to that checkpoint's delta, and its sections are
  // kept, so the cost is what changed. A full one is written when the delta
  // would outgrow a quarter of the sections, when metadata memory failed or a
  // copy was found damaged, and for Full: every structure anew (so that the
  // checker's refcount records cover all sharing again; see docs/format.md).
  virtual Result<void> checkpoint(CheckpointMode mode = CheckpointMode::Auto) = 0;
  // Stops at once: waits for operations in flight, then writes nothing more;
  // every later call fails with EIO. What was committed stays, as after a crash.
  // The device stays held until the Filesystem is destroyed.
  virtual void shutdown() = 0;

  // The namespace.
  virtual Result<InodeNumber> lookup(std::string_view path) = 0;
  // `owner` (optional) makes the new inode belong to that uid and gid instead
  // of MountOptions::uid/gid.
  virtual Result<InodeNumber> create(std::string_view path, uint32_t mode = 0644,
                                     std::optional<Credentials> owner = std::nullopt) = 0;
  virtual Result<InodeNumber> mkdir(std::string_view path, uint32_t mode = 0755,
                                    std::optional<Credentials> owner = std::nullopt) = 0;
  virtual Result<void> unlink(std::string_view path) = 0;
  virtual Result<void> rmdir(std::string_view path) = 0;
  // Replaces an existing destination of the same kind (an empty directory for a
  // directory), as rename(2) does.
  virtual Result<void> rename(std::string_view from, std::string_view to) = 0;
  virtual Result<void> link(std::string_view existing, std::string_view new_path) = 0;
  virtual Result<std::vector<DirEntry>> readdir(std::string_view path) = 0;
  virtual Result<Stat> stat(std::string_view path) = 0;
  virtual Result<Stat> stat(InodeNumber ino) = 0;
  virtual Result<File> open(std::string_view path, OpenFlags flags = OpenFlags::None,
                            uint32_t mode = 0644) = 0;
  // One path that names the inode (for reports).
  virtual Result<std::string> path_of(InodeNumber ino) = 0;

  // The namespace relative to a directory inode, as openat(2), unlinkat(2),
  // renameat2(2) and linkat(2) are: `name` is one component (no '/'; lookup_at
  // also takes "." and ".."). A FUSE mount works this way. The defaults here
  // go through path_of() and the path calls; the mounted filesystem resolves
  // the inode directly.
  virtual Result<InodeNumber> lookup_at(InodeNumber dir, std::string_view name);
  virtual Result<InodeNumber> create_at(InodeNumber dir, std::string_view name, uint32_t mode = 0644,
                                        std::optional<Credentials> owner = std::nullopt);
  virtual Result<InodeNumber> mkdir_at(InodeNumber dir, std::string_view name, uint32_t mode = 0755,
                                       std::optional<Credentials> owner = std::nullopt);
  virtual Result<void> unlink_at(InodeNumber dir, std::string_view name);
  virtual Result<void> rmdir_at(InodeNumber dir, std::string_view name);
  virtual Result<std::vector<DirEntry>> readdir_at(InodeNumber dir);
  virtual Result<void> rename_at(InodeNumber from_dir, std::string_view from_name, InodeNumber to_dir,
                                 std::string_view to_name, RenameFlags flags = RenameFlags::None);
  // Gives the file `ino` one more name (ENOENT if its last name is gone).
  virtual Result<void> link_at(InodeNumber ino, InodeNumber dir, std::string_view name);
  // An unnamed regular file in directory `dir`, open (as open(2) with
  // O_TMPFILE): it is in no directory until link_tmpfile() gives it its first
  // name (EEXIST if that name is taken; with `replace`, a file there is
  // replaced in the same transaction, as rename(2) replaces it; EISDIR for a
  // directory). Closed before that, or left by a crash or a killed client, it
  // is freed and nothing of it remains. The defaults here are ENOTSUP.
  virtual Result<File> open_tmpfile(std::string_view dir, uint32_t mode = 0600,
                                    std::optional<Credentials> owner = std::nullopt);
  virtual Result<void> link_tmpfile(const File& file, std::string_view new_path, bool replace = false);
  // The same unnamed file for a caller that holds files by inode number (the
  // FUSE mount, for open(2) with O_TMPFILE): made in directory `dir` and
  // returned open once, as retain() leaves a file (release() closes it);
  // link_at() gives it its first name. The default is ENOTSUP.
  virtual Result<InodeNumber> create_unnamed_at(InodeNumber dir, uint32_t mode = 0600,
                                                std::optional<Credentials> owner = std::nullopt);
  // chmod, chown and utimens in one journaled change; returns the new attributes.
  // The caller checks who may do it (the filesystem trusts its caller). The
  // default is ENOTSUP.
  virtual Result<Stat> set_attributes(InodeNumber ino, const SetAttributes& attrs);
  // A read of the file or listing of the directory happened: its access time
  // becomes now if it is not later than its modification or change time, or
  // is a day old (Linux's relatime). Best effort: skipped, never waited for,
  // while the device is frozen, a checkpoint runs, the journal is full or the
  // mount is read-only. poise's own read calls do not call it (noatime); the
  // FUSE mount does, for the reads and listings that reach it. Default: nothing.
  virtual void note_access(InodeNumber ino) { (void)ino; }
  // Symbolic links: a new link named link_path (or `name` in `dir`) holding
  // `target` (1..4095 bytes, not checked to exist), and a link's target (EINVAL
  // if ino is not a link). File I/O on a link fails with EINVAL; poise's path
  // calls never follow one. The defaults are ENOTSUP.
  virtual Result<InodeNumber> symlink(std::string_view target, std::string_view link_path,
                                      std::optional<Credentials> owner = std::nullopt);
  virtual Result<InodeNumber> symlink_at(InodeNumber dir, std::string_view name, std::string_view target,
                                         std::optional<Credentials> owner = std::nullopt);
  virtual Result<std::string> readlink(InodeNumber ino);
  // Special files, as mknod(2): `type` is Fifo, CharDevice, BlockDevice or
  // Socket (EINVAL otherwise); `rdev` is a device node's number (makedev), 0
  // for the others. Permission to make a device node is the caller's to check
  // (the kernel asks for CAP_MKNOD). The defaults are ENOTSUP.
  virtual Result<InodeNumber> mknod(std::string_view path, FileType type, uint32_t mode, uint64_t rdev = 0,
                                    std::optional<Credentials> owner = std::nullopt);
  virtual Result<InodeNumber> mknod_at(InodeNumber dir, std::string_view name, FileType type, uint32_t mode,
                                       uint64_t rdev = 0, std::optional<Credentials> owner = std::nullopt);
  // Extended attributes, as setxattr(2) and its siblings. A name is 1..255
  // bytes in the "user.", "trusted.", "security." or "system." namespace
  // (ERANGE if empty or longer, ENOTSUP for another namespace; in "system." only
  // the two POSIX ACL names); a value is 0..3072 bytes (E2BIG); one inode holds
  // at most 64 KiB of names and values (ENOSPC). A missing attribute: ENODATA.
  // Each change is one journaled transaction that also sets the change time.
  // The caller checks who may do it; what POSIX ACLs mean to the filesystem is
  // done here: "system.posix_acl_access" must be a valid ACL (EINVAL), sets the
  // permission bits it implies, and is not kept when those bits say it all;
  // set_attributes with a mode rewrites it; "system.posix_acl_default" is for
  // directories only (EACCES) and gives new files and subdirectories their ACLs
  // (and subdirectories the default itself). Links take none (ENOTSUP for the
  // ACL names). list_xattrs returns names in byte order. Defaults: ENOTSUP.
  virtual Result<void> set_xattr(InodeNumber ino, std::string_view name, std::string_view value,
                                 XattrMode mode = XattrMode::Either);
  virtual Result<std::string> get_xattr(InodeNumber ino, std::string_view name);
  virtual Result<std::vector<std::string>> list_xattrs(InodeNumber ino);
  virtual Result<void> remove_xattr(InodeNumber ino, std::string_view name);

  // File data, by inode number. Reads past the end return fewer bytes; holes
  // read as zeros.
  virtual Result<size_t> read(InodeNumber ino, uint64_t offset, std::span<std::byte> out) = 0;
  virtual Result<size_t> write(InodeNumber ino, uint64_t offset,
                               std::span<const std::byte> in) = 0;
  virtual Result<void> truncate(InodeNumber ino, uint64_t size_bytes) = 0;
  virtual Result<void> fallocate(InodeNumber ino, uint64_t offset, uint64_t length,
                                 FallocateMode mode) = 0;
  virtual Result<void> punch_hole(InodeNumber ino, uint64_t offset, uint64_t length) = 0;
  // lseek(SEEK_DATA / SEEK_HOLE): the first offset >= `offset` that holds data
  // (ENXIO if none before the end of file), or that is in a hole (the end of
  // file counts as one). Allocated-but-unwritten ranges are holes. ENXIO when
  // offset is at or past the end. The default is ENOTSUP.
  virtual Result<uint64_t> seek(InodeNumber ino, uint64_t offset, SeekTarget target);
  // Puts back the bytes of a lost block from a copy kept elsewhere (the FUSE
  // mount's: the kernel's cached page): `offset` block-aligned, `copy` the whole
  // block or, for the file's last block, the bytes up to its end. Only while
  // that block of the file is still on failed memory (ESTALE once it was
  // rewritten or freed): the copy goes to good memory, the file's size and
  // times stay, and so for every file that shares the block by reflink (each
  // on a block of its own); an FsEvent Repaired names them, the failed device
  // block and `source`. The caller vouches for the copy. The default is ENOTSUP.
  virtual Result<void> restore_lost_block(InodeNumber ino, uint64_t offset, std::span<const std::byte> copy,
                                          std::string_view source);
  virtual Result<void> fsync(InodeNumber ino) = 0;
  virtual Result<void> sync() = 0;

  // Makes dst share all of src's blocks (dst's old content is dropped), like
  // FICLONE. No data is copied; a later write to either copies the block first.
  virtual Result<void> reflink(InodeNumber src, InodeNumber dst) = 0;
  // Shares src's blocks [src_offset, +length) at dst_offset, like FICLONERANGE.
  // Offsets must be block aligned; length too unless it reaches src's end, and
  // then dst must not go on past the range (EINVAL: the partial last block is
  // shared whole and would replace dst's bytes after the range).
  virtual Result<void> clone_range(InodeNumber src, uint64_t src_offset, InodeNumber dst,
                                   uint64_t dst_offset, uint64_t length) = 0;

  // Maps file bytes [offset, +length) (rounded out to 4 KiB pages) into this
  // process: see poise/mapping.h. The range may reach past the end of file;
  // those pages fault until the file grows. `owner` names who holds the mapping
  // and where its notices go (nullptr: an anonymous owner without notices).
  // ENOTSUP on a device without shareable memory (MemoryDevice::Backing::Private).
  virtual Result<Mapping> map(InodeNumber ino, uint64_t offset, uint64_t length, MapAccess access,
                              std::shared_ptr<MapOwner> owner = nullptr) = 0;
  // Pins file bytes [offset, +length) for a zero-copy reader: see poise/mapping.h.
  virtual Result<Pin> pin(InodeNumber ino, uint64_t offset, uint64_t length) = 0;
  // Live mappings, and pins held, for reports and tests (through a server:
  // this client's).
  virtual size_t mapping_count() = 0;
  virtual size_t pin_count() = 0;

  // Every owner of every block in [offset, +length) of the device, in device
  // order, free stretches included: one record per owner.
  virtual Result<std::vector<FsmapRecord>> fsmap(uint64_t offset, uint64_t length) = 0;
  virtual FsInfo info() = 0;
  // Checks every invariant of the mounted filesystem, pausing operations meanwhile.
  virtual CheckReport check() = 0;
  // What this mount did not apply and a user must hear of at once: journal
  // transactions past a gap (an emulated device after a machine crash). Cheap.
  virtual std::vector<std::string> mount_warnings() const = 0;
  // True while a freeze holds writers (from the start of a pre-remove until it
  // is cancelled or the device removed). A remote filesystem says false.
  virtual bool frozen() const { return false; }

  // Calls `listener` (from the thread that runs the flow, with no poise lock
  // held) for each memory failure and removal step; empty: none. Quick work
  // only: the flow waits for it.
  virtual void set_event_listener(std::function<void(const FsEvent&)> listener) = 0;
  // Calls `listener` for every change as it commits, from the thread that made
  // it, with filesystem locks held: it must only queue work (no call back into
  // the filesystem). Empty: none. The default (a remote filesystem) never calls it.
  virtual void set_change_listener(std::function<void(const FsChange&)> listener) { (void)listener; }

  // Internal: called by File.
  virtual void release(InodeNumber ino) = 0;
  virtual Result<void> retain(InodeNumber ino) = 0;
};

}  // namespace poise
