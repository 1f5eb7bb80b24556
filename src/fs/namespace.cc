// The namespace: path resolution, create, mkdir, unlink, rmdir, rename, link,
// readdir, stat, open and the last-close teardown of unlinked files.
#include <sys/stat.h>

#include <algorithm>

#include "fs/fs_impl.h"

namespace poise {

namespace {
constexpr size_t kPathBytesMax = 4096;
constexpr uint32_t kLinksMax = 65000;
constexpr uint64_t kDirEntriesMax = 1ull << 26;
constexpr int kPathComponentsMax = 2048;
constexpr int kOpenAttemptsMax = 64;  // create/unlink races open() retries before giving up

// "/a/b/" and "/a/b/." can only name a directory, as in POSIX path resolution.
bool names_a_directory(std::string_view path) {
  return path.ends_with('/') || path.ends_with("/.") || path == ".";
}

// Calls fn for each component of the path, skipping empty ones and ".", without
// allocating (path lookup is on the stat and create fast paths).
template <class Fn>
Result<void> for_each_component(std::string_view path, Fn&& fn) {
  if (path.empty()) return fail(EINVAL, "empty path (the root is \"/\")");
  if (path.size() > kPathBytesMax) return fail(ENAMETOOLONG, "path longer than 4096 bytes");
  // A name on media never holds a NUL (the checker refuses one): neither may a path.
  if (path.find('\0') != std::string_view::npos) return fail(EINVAL, "a path cannot hold a NUL byte");
  int components = 0;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t slash = path.find('/', pos);
    if (slash == std::string_view::npos) slash = path.size();
    std::string_view part = path.substr(pos, slash - pos);
    pos = slash + 1;
    if (part.empty() || part == ".") continue;
    if (part.size() > format::kNameBytesMax) return fail(ENAMETOOLONG, "path component longer than 255 bytes");
    if (++components > kPathComponentsMax) return fail(ENAMETOOLONG, "path too deep");
    TRY(fn(part));
  }
  return {};
}

// One name inside a directory (the *_at calls): not empty, no '/' or NUL, at
// most 255 bytes. "." and ".." are the caller's to allow or refuse.
Result<void> check_name(std::string_view name) {
  if (name.empty()) return fail(EINVAL, "empty name");
  if (name.find('/') != std::string_view::npos) return fail(EINVAL, std::string(name) + ": a name cannot hold '/'");
  if (name.find('\0') != std::string_view::npos) return fail(EINVAL, "a name cannot hold a NUL byte");
  if (name.size() > format::kNameBytesMax) return fail(ENAMETOOLONG, "name longer than 255 bytes");
  return {};
}

uint32_t type_bits(FileType type) {
  switch (type) {
    case FileType::Directory: return format::kModeDirectory;
    case FileType::Symlink: return format::kModeSymlink;
    case FileType::Fifo: return format::kModeFifo;
    case FileType::CharDevice: return format::kModeCharDevice;
    case FileType::BlockDevice: return format::kModeBlockDevice;
    case FileType::Socket: return format::kModeSocket;
    case FileType::Regular: break;
  }
  return format::kModeRegular;
}

// What a symbolic link may hold: 1..4095 bytes (PATH_MAX with its NUL), no NUL.
Result<void> check_link_target(std::string_view target) {
  if (target.empty()) return fail(ENOENT, "a symbolic link's target cannot be empty");
  if (target.size() >= kBlockSize) return fail(ENAMETOOLONG, "a symbolic link's target is at most 4095 bytes");
  if (target.find('\0') != std::string_view::npos) return fail(EINVAL, "a link target cannot hold a NUL byte");
  return {};
}
}  // namespace

FileType file_type_of(uint32_t mode) {
  switch (mode & format::kModeTypeMask) {
    case format::kModeDirectory: return FileType::Directory;
    case format::kModeSymlink: return FileType::Symlink;
    case format::kModeFifo: return FileType::Fifo;
    case format::kModeCharDevice: return FileType::CharDevice;
    case format::kModeBlockDevice: return FileType::BlockDevice;
    case format::kModeSocket: return FileType::Socket;
    default: return FileType::Regular;
  }
}

InodePtr FsImpl::find_inode(InodeNumber ino) const {
  const InodePtr* found = inodes_.find(ino.value());
  return found == nullptr ? nullptr : *found;
}

Result<InodePtr> FsImpl::get_inode(InodeNumber ino) {
  if (!mounted_) return fail(EIO, "filesystem is not mounted");
  std::shared_lock ns(ns_mutex_);
  InodePtr inode = find_inode(ino);
  if (inode == nullptr) return fail(ENOENT, "no inode " + std::to_string(ino.value()));
  return inode;
}

Result<Inode*> FsImpl::resolve_locked(std::string_view path) {
  if (!mounted_) return fail(EIO, "filesystem is not mounted");
  // Plain pointers: ns_mutex_ is held, so no entry or inode can go away.
  Inode* cur = root_;
  TRY(for_each_component(path, [&](std::string_view part) -> Result<void> {
    if (!cur->is_dir()) return fail(ENOTDIR, std::string(path) + ": a component is not a directory");
    if (part == "..") {
      if (cur != root_) cur = find_inode(cur->parent).get();
      return {};
    }
    auto it = cur->entries->find(part);
    if (it == cur->entries->end()) return fail(ENOENT, std::string(path) + ": no such file or directory");
    cur = it->second;
    return {};
  }));
  if (!cur->is_dir() && names_a_directory(path)) {
    return fail(ENOTDIR, std::string(path) + ": not a directory (the path ends in '/')");
  }
  return cur;
}

