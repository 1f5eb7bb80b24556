#define FUSE_USE_VERSION 314
#include "fuse/mount.h"

#include <fuse_lowlevel.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <linux/falloc.h>
#include <linux/fs.h>



namespace poise::fusemount {

namespace {

constexpr uint64_t kBlockBytes = 4096;
constexpr size_t kIoBytesMax = 1 << 20;  // the largest read or write the kernel sends

// Set on the threads that serve requests: a change made there was made by the
// kernel's own request, to its own cache first, and needs no invalidation.
thread_local bool t_serving_requests = false;

Mount& mount_of(fuse_req_t req) { return *static_cast<Mount*>(fuse_req_userdata(req)); }
Filesystem& fs_of(fuse_req_t req) { return mount_of(req).fs(); }

void reply_error(fuse_req_t req, const Error& e) { fuse_reply_err(req, e.code > 0 ? e.code : EIO); }
void reply_errno(fuse_req_t req, int code) { fuse_reply_err(req, code); }
void reply_count(fuse_req_t req, size_t bytes) { fuse_reply_write(req, bytes); }

timespec to_timespec(int64_t ns) {
  int64_t sec = ns / 1'000'000'000;
  int64_t rem = ns % 1'000'000'000;
  if (rem < 0) {  // before 1970: tv_nsec stays in [0, 1e9)
    rem += 1'000'000'000;
    --sec;
  }
  return timespec{static_cast<time_t>(sec), static_cast<long>(rem)};
}

// Times beyond what 64-bit nanoseconds hold (before 1678, after 2262) are
// clamped to the nearest one that fits.
int64_t to_ns(const timespec& t) {
  constexpr int64_t kSecondsMax = INT64_MAX / 1'000'000'000 - 1;
  int64_t sec = std::clamp<int64_t>(t.tv_sec, -kSecondsMax, kSecondsMax);
  return sec * 1'000'000'000 + t.tv_nsec;
}

mode_t type_bits(FileType type) {
  switch (type) {
    case FileType::Directory: return S_IFDIR;
    case FileType::Symlink: return S_IFLNK;
    case FileType::Fifo: return S_IFIFO;
    case FileType::CharDevice: return S_IFCHR;
    case FileType::BlockDevice: return S_IFBLK;
    case FileType::Socket: return S_IFSOCK;
    case FileType::Regular: break;
  }
  return S_IFREG;
}

struct stat to_stat(const Stat& s) {
  struct stat st {};
  st.st_ino = s.ino.value();
  st.st_mode = type_bits(s.type) | s.mode;
  st.st_nlink = s.nlink;
  st.st_uid = s.uid;
  st.st_gid = s.gid;
  st.st_size = static_cast<off_t>(s.size_bytes);
  st.st_rdev = static_cast<dev_t>(s.rdev);
  st.st_blksize = kBlockBytes;
  st.st_blocks = static_cast<blkcnt_t>(s.blocks * (kBlockBytes / 512));
  st.st_atim = to_timespec(s.atime_ns);
  st.st_mtim = to_timespec(s.mtime_ns);
  st.st_ctim = to_timespec(s.ctime_ns);
  return st;
}

// What the kernel keeps of a name it was given, for the cache time (and one
// reference to the inode, counted here: the kernel forgets it later).
fuse_entry_param entry_of(Mount& m, const Stat& st) {
  fuse_entry_param e{};
  e.ino = st.ino.value();
  e.generation = 0;  // inode numbers are never reused
  e.attr = to_stat(st);
  e.attr_timeout = m.options().cache_seconds;
  e.entry_timeout = m.options().cache_seconds;
  m.remember(e.ino, is_special(st.type));
  return e;
}

// Answers a request that made or found a name.
void reply_entry(fuse_req_t req, InodeNumber ino) {
  Mount& m = mount_of(req);
  auto st = m.fs().stat(ino);
  if (!st.has_value()) return reply_error(req, st.error());
  fuse_entry_param e = entry_of(m, *st);
  if (fuse_reply_entry(req, &e) != 0) m.forget(ino.value(), 1);  // the caller was interrupted
}

void reply_result(fuse_req_t req, const Result<void>& r) {
  if (!r.has_value()) return reply_error(req, r.error());
  fuse_reply_err(req, 0);
}

// Who asks: a new inode is theirs, and their umask applies to it unless its
// directory has a default ACL (the core decides that under its lock). The
// kernel applies the umask itself when it keeps it (no POSIX ACLs): then 0.
Credentials caller(fuse_req_t req) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  return Credentials{static_cast<uint32_t>(ctx->uid), static_cast<uint32_t>(ctx->gid),
                     static_cast<uint32_t>(ctx->umask)};
}

// --- the request handlers ----------------------------------------------------------

void op_init(void* userdata, fuse_conn_info* conn) {
  configure_connection(conn, static_cast<Mount*>(userdata)->options());
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  // "." of any inode: the kernel resolving a file handle (export support).
  if (std::strcmp(name, ".") == 0) return reply_entry(req, InodeNumber(parent));
  auto ino = fs_of(req).lookup_at(InodeNumber(parent), name);
  if (!ino.has_value()) return reply_error(req, ino.error());
  reply_entry(req, *ino);
}

void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  mount_of(req).forget(ino, nlookup);
  fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) mount_of(req).forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  auto st = fs_of(req).stat(InodeNumber(ino));
  if (!st.has_value()) return reply_error(req, st.error());
  struct stat out = to_stat(*st);
  fuse_reply_attr(req, &out, mount_of(req).options().cache_seconds);
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  Filesystem& fs = fs_of(req);
  if (to_set & FUSE_SET_ATTR_SIZE) {
    if (attr->st_size < 0) return reply_errno(req, EINVAL);
    mount_of(req).served().drop(ino, static_cast<uint64_t>(attr->st_size), 0);
    auto truncated = fs.truncate(InodeNumber(ino), static_cast<uint64_t>(attr->st_size));
    if (!truncated.has_value()) return reply_error(req, truncated.error());
  }
  SetAttributes change;
  if (to_set & FUSE_SET_ATTR_MODE) change.mode = attr->st_mode & 07777;
  if (to_set & FUSE_SET_ATTR_UID) change.uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) change.gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
    change.atime_ns = SetAttributes::kNow;
  } else if (to_set & FUSE_SET_ATTR_ATIME) {
    change.atime_ns = to_ns(attr->st_atim);
  }
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
    change.mtime_ns = SetAttributes::kNow;
  } else if (to_set & FUSE_SET_ATTR_MTIME) {
    change.mtime_ns = to_ns(attr->st_mtim);
  }
  if (change.mode || change.uid || change.gid || change.atime_ns || change.mtime_ns) {
    auto changed = fs.set_attributes(InodeNumber(ino), change);
    if (!changed.has_value()) return reply_error(req, changed.error());
  }
  op_getattr(req, ino, nullptr);
}