Result<InodePtr> FsImpl::resolve(std::string_view path) {
  Inode* found = TRY(resolve_locked(path));
  return find_inode(found->ino);
}

Result<InodePtr> FsImpl::resolve_parent(std::string_view path, std::string* leaf) {
  if (path.empty()) return fail(EINVAL, "empty path (the root is \"/\")");
  if (path.size() > kPathBytesMax) return fail(ENAMETOOLONG, "path longer than 4096 bytes");
  if (path.find('\0') != std::string_view::npos) return fail(EINVAL, "a path cannot hold a NUL byte");
  size_t end = path.size();
  while (end > 0 && path[end - 1] == '/') --end;
  size_t slash = end == 0 ? std::string_view::npos : path.rfind('/', end - 1);
  size_t start = slash == std::string_view::npos ? 0 : slash + 1;
  std::string_view name = path.substr(start, end - start);
  if (name.empty()) return fail(EINVAL, std::string(path) + ": names the root directory");
  if (name == "." || name == "..") return fail(EINVAL, std::string(path) + ": ends in '.' or '..'");
  if (name.size() > format::kNameBytesMax) return fail(ENAMETOOLONG, "name longer than 255 bytes");
  // "name" (no slash at all) lives in the root, as "/name" does.
  InodePtr parent = start == 0 ? find_inode(kRootInode) : TRY(resolve(path.substr(0, start)));
  if (!parent->is_dir()) return fail(ENOTDIR, std::string(path) + ": parent is not a directory");
  *leaf = std::string(name);
  return parent;
}

Result<InodePtr> FsImpl::resolve_parent(const Place& place, std::string* leaf) {
  if (place.dir == InodeNumber{}) return resolve_parent(place.path, leaf);
  std::string_view name = place.name;
  TRY(check_name(name));
  if (name == "." || name == "..") return fail(EINVAL, place.shown() + ": '.' and '..' cannot be made or removed");
  InodePtr parent = find_inode(place.dir);
  if (parent == nullptr) return fail(ENOENT, place.shown() + ": no such directory");
  if (!parent->is_dir()) return fail(ENOTDIR, place.shown() + ": parent is not a directory");
  *leaf = std::string(name);
  return parent;
}

std::string FsImpl::Place::shown() const {
  if (dir == InodeNumber{}) return std::string(path);
  return "inode " + std::to_string(dir.value()) + "/" + std::string(name);
}

bool FsImpl::Place::names_a_directory() const { return dir == InodeNumber{} && poise::names_a_directory(path); }

Stat FsImpl::stat_of(const Inode& inode) const {
  Stat st;
  st.ino = inode.ino;
  st.type = inode.type();
  st.mode = inode.core.mode & format::kModePermMask;
  st.nlink = inode.core.nlink;
  st.uid = inode.core.uid;
  st.gid = inode.core.gid;
  st.size_bytes = inode.is_dir() ? inode.entries->size() : is_special(inode.kind) ? 0 : inode.core.size_bytes;
  if (inode.kind == FileType::CharDevice || inode.kind == FileType::BlockDevice) st.rdev = inode.core.size_bytes;
  st.blocks = inode.extents.mapped_blocks();
  st.atime_ns = inode.core.atime_ns;
  st.mtime_ns = inode.core.mtime_ns;
  st.ctime_ns = inode.core.ctime_ns;
  return st;
}

Result<InodeNumber> FsImpl::lookup(std::string_view path) {
  std::shared_lock ns(ns_mutex_);
  return TRY(resolve_locked(path))->ino;
}

Result<InodeNumber> FsImpl::lookup_at(InodeNumber dir, std::string_view name) {
  if (!mounted_) return fail(EIO, "filesystem is not mounted");
  std::shared_lock ns(ns_mutex_);
  InodePtr parent = find_inode(dir);
  if (parent == nullptr) return fail(ENOENT, "no inode " + std::to_string(dir.value()));
  if (!parent->is_dir()) return fail(ENOTDIR, "inode " + std::to_string(dir.value()) + " is not a directory");
  TRY(check_name(name));
  if (name == ".") return parent->ino;
  if (name == "..") return parent->ino == kRootInode ? kRootInode : parent->parent;
  auto it = parent->entries->find(name);
  if (it == parent->entries->end()) return fail(ENOENT, std::string(name) + ": no such file or directory");
  return it->second->ino;
}