void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  auto ino = fs_of(req).mkdir_at(InodeNumber(parent), name, mode & 07777, caller(req));
  if (!ino.has_value()) return reply_error(req, ino.error());
  reply_entry(req, *ino);
}

void op_symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  auto ino = fs_of(req).symlink_at(InodeNumber(parent), name, target, caller(req));
  if (!ino.has_value()) return reply_error(req, ino.error());
  reply_entry(req, *ino);
}

// mknod(2) and mkfifo(3), and bind(2) of a Unix socket. The kernel has checked
// CAP_MKNOD for device nodes already (vfs_mknod). A regular file made this way
// is an ordinary create.
void op_mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  Filesystem& fs = fs_of(req);
  Result<InodeNumber> ino = fail(EINVAL, "mknod of an unknown file type");
  const uint32_t perm = mode & 07777;
  switch (mode & S_IFMT) {
    case S_IFREG: ino = fs.create_at(InodeNumber(parent), name, perm, caller(req)); break;
    case S_IFIFO: ino = fs.mknod_at(InodeNumber(parent), name, FileType::Fifo, perm, 0, caller(req)); break;
    case S_IFSOCK: ino = fs.mknod_at(InodeNumber(parent), name, FileType::Socket, perm, 0, caller(req)); break;
    case S_IFCHR: ino = fs.mknod_at(InodeNumber(parent), name, FileType::CharDevice, perm, rdev, caller(req)); break;
    case S_IFBLK: ino = fs.mknod_at(InodeNumber(parent), name, FileType::BlockDevice, perm, rdev, caller(req)); break;
    default: break;
  }
  if (!ino.has_value()) return reply_error(req, ino.error());
  reply_entry(req, *ino);
}

void op_readlink(fuse_req_t req, fuse_ino_t ino) {
  auto target = fs_of(req).readlink(InodeNumber(ino));
  if (!target.has_value()) return reply_error(req, target.error());
  fuse_reply_readlink(req, target->c_str());
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  reply_result(req, fs_of(req).unlink_at(InodeNumber(parent), name));
}

void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  reply_result(req, fs_of(req).rmdir_at(InodeNumber(parent), name));
}

void op_rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent,
               const char* new_name, unsigned int flags) {
  RenameFlags how = RenameFlags::None;
  if (flags == RENAME_NOREPLACE) {
    how = RenameFlags::NoReplace;
  } else if (flags == RENAME_EXCHANGE) {
    how = RenameFlags::Exchange;
  } else if (flags != 0) {
    return reply_errno(req, EINVAL);  // RENAME_WHITEOUT (overlayfs), or both at once
  }
  reply_result(req, fs_of(req).rename_at(InodeNumber(parent), name, InodeNumber(new_parent), new_name, how));
}

void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t new_parent, const char* new_name) {
  auto linked = fs_of(req).link_at(InodeNumber(ino), InodeNumber(new_parent), new_name);
  if (!linked.has_value()) return reply_error(req, linked.error());
  reply_entry(req, InodeNumber(ino));
}

// An open file keeps its inode (and blocks) alive after its last name goes,
// until release.
void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Filesystem& fs = fs_of(req);
  auto st = fs.stat(InodeNumber(ino));
  if (!st.has_value()) return reply_error(req, st.error());
  if (st->type == FileType::Directory) return reply_errno(req, EISDIR);
  auto kept = fs.retain(InodeNumber(ino));
  if (!kept.has_value()) return reply_error(req, kept.error());
  // Cached pages stay valid across opens: every change by another path
  // invalidates what it changed (Mount::on_change). Stores through a direct
  // mapping are not reported, so while any is live each open drops the file's
  // pages; never while the device is pre-removed (nothing changes then, and
  // dropping a page a waiting writer holds locked would hang the open).
  fi->keep_cache = fs.frozen() || fs.mapping_count() == 0 ? 1 : 0;
  if (fuse_reply_open(req, fi) != 0) fs.release(InodeNumber(ino));
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
  if (!S_ISREG(mode)) return reply_errno(req, EPERM);
  Mount& m = mount_of(req);
  Filesystem& fs = m.fs();
  // The name "/" (which no real name can be) marks an open with O_TMPFILE
  // (serve_requests): an unnamed file, which comes open already.
  const bool unnamed = std::strcmp(name, "/") == 0;
  auto ino = unnamed ? fs.create_unnamed_at(InodeNumber(parent), mode & 07777, caller(req))
                     : fs.create_at(InodeNumber(parent), name, mode & 07777, caller(req));
  if (!ino.has_value()) return reply_error(req, ino.error());
  if (!unnamed) {
    auto kept = fs.retain(*ino);
    if (!kept.has_value()) return reply_error(req, kept.error());
  }
  auto st = fs.stat(*ino);
  if (!st.has_value()) {
    fs.release(*ino);
    return reply_error(req, st.error());
  }
  fuse_entry_param e = entry_of(m, *st);
  if (fuse_reply_create(req, &e, fi) != 0) {
    m.forget(ino->value(), 1);
    fs.release(*ino);
  }
}

// Extended attributes. A size of 0 asks only for the size a reply needs.
void reply_xattr_bytes(fuse_req_t req, const std::string& bytes, size_t size) {
  if (size == 0) return (void)fuse_reply_xattr(req, bytes.size());
  if (bytes.size() > size) return reply_errno(req, ERANGE);
  fuse_reply_buf(req, bytes.data(), bytes.size());
}

void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size, int flags) {
  XattrMode mode = XattrMode::Either;
  if (flags == XATTR_CREATE) {
    mode = XattrMode::Create;
  } else if (flags == XATTR_REPLACE) {
    mode = XattrMode::Replace;
  } else if (flags != 0) {
    return reply_errno(req, EINVAL);
  }
  reply_result(req, fs_of(req).set_xattr(InodeNumber(ino), name, std::string_view(value, size), mode));
}

void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  auto value = fs_of(req).get_xattr(InodeNumber(ino), name);
  if (!value.has_value()) return reply_error(req, value.error());
  reply_xattr_bytes(req, *value, size);
}

void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  auto names = fs_of(req).list_xattrs(InodeNumber(ino));
  if (!names.has_value()) return reply_error(req, names.error());
  // trusted. attributes are root's: other callers do not see their names
  // (the kernel leaves listing to the filesystem).
  const bool root = fuse_req_ctx(req)->uid == 0;
  std::string list;
  for (const std::string& n : *names) {
    if (root || n.compare(0, 8, "trusted.") != 0) list.append(n).push_back('\0');
  }
  reply_xattr_bytes(req, list, size);
}

void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  reply_result(req, fs_of(req).remove_xattr(InodeNumber(ino), name));
}

void op_release(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  fs_of(req).release(InodeNumber(ino));
  fuse_reply_err(req, 0);
}

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  thread_local std::vector<std::byte> buffer;
  size = std::min(size, kIoBytesMax);
  if (buffer.size() < size) buffer.resize(size);
  // A read that meets failed memory fails whole (EIO): the kernel then reads
  // page by page, so exactly the lost pages fail. Never a short read, which the
  // kernel would take for the end of the file.
  Mount& m = mount_of(req);
  const uint64_t epoch = m.served().epoch();
  auto n = m.fs().read(InodeNumber(ino), static_cast<uint64_t>(off), {buffer.data(), size});
  if (!n.has_value()) return reply_error(req, n.error());
  m.served().record(ino, static_cast<uint64_t>(off), {buffer.data(), *n}, *n < size, epoch);
  fuse_reply_buf(req, reinterpret_cast<const char*>(buffer.data()), *n);  // (req is gone from here on)
  if (!m.options().read_only) m.fs().note_access(InodeNumber(ino));  // after the reply: off the read's path
}