Result<InodeNumber> FsImpl::make_node(const Place& place, uint32_t mode, FileType type,
                                      std::optional<Credentials> owner, std::string_view target, uint64_t rdev,
                                      bool unnamed) {
  if (type == FileType::Symlink) {
    TRY(check_link_target(target));
    TRY(enable_feature(format::kIncompatSymlinks));
  }
  const bool device_node = type == FileType::CharDevice || type == FileType::BlockDevice;
  if (!device_node && rdev != 0) return fail(EINVAL, "only a device node has a device number");
  if (is_special(type)) TRY(enable_feature(format::kIncompatSpecialFiles));
  // Room for the ACLs a directory's default ACL may give the new inode.
  auto op = TRY(begin_op(kNamespaceTxBytes + 2 * kAclRecordBytesMax));
  std::unique_lock ns(ns_mutex_);
  std::string leaf;
  InodePtr parent;
  if (unnamed) {  // place.path, or the inode place.dir, is the directory the file is made in
    if (place.dir != InodeNumber{}) {
      parent = find_inode(place.dir);
      if (parent == nullptr) return fail(ENOENT, "inode " + std::to_string(place.dir.value()) + ": no such directory");
    } else {
      if (place.path.empty()) return fail(EINVAL, "empty path (the root is \"/\")");
      parent = TRY(resolve(place.path));
    }
    if (!parent->is_dir()) return fail(ENOTDIR, place.shown() + ": not a directory");
  } else {
    parent = TRY(resolve_parent(place, &leaf));
    if (parent->entries->count(leaf) != 0) return fail(EEXIST, place.shown() + ": already exists");
    if (type != FileType::Directory && place.names_a_directory()) {
      return fail(EISDIR, place.shown() + ": a file's name cannot end in '/'");
    }
    if (parent->entries->size() >= kDirEntriesMax) return fail(ENOSPC, "directory is full");
  }
  if (type == FileType::Directory && parent->core.nlink >= kLinksMax) {
    return fail(EMLINK, "too many subdirectories");
  }
  int64_t t = now();
  uint32_t perm = mode & format::kModePermMask;
  uint32_t gid = owner ? owner->gid : options_.gid;
  if ((parent->core.mode & S_ISGID) != 0) {
    // A set-group-ID directory gives its group to what is made in it, and its
    // bit to subdirectories (as Linux and BSD filesystems do).
    gid = parent->core.gid;
    if (type == FileType::Directory) perm |= S_ISGID;
  }
  if (type == FileType::Symlink) perm = 0777;  // a link's own bits are never checked
  // A device node keeps its number where a file keeps its size.
  format::InodeCore core{next_ino_, type_bits(type) | perm, type == FileType::Directory ? 2u : unnamed ? 0u : 1u,
                         owner ? owner->uid : options_.uid, gid, device_node ? rdev : target.size(), t, t, t};
  Records acls;
  if (type != FileType::Symlink && !inherit_acls(*parent, core, &acls) && owner) {
    core.mode &= ~(owner->umask & 0777u);  // no default ACL: the maker's umask
  }
  uint64_t acl_bytes = 0, acl_largest = 0;
  for (const auto& r : acls) {
    const auto& x = std::get<format::XattrRecord>(r);
    acl_bytes += format::xattr_bytes(x.name.size(), x.value.size());
    acl_largest = std::max(acl_largest, format::xattr_bytes(x.name.size(), x.value.size()));
  }
  // Room for the inode (and its ACLs) in the next checkpoint.
  TRY(expect_space(1 + xattr_space_blocks(acl_bytes, acl_largest), "create"));
  format::InodeCore parent_core = parent->core;
  parent_core.mtime_ns = parent_core.ctime_ns = t;
  if (type == FileType::Directory) ++parent_core.nlink;
  // An unnamed file is an orphan from the start: the directory does not change,
  // and a crash before it is linked leaves it for the next mount to free.
  Records records = unnamed ? Records{core}
                            : Records{core, format::DirentRecord{parent->ino.value(), core.ino, leaf}, parent_core};
  records.insert(records.end(), acls.begin(), acls.end());
  if (type == FileType::Symlink) {
    // The target is the link's data: one block, stored and fenced before the
    // transaction that makes the link, so a link never exists without it.
    Inode staged(InodeNumber(core.ino));
    staged.core = core;
    TRY(reserve_blocks(1));
    bool fresh = false;
    uint64_t used = store_locked(staged, 0, reinterpret_cast<const std::byte*>(target.data()), target.size(),
                                 &records, &fresh);
    unreserve_blocks(1 - used);
    // A link has no fsync of its own: on a device whose persistence is the
    // host's page cache its target is written back before the link is made.
    const auto* e = std::get_if<format::ExtentRecord>(&records.back());
    if (e != nullptr && device_.domain() == PersistenceDomain::PageCache) {
      auto synced = device_.sync_range(e->dev_block * kBlockSize, uint64_t{e->block_count} * kBlockSize);
      if (!synced.has_value()) {
        give_back_fresh_blocks(records);
        return Unexpected<Error>(std::move(synced).error());
      }
    }
    if (fresh) device_.drain();
  }
  commit(op, records, {});
  if (unnamed) {  // open before the namespace lock goes: nothing may free it meanwhile
    InodePtr made = find_inode(InodeNumber(core.ino));
    made->open_count.fetch_add(1);
    made->linkable = true;
  }
  return InodeNumber(core.ino);
}

Result<File> FsImpl::open_tmpfile(std::string_view dir, uint32_t mode, std::optional<Credentials> owner) {
  const InodeNumber ino = TRY(make_node(Place{dir}, mode, FileType::Regular, owner, {}, 0, true));
  return File(this, ino);
}

Result<InodeNumber> FsImpl::create_unnamed_at(InodeNumber dir, uint32_t mode, std::optional<Credentials> owner) {
  return make_node(Place{{}, dir, {}}, mode, FileType::Regular, owner, {}, 0, true);
}

Result<void> FsImpl::link_tmpfile(const File& file, std::string_view new_path, bool replace) {
  if (!file.is_open()) return fail(EBADF, "link of a closed file");
  return link_place({}, file.ino(), Place{new_path}, true, replace);
}

Result<void> FsImpl::enable_feature(uint64_t incompat_bit) {
  {  // the superblock is written under the gate held exclusively: read it shared
    std::shared_lock gate(gate_);
    if ((sb_.feature_incompat & incompat_bit) != 0) return {};
  }
  TRY(check_writable());
  // An image made before the feature existed: mark it, so that a release that
  // cannot read the new records refuses the image instead of taking them for
  // corruption.
  for (;;) {
    TRY(wait_until_thawed());  // nothing is written while the device is frozen for removal
    std::unique_lock gate(gate_);
    if (frozen_flag_.load(std::memory_order_acquire)) continue;
    if ((sb_.feature_incompat & incompat_bit) != 0) return {};
    sb_.feature_incompat |= incompat_bit;
    auto written = rewrite_superblocks();
    if (!written.has_value()) sb_.feature_incompat &= ~incompat_bit;  // no record needs it until it is on media
    return written;
  }
}