void op_write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  Mount& m = mount_of(req);
  const std::span<const std::byte> bytes{reinterpret_cast<const std::byte*>(buf), size};
  auto at = static_cast<uint64_t>(off);
  // O_APPEND: the kernel put the bytes at its own idea of the end of file, which
  // a change by another path (a truncate, a reflink over the file) makes stale
  // (it learns new sizes only at its next getattr). They go at the real end;
  // the kernel's pages and size are then invalidated, as its copy is wrong.
  // With the writeback cache the kernel places appends itself and writes pages
  // back later through any open handle: its offsets are the truth.
  bool moved = false;
  if (fi != nullptr && (fi->flags & O_APPEND) != 0 && !m.options().writeback) {
    auto st = m.fs().stat(InodeNumber(ino));
    if (st.has_value() && st->size_bytes != at) {
      at = st->size_bytes;
      moved = true;
    }
  }
  const uint64_t epoch = m.served().epoch();
  auto n = m.fs().write(InodeNumber(ino), at, bytes);
  if (moved) {  // every page the kernel has of the file is invalidated, so no record stands either
    m.served().drop(ino, 0, 0);
    m.invalidate(ino);
  } else if (!n.has_value()) {
    m.served().drop(ino, at, size);
  }
  if (!n.has_value()) return reply_error(req, n.error());
  // The kernel keeps the whole pages it wrote (a partly written one is its own
  // mix). They are marked before the reply, while the kernel holds the inode
  // and sends no other write to it, so marks follow the writes in order; their
  // checksums are taken after it, off the writer's wait (the bytes stay this
  // worker's until it returns), and kept where no later change took the mark.
  const uint64_t ticket = moved ? 0 : m.served().reserve(ino, at, *n, false, epoch);
  fuse_reply_write(req, *n);
  if (ticket != 0) m.served().fill(ino, at, bytes.first(*n), false, ticket);
}


void op_fsync(fuse_req_t req, fuse_ino_t ino, int, fuse_file_info*) {
  reply_result(req, fs_of(req).fsync(InodeNumber(ino)));
}

void op_fsyncdir(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) {
  reply_result(req, fs_of(req).sync());  // names are journaled; sync makes them durable everywhere
}

// A directory is listed once, at opendir, so that offsets stay stable while
// the program reads it (as ext4's readdir does with its hash cookies).
struct DirListing {
  std::vector<DirEntry> entries;
};

void op_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Filesystem& fs = fs_of(req);
  auto entries = fs.readdir_at(InodeNumber(ino));
  if (!entries.has_value()) return reply_error(req, entries.error());
  auto parent = fs.lookup_at(InodeNumber(ino), "..");
  if (!parent.has_value()) return reply_error(req, parent.error());
  auto listing = std::make_unique<DirListing>();
  listing->entries.reserve(entries->size() + 2);
  listing->entries.push_back(DirEntry{".", InodeNumber(ino), FileType::Directory});
  listing->entries.push_back(DirEntry{"..", *parent, FileType::Directory});
  for (auto& e : *entries) listing->entries.push_back(std::move(e));
  fi->fh = reinterpret_cast<uint64_t>(listing.get());
  const bool read_only = mount_of(req).options().read_only;
  if (fuse_reply_open(req, fi) == 0) listing.release();  // (req is gone from here on)
  if (!read_only) fs.note_access(InodeNumber(ino));
}