Result<InodeNumber> FsImpl::symlink_at(InodeNumber dir, std::string_view name, std::string_view target,
                                       std::optional<Credentials> owner) {
  return make_node(Place{{}, dir, name}, 0777, FileType::Symlink, owner, target);
}

Result<InodeNumber> FsImpl::symlink(std::string_view target, std::string_view link_path,
                                    std::optional<Credentials> owner) {
  return make_node(Place{link_path}, 0777, FileType::Symlink, owner, target);
}

Result<InodeNumber> FsImpl::mknod(std::string_view path, FileType type, uint32_t mode, uint64_t rdev,
                                  std::optional<Credentials> owner) {
  if (!is_special(type)) return fail(EINVAL, "mknod makes a FIFO, a device node or a socket");
  return make_node(Place{path}, mode, type, owner, {}, rdev);
}

Result<InodeNumber> FsImpl::mknod_at(InodeNumber dir, std::string_view name, FileType type, uint32_t mode,
                                     uint64_t rdev, std::optional<Credentials> owner) {
  if (!is_special(type)) return fail(EINVAL, "mknod makes a FIFO, a device node or a socket");
  return make_node(Place{{}, dir, name}, mode, type, owner, {}, rdev);
}

Result<std::string> FsImpl::readlink(InodeNumber ino) {
  std::string target(kBlockSize - 1, '\0');
  size_t n = TRY(read_data(ino, 0, {reinterpret_cast<std::byte*>(target.data()), target.size()}, FileType::Symlink));
  target.resize(n);
  return target;
}

Result<InodeNumber> FsImpl::create(std::string_view path, uint32_t mode, std::optional<Credentials> owner) {
  return make_node(Place{path}, mode, FileType::Regular, owner);
}

Result<InodeNumber> FsImpl::mkdir(std::string_view path, uint32_t mode, std::optional<Credentials> owner) {
  return make_node(Place{path}, mode, FileType::Directory, owner);
}

Result<InodeNumber> FsImpl::create_at(InodeNumber dir, std::string_view name, uint32_t mode,
                                      std::optional<Credentials> owner) {
  return make_node(Place{{}, dir, name}, mode, FileType::Regular, owner);
}

Result<InodeNumber> FsImpl::mkdir_at(InodeNumber dir, std::string_view name, uint32_t mode,
                                     std::optional<Credentials> owner) {
  return make_node(Place{{}, dir, name}, mode, FileType::Directory, owner);
}

void FsImpl::free_inode_records(const Inode& inode, uint32_t nlink_after, Records* records) {
  if (nlink_after != 0 || inode.open_count.load() != 0) return;
  if (!inode.extents.empty()) {
    records->push_back(format::ExtentClearRecord{inode.ino.value(), 0, inode.extents.end().value()});
  }
  records->push_back(format::InodeFreeRecord{inode.ino.value()});
}

Result<void> FsImpl::remove_name(const Place& place, FileType type) {
  auto op = TRY(begin_op(kNamespaceTxBytes, Journal::Use::Freeing));
  std::unique_lock ns(ns_mutex_);
  std::string leaf;
  InodePtr parent = TRY(resolve_parent(place, &leaf));
  auto it = parent->entries->find(leaf);
  if (it == parent->entries->end()) return fail(ENOENT, place.shown() + ": no such file or directory");
  InodePtr child = find_inode(it->second->ino);
  int64_t t = now();
  format::InodeCore parent_core = parent->core;
  parent_core.mtime_ns = parent_core.ctime_ns = t;
  Records records{format::DirentRemoveRecord{parent->ino.value(), leaf}};
  if (type == FileType::Directory) {
    if (!child->is_dir()) return fail(ENOTDIR, place.shown() + ": not a directory");
    if (!child->entries->empty()) return fail(ENOTEMPTY, place.shown() + ": directory not empty");
    --parent_core.nlink;
    records.push_back(parent_core);
    records.push_back(format::InodeFreeRecord{child->ino.value()});
    commit(op, records, {});  // frees an inode: never refused by must_free
    return {};
  }
  if (child->is_dir()) return fail(EISDIR, place.shown() + ": is a directory (use rmdir)");
  if (place.names_a_directory()) return fail(ENOTDIR, place.shown() + ": not a directory (the path ends in '/')");
  std::unique_lock file_lock(child->lock);
  format::InodeCore core = child->core;
  --core.nlink;
  core.ctime_ns = t;
  records.push_back(parent_core);
  records.push_back(core);
  free_inode_records(*child, core.nlink, &records);
  TRY(must_free(op, std::holds_alternative<format::InodeFreeRecord>(records.back())));
  commit(op, records, {child.get()});
  return {};
}

Result<void> FsImpl::unlink(std::string_view path) { return remove_name(Place{path}, FileType::Regular); }
Result<void> FsImpl::rmdir(std::string_view path) { return remove_name(Place{path}, FileType::Directory); }
Result<void> FsImpl::unlink_at(InodeNumber dir, std::string_view name) {
  return remove_name(Place{{}, dir, name}, FileType::Regular);
}
Result<void> FsImpl::rmdir_at(InodeNumber dir, std::string_view name) {
  return remove_name(Place{{}, dir, name}, FileType::Directory);
}

Result<void> FsImpl::rename(std::string_view from, std::string_view to) {
  return rename_places(Place{from}, Place{to}, RenameFlags::None);
}