void op_readdir(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  auto* listing = reinterpret_cast<DirListing*>(fi->fh);
  std::vector<char> buf(std::min<size_t>(size, kIoBytesMax));
  size_t used = 0;
  for (size_t i = static_cast<size_t>(std::max<off_t>(off, 0)); i < listing->entries.size(); ++i) {
    const DirEntry& e = listing->entries[i];
    struct stat st {};
    st.st_ino = e.ino.value();
    st.st_mode = type_bits(e.type);
    size_t need = fuse_add_direntry(req, buf.data() + used, buf.size() - used, e.name.c_str(), &st,
                                    static_cast<off_t>(i + 1));
    if (need > buf.size() - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void op_releasedir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  delete reinterpret_cast<DirListing*>(fi->fh);
  fuse_reply_err(req, 0);
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
  FsInfo info = fs_of(req).info();
  struct statvfs out {};
  out.f_bsize = kBlockBytes;
  out.f_frsize = kBlockBytes;
  out.f_blocks = info.size_bytes / kBlockBytes;
  out.f_bfree = info.free_bytes / kBlockBytes;
  out.f_bavail = out.f_bfree;
  // Inodes take no fixed space: as many more as there are free blocks.
  out.f_files = info.files + out.f_bfree;
  out.f_ffree = out.f_bfree;
  out.f_favail = out.f_bfree;
  out.f_namemax = 255;
  fuse_reply_statfs(req, &out);
}

void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, fuse_file_info*) {
  if (offset < 0 || length <= 0) return reply_errno(req, EINVAL);
  Filesystem& fs = fs_of(req);
  const InodeNumber file(ino);
  const auto off = static_cast<uint64_t>(offset), len = static_cast<uint64_t>(length);
  mount_of(req).served().drop(ino, off, len);
  if (mode == 0) return reply_result(req, fs.fallocate(file, off, len, FallocateMode::ExtendSize));
  if (mode == FALLOC_FL_KEEP_SIZE) return reply_result(req, fs.fallocate(file, off, len, FallocateMode::KeepSize));
  if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) return reply_result(req, fs.punch_hole(file, off, len));
  if ((mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE) {
    // Zeros that stay allocated: the old blocks go, unwritten ones take their
    // place (reading as zeros whether or not the allocation then succeeds).
    auto punched = fs.punch_hole(file, off, len);
    if (!punched.has_value()) return reply_error(req, punched.error());
    auto how = (mode & FALLOC_FL_KEEP_SIZE) ? FallocateMode::KeepSize : FallocateMode::ExtendSize;
    return reply_result(req, fs.fallocate(file, off, len, how));
  }
  fuse_reply_err(req, EOPNOTSUPP);  // collapse, insert, unshare
}

// The kernel's cached bytes of pages that failed (Mount::on_event asked for them).
void op_retrieve_reply(fuse_req_t req, void*, fuse_ino_t ino, off_t offset, fuse_bufvec* bufv) {
  const size_t size = fuse_buf_size(bufv);
  std::vector<std::byte> cached(size);
  fuse_bufvec into = FUSE_BUFVEC_INIT(size);
  into.buf[0].mem = cached.data();
  const ssize_t copied = fuse_buf_copy(&into, bufv, static_cast<fuse_buf_copy_flags>(0));
  if (copied > 0 && offset >= 0) {
    cached.resize(static_cast<size_t>(copied));
    mount_of(req).restore_from(ino, static_cast<uint64_t>(offset), cached);
  }
  fuse_reply_none(req);
}

void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, fuse_file_info*) {
  if (whence != SEEK_DATA && whence != SEEK_HOLE) return reply_errno(req, EINVAL);  // the kernel does the rest
  if (off < 0) return reply_errno(req, ENXIO);
  auto found = fs_of(req).seek(InodeNumber(ino), static_cast<uint64_t>(off),
                               whence == SEEK_DATA ? SeekTarget::Data : SeekTarget::Hole);
  if (!found.has_value()) return reply_error(req, found.error());
  fuse_reply_lseek(req, static_cast<off_t>(*found));
}

// copy_file_range (how cp reaches a FUSE filesystem): block-aligned ranges are
// shared, as a reflink, and copied by a later write; anything else is copied.
void op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in, fuse_file_info*, fuse_ino_t ino_out,
                        off_t off_out, fuse_file_info*, size_t len, int flags) {
  if (flags != 0 || off_in < 0 || off_out < 0) return reply_errno(req, EINVAL);
  Filesystem& fs = fs_of(req);
  const InodeNumber src(ino_in), dst(ino_out);
  auto st = fs.stat(src);
  if (!st.has_value()) return reply_error(req, st.error());
  const auto in = static_cast<uint64_t>(off_in), out = static_cast<uint64_t>(off_out);
  if (in >= st->size_bytes) return reply_count(req, 0);
  mount_of(req).served().drop(ino_out, out, len);
  // The reply's count is 32 bits wide: at most 4 GiB - 4 KiB per call.
  uint64_t want = std::min<uint64_t>({len, st->size_bytes - in, 0xFFFFF000ull});
  const bool to_end = in + want == st->size_bytes;
  const bool aligned = in % kBlockBytes == 0 && out % kBlockBytes == 0 && (want % kBlockBytes == 0 || to_end);
  const bool overlaps = src == dst && in < out + want && out < in + want;
  // A range reaching the source's end is cloned with its partial last block
  // (the core refuses it where the destination goes on after the range).
  const uint64_t clone_length = to_end ? (want + kBlockBytes - 1) / kBlockBytes * kBlockBytes : want;
  if (aligned && !overlaps && fs.clone_range(src, in, dst, out, clone_length).has_value()) {
    return reply_count(req, want);
  }
  std::vector<std::byte> chunk(std::min<uint64_t>(want, kIoBytesMax));
  uint64_t done = 0;
  while (done < want) {
    size_t piece = static_cast<size_t>(std::min<uint64_t>(chunk.size(), want - done));
    auto got = fs.read(src, in + done, {chunk.data(), piece});
    if (!got.has_value()) {
      if (done == 0) return reply_error(req, got.error());
      break;
    }
    if (*got == 0) break;
    auto put = fs.write(dst, out + done, {chunk.data(), *got});
    if (!put.has_value()) {
      if (done == 0) return reply_error(req, put.error());
      break;
    }
    done += *put;
    if (*put < *got) break;
  }
  fuse_reply_write(req, done);
}

fuse_lowlevel_ops make_ops() {
  fuse_lowlevel_ops ops{};
  ops.init = op_init;
  ops.lookup = op_lookup;
  ops.forget = op_forget;
  ops.forget_multi = op_forget_multi;
  ops.getattr = op_getattr;
  ops.setattr = op_setattr;
  ops.mknod = op_mknod;
  ops.mkdir = op_mkdir;
  ops.symlink = op_symlink;
  ops.readlink = op_readlink;
  ops.unlink = op_unlink;
  ops.rmdir = op_rmdir;
  ops.rename = op_rename;
  ops.link = op_link;
  ops.open = op_open;
  ops.create = op_create;
  ops.release = op_release;
  ops.read = op_read;
  ops.write = op_write;
  ops.fsync = op_fsync;
  ops.fsyncdir = op_fsyncdir;
  ops.opendir = op_opendir;
  ops.readdir = op_readdir;
  ops.releasedir = op_releasedir;
  ops.statfs = op_statfs;
  ops.fallocate = op_fallocate;
  ops.copy_file_range = op_copy_file_range;
  ops.lseek = op_lseek;
  ops.retrieve_reply = op_retrieve_reply;
  ops.setxattr = op_setxattr;
  ops.getxattr = op_getxattr;
  ops.listxattr = op_listxattr;
  ops.removexattr = op_removexattr;
  return ops;
}