Result<void> FsImpl::rename_at(InodeNumber from_dir, std::string_view from_name, InodeNumber to_dir,
                               std::string_view to_name, RenameFlags flags) {
  return rename_places(Place{{}, from_dir, from_name}, Place{{}, to_dir, to_name}, flags);
}

Result<void> FsImpl::rename_places(const Place& from, const Place& to, RenameFlags flags) {
  if (flags != RenameFlags::None && flags != RenameFlags::NoReplace && flags != RenameFlags::Exchange) {
    return fail(EINVAL, "rename: unknown flags");
  }
  auto op = TRY(begin_op(kNamespaceTxBytes));
  std::unique_lock ns(ns_mutex_);
  std::string src_leaf, dst_leaf;
  InodePtr src_dir = TRY(resolve_parent(from, &src_leaf));
  InodePtr dst_dir = TRY(resolve_parent(to, &dst_leaf));
  auto src_it = src_dir->entries->find(src_leaf);
  if (src_it == src_dir->entries->end()) return fail(ENOENT, from.shown() + ": no such file or directory");
  InodePtr src = find_inode(src_it->second->ino);
  if (!src->is_dir() && (from.names_a_directory() || to.names_a_directory())) {
    return fail(ENOTDIR, from.shown() + ": not a directory (a path ends in '/')");
  }
  // A directory may not move below itself.
  auto below = [&](const InodePtr& dir, const InodePtr& moved) {
    if (!moved->is_dir()) return false;
    for (InodePtr up = dir;; up = find_inode(up->parent)) {
      if (up->ino == moved->ino) return true;
      if (up->ino == kRootInode) return false;
    }
  };
  if (below(dst_dir, src)) return fail(EINVAL, to.shown() + ": cannot move a directory into itself");
  if (flags == RenameFlags::Exchange) {
    auto dst_it = dst_dir->entries->find(dst_leaf);
    if (dst_it == dst_dir->entries->end()) return fail(ENOENT, to.shown() + ": no such file or directory");
    InodePtr other = find_inode(dst_it->second->ino);
    if (below(src_dir, other)) return fail(EINVAL, from.shown() + ": cannot move a directory into itself");
    if (!other->is_dir() && (from.names_a_directory() || to.names_a_directory())) {
      return fail(ENOTDIR, to.shown() + ": not a directory (a path ends in '/')");
    }
    return exchange_names(op, src_dir, src_leaf, src, dst_dir, dst_leaf, other);
  }
  if (dst_leaf.size() > src_leaf.size()) TRY(expect_space(1, "rename"));  // a longer name in the next checkpoint
  InodePtr victim;
  if (auto dst_it = dst_dir->entries->find(dst_leaf); dst_it != dst_dir->entries->end()) {
    victim = find_inode(dst_it->second->ino);
    if (flags == RenameFlags::NoReplace) return fail(EEXIST, to.shown() + ": already exists");
    if (victim->ino == src->ino) return {};  // both names already link the same inode
    if (src->is_dir() && !victim->is_dir()) return fail(ENOTDIR, to.shown() + ": not a directory");
    if (!src->is_dir() && victim->is_dir()) return fail(EISDIR, to.shown() + ": is a directory");
    if (victim->is_dir() && !victim->entries->empty()) {
      return fail(ENOTEMPTY, to.shown() + ": directory not empty");
    }
  }
  // Lock the regular files whose attributes change, in inode order.
  std::vector<Inode*> files;
  if (!src->is_dir()) files.push_back(src.get());
  if (victim && !victim->is_dir()) files.push_back(victim.get());
  std::sort(files.begin(), files.end(), [](Inode* a, Inode* b) { return a->ino < b->ino; });
  std::vector<std::unique_lock<std::shared_mutex>> locks;
  for (Inode* f : files) locks.emplace_back(f->lock);

  int64_t t = now();
  format::InodeCore src_parent_core = src_dir->core;
  format::InodeCore dst_parent_core = dst_dir->core;
  Records records{format::DirentRemoveRecord{src_dir->ino.value(), src_leaf}};
  if (victim) {
    records.push_back(format::DirentRemoveRecord{dst_dir->ino.value(), dst_leaf});
    if (victim->is_dir()) --dst_parent_core.nlink;
  }
  records.push_back(format::DirentRecord{dst_dir->ino.value(), src->ino.value(), dst_leaf});
  if (src->is_dir() && src_dir->ino != dst_dir->ino) {
    --src_parent_core.nlink;
    ++dst_parent_core.nlink;
  }
  src_parent_core.mtime_ns = src_parent_core.ctime_ns = t;
  dst_parent_core.mtime_ns = dst_parent_core.ctime_ns = t;
  if (src_dir->ino == dst_dir->ino) {
    records.push_back(dst_parent_core);  // one directory: only the victim changed its nlink
  } else {
    records.push_back(src_parent_core);
    records.push_back(dst_parent_core);
  }
  format::InodeCore src_core = src->core;
  src_core.ctime_ns = t;
  records.push_back(src_core);
  if (victim && victim->is_dir()) {
    records.push_back(format::InodeFreeRecord{victim->ino.value()});
  } else if (victim) {
    format::InodeCore vcore = victim->core;
    --vcore.nlink;
    vcore.ctime_ns = t;
    records.push_back(vcore);
    free_inode_records(*victim, vcore.nlink, &records);
  }
  commit_with_files(op, records, files);
  return {};
}

Result<void> FsImpl::exchange_names(Op& op, const InodePtr& a_dir, const std::string& a_leaf, const InodePtr& a,
                                    const InodePtr& b_dir, const std::string& b_leaf, const InodePtr& b) {
  if (a->ino == b->ino) return {};  // two names of one inode: nothing changes
  std::vector<Inode*> files;
  for (Inode* f : {a.get(), b.get()}) {
    if (!f->is_dir()) files.push_back(f);
  }
  std::sort(files.begin(), files.end(), [](Inode* x, Inode* y) { return x->ino < y->ino; });
  std::vector<std::unique_lock<std::shared_mutex>> locks;
  for (Inode* f : files) locks.emplace_back(f->lock);
  int64_t t = now();
  Records records{format::DirentRemoveRecord{a_dir->ino.value(), a_leaf},
                  format::DirentRemoveRecord{b_dir->ino.value(), b_leaf},
                  format::DirentRecord{a_dir->ino.value(), b->ino.value(), a_leaf},
                  format::DirentRecord{b_dir->ino.value(), a->ino.value(), b_leaf}};
  format::InodeCore a_dir_core = a_dir->core, b_dir_core = b_dir->core;
  if (a_dir->ino != b_dir->ino && a->is_dir() && !b->is_dir()) {  // a subdirectory changes parents
    --a_dir_core.nlink;
    ++b_dir_core.nlink;
  } else if (a_dir->ino != b_dir->ino && b->is_dir() && !a->is_dir()) {
    ++a_dir_core.nlink;
    --b_dir_core.nlink;
  }
  a_dir_core.mtime_ns = a_dir_core.ctime_ns = b_dir_core.mtime_ns = b_dir_core.ctime_ns = t;
  records.push_back(a_dir_core);
  if (a_dir->ino != b_dir->ino) records.push_back(b_dir_core);
  for (const InodePtr& f : {a, b}) {
    format::InodeCore core = f->core;
    core.ctime_ns = t;
    records.push_back(core);
  }
  commit_with_files(op, records, files);
  return {};
}

void FsImpl::commit_with_files(Op& op, const Records& records, const std::vector<Inode*>& files) {
  POISE_ASSERT(files.size() <= 2);
  if (files.size() == 2) {
    commit(op, records, {files[0], files[1]});
  } else if (files.size() == 1) {
    commit(op, records, {files[0]});
  } else {
    commit(op, records, {});
  }
}

Result<void> FsImpl::link(std::string_view existing, std::string_view new_path) {
  return link_place(existing, InodeNumber{}, Place{new_path});
}

Result<void> FsImpl::link_at(InodeNumber ino, InodeNumber dir, std::string_view name) {
  return link_place({}, ino, Place{{}, dir, name});
}

Result<void> FsImpl::link_place(std::string_view existing, InodeNumber ino, const Place& place, bool first_name,
                               bool replace) {
  auto op = TRY(begin_op(kNamespaceTxBytes));
  std::unique_lock ns(ns_mutex_);
  InodePtr target;
  std::string shown = existing.empty() ? "inode " + std::to_string(ino.value()) : std::string(existing);
  if (ino == InodeNumber{}) {
    target = TRY(resolve(existing));
  } else {
    target = find_inode(ino);
    if (target == nullptr) return fail(ENOENT, shown + ": no such file");
  }
  if (target->is_dir()) return fail(EPERM, shown + ": cannot hard-link a directory");
  std::string leaf;
  InodePtr dir = TRY(resolve_parent(place, &leaf));
  InodePtr victim;  // what `replace` replaces, as rename(2) would
  if (auto it = dir->entries->find(leaf); it != dir->entries->end()) {
    if (!replace) return fail(EEXIST, place.shown() + ": already exists");
    victim = find_inode(it->second->ino);
    if (victim->is_dir()) return fail(EISDIR, place.shown() + ": is a directory");
    if (victim->ino == target->ino) return {};  // the name links it already
  }
  if (place.names_a_directory()) return fail(ENOTDIR, place.shown() + ": a file's name cannot end in '/'");
  TRY(expect_space(1, "link"));  // room for the new name in the next checkpoint
  // The files whose attributes change, locked in inode order.
  std::vector<Inode*> files{target.get()};
  if (victim) files.push_back(victim.get());
  std::sort(files.begin(), files.end(), [](Inode* a, Inode* b) { return a->ino < b->ino; });
  std::vector<std::unique_lock<std::shared_mutex>> locks;
  for (Inode* f : files) locks.emplace_back(f->lock);
  // A file whose last name is gone (open but unlinked) cannot get a new one;
  // one made unnamed (open_tmpfile) gets its first.
  if ((target->core.nlink == 0 && !target->linkable) || target->freed) {
    return fail(ENOENT, shown + ": the file has been removed");
  }
  // link_tmpfile names a file made unnamed once; a named one is linked by its path.
  if (first_name && !target->linkable) return fail(EINVAL, shown + ": the file already has a name");
  if (target->core.nlink >= kLinksMax) return fail(EMLINK, shown + ": too many links");
  int64_t t = now();
  format::InodeCore core = target->core;
  ++core.nlink;
  core.ctime_ns = t;
  format::InodeCore dir_core = dir->core;
  dir_core.mtime_ns = dir_core.ctime_ns = t;
  Records records;
  if (victim) {  // its name goes in the same transaction, and the file with its last name
    records.push_back(format::DirentRemoveRecord{dir->ino.value(), leaf});
    format::InodeCore vcore = victim->core;
    --vcore.nlink;
    vcore.ctime_ns = t;
    records.push_back(vcore);
    free_inode_records(*victim, vcore.nlink, &records);
  }
  records.insert(records.end(), {format::DirentRecord{dir->ino.value(), target->ino.value(), leaf}, core, dir_core});
  commit_with_files(op, records, files);
  target->linkable = false;  // as Linux's I_LINKABLE: once named, it is an ordinary file
  return {};
}