// libfuse's option syntax: a comma or backslash in a value is escaped.
std::string escape_option(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == ',' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

// --- the session: settings and workers ---------------------------------------------

void configure_connection(fuse_conn_info* conn, const MountOptions& options) {
  conn->max_write = kIoBytesMax;
  conn->max_readahead = std::min<unsigned>(conn->max_readahead, kIoBytesMax);
  conn->time_gran = 1;  // nanosecond timestamps
  conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;  // O_TRUNC arrives as a setattr of the size
  // No dropping of every cached page whenever the kernel sees a new mtime (which
  // its own writes make): changes by other paths are invalidated exactly.
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  // File handles (name_to_handle_at, an NFS export of the mount) stay valid
  // across the kernel forgetting an inode and across remounts: the kernel asks
  // for "." of the inode number in the handle, and inode numbers are never
  // reused (so the generation is always 0).
  if (conn->capable & FUSE_CAP_EXPORT_SUPPORT) conn->want |= FUSE_CAP_EXPORT_SUPPORT;
  // POSIX ACLs: the kernel enforces and caches them; poise keeps them as
  // attributes, in step with the mode, and gives a directory's default ACL to
  // what is made in it. The kernel then leaves the umask to poise (below).
  if ((conn->capable & FUSE_CAP_POSIX_ACL) != 0 && (conn->capable & FUSE_CAP_DONT_MASK) != 0) {
    conn->want |= FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK;
  }
  if (options.writeback && (conn->capable & FUSE_CAP_WRITEBACK_CACHE) != 0) conn->want |= FUSE_CAP_WRITEBACK_CACHE;
  constexpr unsigned kSplice = FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
  if (options.splice) {
    conn->want |= conn->capable & kSplice;
  } else {
    conn->want &= ~kSplice;
  }
}

bool serve_requests(fuse_session* session, int stop_fd) {
  fuse_buf buf{};
  const int fd = fuse_session_fd(session);
  bool ended_by_kernel = false;
  while (!fuse_session_exited(session)) {
    pollfd fds[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[1].revents != 0) break;
    int got = fuse_session_receive_buf(session, &buf);
    if (got == -EINTR || got == -EAGAIN) continue;  // another worker took it
    if (got <= 0) {
      // ENODEV: the kernel unmounted (umount, fusermount3 -u). The first worker
      // to see it stops the others.
      fuse_session_exit(session);
      uint64_t one = 1;
      (void)!::write(stop_fd, &one, sizeof(one));
      ended_by_kernel = true;
      break;
    }
    // libfuse 3.14 (Debian bookworm's) has no tmpfile request, which the
    // kernel sends for open(2) with O_TMPFILE (FUSE_TMPFILE, opcode 51, kernel
    // ABI 7.37). On the wire it is a create request (FUSE_CREATE, 35) whose
    // name is the placeholder "/", and it is answered as one: it goes to
    // op_create as a create, which tells it by that name. (The opcode is the
    // second 32-bit field of the request header.)
    constexpr uint32_t kFuseCreate = 35, kFuseTmpfile = 51;
    if (got >= 8 && (buf.flags & FUSE_BUF_IS_FD) == 0) {
      auto* opcode = static_cast<char*>(buf.mem) + 4;
      uint32_t op = 0;
      std::memcpy(&op, opcode, sizeof(op));
      if (op == kFuseTmpfile) std::memcpy(opcode, &kFuseCreate, sizeof(kFuseCreate));
    }
    fuse_session_process_buf(session, &buf);
  }
  std::free(buf.mem);
  return ended_by_kernel;
}

// --- the mount -------------------------------------------------------------------

Result<std::unique_ptr<Mount>> Mount::start(Filesystem& fs, MountOptions options) {
  struct stat st {};
  if (::stat(options.dir.c_str(), &st) != 0) return fail(errno, options.dir + ": " + std::strerror(errno));
  if (!S_ISDIR(st.st_mode)) return fail(ENOTDIR, options.dir + ": not a directory");
  if (!(options.cache_seconds >= 0 && options.cache_seconds <= 86400)) {
    return fail(EINVAL, "the cache time must be 0..86400 seconds");
  }
  if (options.threads == 0) options.threads = 1;
  std::unique_ptr<Mount> m(new Mount(fs, std::move(options)));
  const MountOptions& o = m->options_;
  std::string mount_options = "default_permissions,subtype=poise,fsname=" + escape_option(o.source);
  if (o.read_only) mount_options += ",ro";
  if (o.allow_other) mount_options += ",allow_other";
  mount_options += o.dev ? ",dev" : ",nodev";
  mount_options += o.suid ? ",suid" : ",nosuid";
  std::vector<std::string> argv_text = {"poise", "-o", mount_options};
  std::vector<char*> argv;
  for (auto& a : argv_text) argv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  fuse_lowlevel_ops ops = make_ops();
  m->session_ = fuse_session_new(&args, &ops, sizeof(ops), m.get());
  fuse_opt_free_args(&args);  // the parser may have copied the arguments
  if (m->session_ == nullptr) return fail(EINVAL, "libfuse refused the mount options: " + mount_options);
  if (fuse_session_mount(m->session_, o.dir.c_str()) != 0) {
    fuse_session_destroy(m->session_);
    m->session_ = nullptr;
    return fail(EIO, o.dir + ": the FUSE mount failed (is /dev/fuse there, and fusermount3 installed?)");
  }
  // Workers poll the request channel and a stop event; the channel never blocks them.
  int fd = fuse_session_fd(m->session_);
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  m->stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (m->stop_fd_ < 0) return fail(errno, std::string("eventfd: ") + std::strerror(errno));
  m->invalidator_ = std::thread([raw = m.get()] { raw->send_invalidations(); });
  fs.set_change_listener([raw = m.get()](const FsChange& change) { raw->on_change(change); });
  for (unsigned i = 0; i < o.threads; ++i) m->workers_.emplace_back([raw = m.get()] { raw->serve_requests(); });
  return m;
}

Mount::~Mount() {
  fs_.set_change_listener(nullptr);
  // The invalidator first, while the workers still answer: an invalidation can
  // wait in the kernel for a page that a request being served holds.
  {
    std::lock_guard lock(inval_mutex_);
    inval_stop_ = true;
    pending_.clear();
  }
  inval_cv_.notify_all();
  if (invalidator_.joinable()) invalidator_.join();
  if (stop_fd_ >= 0) {
    uint64_t one = 1;
    (void)!::write(stop_fd_, &one, sizeof(one));
  }
  for (auto& t : workers_) t.join();
  if (session_ != nullptr) {
    // Unmounts unless the kernel already did (umount, fusermount3 -u); lazily
    // if programs still use it.
    fuse_session_unmount(session_);
    fuse_session_destroy(session_);
  }
  if (stop_fd_ >= 0) ::close(stop_fd_);
  // The kernel knows nothing of this mount any more: the special files it held go.
  std::unordered_set<uint64_t> held;
  {
    std::lock_guard lock(known_mutex_);
    held.swap(held_);
  }
  for (uint64_t ino : held) fs_.release(InodeNumber(ino));
}

void Mount::serve_requests() {
  t_serving_requests = true;
  if (fusemount::serve_requests(session_, stop_fd_) && !ended_by_kernel_.exchange(true) && options_.on_unmounted) {
    options_.on_unmounted();
  }
}

void Mount::remember(uint64_t ino, bool special) {
  bool hold = false;
  {
    std::lock_guard lock(known_mutex_);
    hold = ++known_[ino] == 1 && special;
    if (hold) held_.insert(ino);
  }
  // Outside the lock: the core's change listener takes it under the core's own
  // locks. (The kernel cannot forget the inode before this reference's reply.)
  if (hold && !fs_.retain(InodeNumber(ino)).has_value()) {
    std::lock_guard lock(known_mutex_);
    held_.erase(ino);
  }
}

void Mount::forget(uint64_t ino, uint64_t count) {
  bool release = false;
  {
    std::lock_guard lock(known_mutex_);
    auto it = known_.find(ino);
    if (it == known_.end()) return;
    if (it->second <= count) {
      known_.erase(it);
      served_.forget(ino);  // the kernel has no page of it any more
      release = held_.erase(ino) != 0;
    } else {
      it->second -= count;
    }
  }
  if (release) fs_.release(InodeNumber(ino));  // an unlinked special file is freed now
}

bool Mount::kernel_owns_size(uint64_t ino) {
  if (!options_.writeback) return false;
  std::lock_guard lock(known_mutex_);
  return known_.count(ino) != 0;
}

// --- invalidation ------------------------------------------------------------------

Mount::Invalidation Mount::pages_of(uint64_t ino, uint64_t offset, uint64_t length) {
  const uint64_t from = offset / kBlockBytes * kBlockBytes;
  if (length == 0) return Invalidation{ino, static_cast<int64_t>(from), 0, {}};
  const uint64_t to = (offset + length + kBlockBytes - 1) / kBlockBytes * kBlockBytes;
  return Invalidation{ino, static_cast<int64_t>(from), static_cast<int64_t>(to - from), {}};
}

void Mount::on_event(const FsEvent& event) {
  std::vector<Invalidation> items;
  if (event.kind == FsEvent::Kind::MemoryFailure) {
    for (const auto& f : event.files) {
      Invalidation pages = pages_of(f.ino.value(), f.file_offset, f.length);
      // The kernel's copy first (it is taken at once, before the pages go).
      if (known(f.ino.value())) {
        items.push_back(pages);
        items.back().retrieve = true;
      }
      items.push_back(std::move(pages));
    }
  }
  if (event.kind == FsEvent::Kind::PreRemove || event.kind == FsEvent::Kind::Removed) {
    std::lock_guard lock(known_mutex_);
    for (const auto& [ino, refs] : known_) items.push_back({ino, 0, 0});
  }
  if (!items.empty()) queue(std::move(items));
}

// --- restoring lost pages from the kernel's copy ----------------------------------

void Mount::restore_from(uint64_t ino, uint64_t offset, std::span<const std::byte> cached) {
  // A live direct mapping can store into a file with no record of it: the
  // kernel's copy could be older than those stores. No restores meanwhile.
  if (offset % kBlockBytes != 0 || fs_.mapping_count() != 0) return;
  for (uint64_t at = 0; at < cached.size(); at += kBlockBytes) {
    const auto page = cached.subspan(at, std::min<size_t>(kBlockBytes, cached.size() - at));
    // Never served whole, changed since, or not the bytes served: it stays lost.
    if (!served_.vouches(ino, offset + at, page)) continue;
    (void)fs_.restore_lost_block(InodeNumber(ino), offset + at, page, "the kernel's cached copy (FUSE mount)");
  }
}

void Mount::invalidate(uint64_t ino) { queue({Invalidation{ino, 0, 0, {}}}); }

bool Mount::known(uint64_t ino) {
  if (ino == kRootInode.value()) return true;  // the kernel's from the start, never looked up
  std::lock_guard lock(known_mutex_);
  return known_.count(ino) != 0;
}

void Mount::on_change(const FsChange& change) {
  if (t_serving_requests || !known(change.ino.value())) return;
  Invalidation item{change.ino.value(), -1, 0, {}};  // attributes only
  if (change.kind == FsChange::Kind::Data) {
    served_.drop(change.ino.value(), change.offset, change.length);
    item = pages_of(change.ino.value(), change.offset, change.length);
  } else if (change.kind == FsChange::Kind::Entry) {
    item.name = std::string(change.name);
  }
  queue({std::move(item)});
}

void Mount::queue(std::vector<Invalidation> items) {
  {
    std::lock_guard lock(inval_mutex_);
    pending_.insert(pending_.end(), items.begin(), items.end());
  }
  inval_cv_.notify_all();
}

void Mount::drain_invalidations() {
  std::unique_lock lock(inval_mutex_);
  inval_cv_.wait(lock, [&] { return (pending_.empty() && !inval_busy_) || inval_stop_; });
}

void Mount::send_invalidations() {
  std::unique_lock lock(inval_mutex_);
  for (;;) {
    inval_cv_.wait(lock, [&] { return !pending_.empty() || inval_stop_; });
    if (inval_stop_) return;
    Invalidation item = pending_.front();
    pending_.pop_front();
    inval_busy_ = true;
    lock.unlock();
    // ENOENT: the kernel no longer caches the inode (or name), so there is nothing to drop.
    if (item.retrieve) {
      (void)fuse_lowlevel_notify_retrieve(session_, item.ino, static_cast<size_t>(item.length),
                                          static_cast<off_t>(item.offset), nullptr);
    } else if (!item.name.empty()) {
      (void)fuse_lowlevel_notify_inval_entry(session_, item.ino, item.name.c_str(), item.name.size());
    } else {
      (void)fuse_lowlevel_notify_inval_inode(session_, item.ino, item.offset, item.length);
    }
    lock.lock();
    inval_busy_ = false;
    inval_cv_.notify_all();
  }
}

}  // namespace poise::fusemount