Result<Stat> FsImpl::set_attributes(InodeNumber ino, const SetAttributes& attrs) {
  if (attrs.mode && (*attrs.mode & ~format::kModePermMask) != 0) {
    return fail(EINVAL, "a mode holds permission bits only (07777)");
  }
  auto op = TRY(begin_op(kNamespaceTxBytes));
  // A directory's attributes are guarded by ns_mutex_; a file's by its own
  // lock alone, so a busy file never holds up the namespace.
  InodePtr inode = TRY(get_inode(ino));
  std::unique_lock<std::shared_mutex> ns;
  if (inode->is_dir()) ns = std::unique_lock(ns_mutex_);
  std::unique_lock lock(inode->lock);
  if (inode->freed) return fail(ENOENT, "file was deleted");
  format::InodeCore core = inode->core;
  Records records;
  if (attrs.mode) {
    core.mode = (core.mode & ~format::kModePermMask) | *attrs.mode;
    if (auto acl = acl_after_chmod(*inode, *attrs.mode)) records.push_back(std::move(*acl));  // as chmod(2) does
  }
  if (attrs.uid) core.uid = *attrs.uid;
  if (attrs.gid) core.gid = *attrs.gid;
  int64_t t = now();
  if (attrs.atime_ns) core.atime_ns = *attrs.atime_ns == SetAttributes::kNow ? t : *attrs.atime_ns;
  if (attrs.mtime_ns) core.mtime_ns = *attrs.mtime_ns == SetAttributes::kNow ? t : *attrs.mtime_ns;
  core.ctime_ns = t;
  records.push_back(core);
  commit(op, records, {inode.get()});
  return stat_of(*inode);
}

void FsImpl::note_access(InodeNumber ino) {
  constexpr int64_t kDayNs = 24ll * 3600 * 1'000'000'000;
  const int64_t t = now();
  auto due = [&](const format::InodeCore& c) {
    return c.atime_ns <= c.mtime_ns || c.atime_ns <= c.ctime_ns || t - c.atime_ns >= kDayNs;
  };
  auto found = get_inode(ino);
  if (!found.has_value()) return;
  InodePtr inode = *found;
  {  // the common case, not due: shared locks only
    std::shared_lock<std::shared_mutex> ns;
    if (inode->is_dir()) ns = std::shared_lock(ns_mutex_);
    std::shared_lock lock(inode->lock);
    if (inode->freed || !due(inode->core)) return;
  }
  auto op = try_begin_op(kNamespaceTxBytes);
  if (!op) return;
  std::unique_lock<std::shared_mutex> ns;
  if (inode->is_dir()) ns = std::unique_lock(ns_mutex_);
  std::unique_lock lock(inode->lock);
  if (inode->freed || !due(inode->core)) return;
  format::InodeCore core = inode->core;
  core.atime_ns = t;  // an access changes no other time
  commit(*op, {core}, {inode.get()});
}

Result<std::vector<DirEntry>> FsImpl::readdir(std::string_view path) {
  std::shared_lock ns(ns_mutex_);
  InodePtr dir = TRY(resolve(path));
  if (!dir->is_dir()) return fail(ENOTDIR, std::string(path) + ": not a directory");
  return list_locked(*dir);
}

Result<std::vector<DirEntry>> FsImpl::readdir_at(InodeNumber ino) {
  if (!mounted_) return fail(EIO, "filesystem is not mounted");
  std::shared_lock ns(ns_mutex_);
  InodePtr dir = find_inode(ino);
  if (dir == nullptr) return fail(ENOENT, "no inode " + std::to_string(ino.value()));
  if (!dir->is_dir()) return fail(ENOTDIR, "inode " + std::to_string(ino.value()) + " is not a directory");
  return list_locked(*dir);
}

std::vector<DirEntry> FsImpl::list_locked(const Inode& dir) const {
  std::vector<DirEntry> out;
  out.reserve(dir.entries->size());
  for (const auto& [name, child] : *dir.entries) {
    out.push_back(DirEntry{name, child->ino, child->type()});
  }
  std::sort(out.begin(), out.end(), [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
  return out;
}

Result<Stat> FsImpl::stat(std::string_view path) {
  std::shared_lock ns(ns_mutex_);
  Inode* inode = TRY(resolve_locked(path));
  std::shared_lock lock(inode->lock);
  return stat_of(*inode);
}

Result<Stat> FsImpl::stat(InodeNumber ino) {
  std::shared_lock ns(ns_mutex_);
  InodePtr inode = find_inode(ino);
  if (inode == nullptr) return fail(ENOENT, "no inode " + std::to_string(ino.value()));
  std::shared_lock lock(inode->lock);
  return stat_of(*inode);
}

Result<File> FsImpl::open(std::string_view path, OpenFlags flags, uint32_t mode) {
  InodeNumber ino;
  for (int attempt = 0;; ++attempt) {
    // Another thread can unlink what we found, or create what we did not, between
    // the lookup and the create; each lost race is retried, up to a limit.
    if (attempt == kOpenAttemptsMax) {
      return fail(EAGAIN, std::string(path) + ": created and removed by others " +
                              std::to_string(kOpenAttemptsMax) + " times while opening; try again");
    }
    auto found = lookup(path);
    if (found.has_value()) {
      if (has(flags, OpenFlags::Create) && has(flags, OpenFlags::Exclusive)) {
        return fail(EEXIST, std::string(path) + ": already exists");
      }
      ino = *found;
      break;
    }
    if (found.error().code != ENOENT || !has(flags, OpenFlags::Create)) {
      return Unexpected<Error>(std::move(found).error());
    }
    auto made = create(path, mode);
    if (made.has_value()) {
      ino = *made;
      break;
    }
    if (made.error().code != EEXIST) return Unexpected<Error>(std::move(made).error());
  }
  TRY(retain(ino));
  File file(this, ino);
  auto st = TRY(stat(ino));
  if (st.type == FileType::Directory) return fail(EISDIR, std::string(path) + ": is a directory");
  if (st.type == FileType::Symlink) return fail(ELOOP, std::string(path) + ": is a symbolic link (not followed)");
  if (is_special(st.type)) {
    return fail(EINVAL, std::string(path) + ": is a special file (it holds no data; open it through the FUSE mount)");
  }
  if (has(flags, OpenFlags::Truncate) && st.size_bytes != 0) TRY(truncate(ino, 0));
  return file;
}

Result<void> FsImpl::retain(InodeNumber ino) {
  std::shared_lock ns(ns_mutex_);
  InodePtr inode = find_inode(ino);
  if (inode == nullptr) return fail(ENOENT, "no inode " + std::to_string(ino.value()));
  inode->open_count.fetch_add(1);
  return {};
}

void FsImpl::release(InodeNumber ino) {
  InodePtr inode;
  {
    std::shared_lock ns(ns_mutex_);
    inode = find_inode(ino);
  }
  if (inode == nullptr) return;
  // A writable direct mapping's stores have no record: a release (the end of
  // a mapping among them) tells caches that the file may have changed.
  if (inode->mapped_writable.load(std::memory_order_relaxed)) {
    report_change(FsChange{FsChange::Kind::Data, ino, 0, 0, {}});
  }
  if (inode->open_count.fetch_sub(1) != 1) return;
  if (!mounted_ || options_.mode == MountMode::ReadOnly) return;
  if (frozen_flag_.load(std::memory_order_acquire)) {
    // A removal is under way: never wait for it here. The last pin of a file
    // may be let go by the very thread that goes on to remove the device.
    std::lock_guard lock(freeze_mutex_);
    if (frozen_) {
      released_while_frozen_.push_back(ino);
      return;
    }
  }
  free_if_unreferenced(inode);
}

void FsImpl::free_if_unreferenced(const InodePtr& inode) {
  auto op = begin_op(kNamespaceTxBytes, Journal::Use::Freeing);
  if (!op.has_value()) return;  // left as an orphan; the next mount frees it
  std::unique_lock ns(ns_mutex_);
  std::unique_lock lock(inode->lock);
  if (inode->freed || inode->open_count.load() != 0) return;
  Records records;
  free_inode_records(*inode, inode->core.nlink, &records);
  commit(*op, records, {inode.get()});
}

std::optional<std::pair<Inode*, std::string_view>> FsImpl::name_of(const Inode& inode) const {
  if (!inode.name.empty()) {
    InodePtr parent = find_inode(inode.parent);
    if (parent != nullptr && parent->is_dir()) {
      auto it = parent->entries->find(inode.name);
      if (it != parent->entries->end() && it->second == &inode) return std::pair{parent.get(), std::string_view(it->first)};
    }
  }
  if (inode.entry_count == 0) return std::nullopt;
  // The latest name went while another remains (a hard link): rare, and only
  // path_of asks, so a search instead of a record of every name.
  for (const auto& [ino, dir] : inodes_) {
    if (!dir->is_dir()) continue;
    for (const auto& [name, child] : *dir->entries) {
      if (child == &inode) return std::pair{dir.get(), std::string_view(name)};
    }
  }
  return std::nullopt;
}

Result<std::string> FsImpl::path_of(InodeNumber ino) {
  std::shared_lock ns(ns_mutex_);
  InodePtr start = find_inode(ino);
  if (start == nullptr) return fail(ENOENT, "no inode " + std::to_string(ino.value()));
  std::vector<std::string_view> names;
  constexpr int kDepthMax = 4096;
  // Each step is one lookup (the name each inode keeps of itself): O(depth).
  for (const Inode* inode = start.get(); inode->ino != kRootInode;) {
    if (names.size() == kDepthMax) return fail(ELOOP, "directory chain too deep");
    auto named = name_of(*inode);
    if (!named) return fail(ENOENT, "inode " + std::to_string(inode->ino.value()) + " has no name (unlinked)");
    names.push_back(named->second);
    inode = named->first;
  }
  std::string path;
  for (auto it = names.rbegin(); it != names.rend(); ++it) path.append("/").append(*it);
  return path.empty() ? std::string("/") : path;
}

File& File::operator=(File&& o) noexcept {
  if (this != &o) {
    close();
    fs_ = o.fs_;
    ino_ = o.ino_;
    o.fs_ = nullptr;
  }
  return *this;
}

void File::close() {
  if (fs_ != nullptr) fs_->release(ino_);
  fs_ = nullptr;
}

Result<size_t> File::read(uint64_t offset, std::span<std::byte> out) {
  POISE_ASSERT(fs_ != nullptr);
  return fs_->read(ino_, offset, out);
}
Result<size_t> File::write(uint64_t offset, std::span<const std::byte> in) {
  POISE_ASSERT(fs_ != nullptr);
  return fs_->write(ino_, offset, in);
}
Result<void> File::truncate(uint64_t size_bytes) {
  POISE_ASSERT(fs_ != nullptr);
  return fs_->truncate(ino_, size_bytes);
}
Result<void> File::fsync() {
  POISE_ASSERT(fs_ != nullptr);
  return fs_->fsync(ino_);
}
Result<Stat> File::stat() {
  POISE_ASSERT(fs_ != nullptr);
  return fs_->stat(ino_);
}

}  // namespace poise
