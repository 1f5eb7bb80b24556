// The server's permission checks, as the kernel makes them for the same system
// calls: POSIX mode bits, owner and group (with supplementary groups), the
// sticky bit, search permission on every directory walked, and which inodes a
// client may name by number (the ones it reached through a checked path).
// Root and the server's own user pass every check (privileged).
//
// Thread-safety: an Access is made per request; it reads the filesystem and
// the client's state, which the request's thread holds.
#pragma once

#include <sys/stat.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "fs/posix_acl.h"
#include "poise/filesystem.h"
#include "serve/server.h"

namespace poise::serve {

// Path components, empty ones dropped ("/a//b/" -> a, b).
inline std::vector<std::string> components(std::string_view path) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= path.size()) {
    size_t slash = path.find('/', at);
    if (slash == std::string_view::npos) slash = path.size();
    if (slash > at) out.emplace_back(path.substr(at, slash - at));
    at = slash + 1;
  }
  return out;
}

inline std::string join(const std::vector<std::string>& parts, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) out += "/" + parts[i];
  return out.empty() ? "/" : out;
}

// The permission checks, as the kernel makes them for the same system calls.
class Access {
 public:
  Access(Filesystem& fs, const Server::Client& c) : fs_(fs), c_(c) {}

  bool permits(const Stat& st, uint32_t want) const {
    if (c_.privileged) return true;
    // A file with an access ACL is decided by it, as the kernel decides.
    if (auto value = fs_.get_xattr(st.ino, acl::kAccessName); value.has_value()) {
      if (auto parsed = acl::parse(*value); parsed.has_value()) {
        std::vector<uint32_t> groups{c_.peer.gid};
        groups.insert(groups.end(), c_.peer.groups.begin(), c_.peer.groups.end());
        return acl::permits(*parsed, st.uid, st.gid, c_.peer.uid, groups, want);
      }
    }
    uint32_t bits = st.mode & 07;
    if (c_.peer.uid == st.uid) {
      bits = (st.mode >> 6) & 07;
    } else if (c_.peer.gid == st.gid || std::find(c_.peer.groups.begin(), c_.peer.groups.end(), st.gid) != c_.peer.groups.end()) {
      bits = (st.mode >> 3) & 07;
    }
    return (bits & want) == want;
  }

  // Search permission on every directory above the last component.
  Result<void> may_walk(std::string_view path) const {
    if (c_.privileged) return {};
    auto parts = components(path);
    for (size_t n = 0; n + 1 <= parts.size(); ++n) {
      if (n == parts.size()) break;
      std::string dir = join(parts, n);
      auto st = TRY(fs_.stat(dir));
      if (st.type == FileType::Directory && !permits(st, 1)) {
        return fail(EACCES, std::string(path) + ": permission denied (no search permission on " + dir + ")");
      }
    }
    return {};
  }

  // Directory DIR (by number) can be walked to now: search permission on
  // every directory above it, up to the root, as may_walk checks a path's.
  // (Reaching it once is not enough: a chmod or a move may have closed the way
  // since.) Followed by "..", so it works below any path length.
  Result<void> may_walk_to(InodeNumber dir) const {
    if (c_.privileged) return {};
    constexpr int kDepthMax = 1 << 20;  // a cycle would be refused at mount; bounded all the same
    InodeNumber at = dir;
    for (int depth = 0; at != kRootInode; ++depth) {
      if (depth == kDepthMax) return fail(ELOOP, "inode " + std::to_string(dir.value()) + ": no way up to the root");
      const InodeNumber parent = TRY(fs_.lookup_at(at, ".."));
      const Stat st = TRY(fs_.stat(parent));
      if (!permits(st, 1)) {
        return fail(EACCES, "inode " + std::to_string(dir.value()) + ": permission denied (no search permission on "
                            "a directory above it)");
      }
      at = parent;
    }
    return {};
  }

  // The file at PATH (walked to) allows `want`.
  Result<Stat> may_use(std::string_view path, uint32_t want) const {
    TRY(may_walk(path));
    auto st = TRY(fs_.stat(path));
    if (!permits(st, want)) return fail(EACCES, std::string(path) + ": permission denied");
    return st;
  }

  // An inode named by number: one this client reached through a checked path.
  Result<void> may_name(InodeNumber ino) const {
    if (c_.privileged || c_.reached.count(ino.value()) != 0) return {};
    return fail(EACCES, "inode " + std::to_string(ino.value()) + ": permission denied (look it up by path first)");
  }

  Result<Stat> may_use(InodeNumber ino, uint32_t want) const {
    TRY(may_name(ino));
    auto st = TRY(fs_.stat(ino));
    if (!permits(st, want)) return fail(EACCES, "inode " + std::to_string(ino.value()) + ": permission denied");
    return st;
  }

  // Adding, removing or renaming the last component of PATH: write and search
  // permission on its directory; removing also needs, in a sticky directory,
  // that the caller owns the directory or the entry.
  Result<void> may_change_name(std::string_view path, bool removes) const {
    if (c_.privileged) return {};
    auto parts = components(path);
    if (parts.empty()) return fail(EBUSY, "the root cannot be changed");
    TRY(may_walk(path));
    // A name that exists is EEXIST for whoever may search its directory, as
    // the kernel answers before it checks write permission (mkdir -p walks
    // through directories it may not write).
    if (!removes && fs_.stat(path).has_value()) return fail(EEXIST, std::string(path) + ": already exists");
    std::string parent = join(parts, parts.size() - 1);
    auto dir = TRY(fs_.stat(parent));
    if (!permits(dir, 3)) return fail(EACCES, std::string(path) + ": permission denied (cannot write " + parent + ")");
    if (removes && (dir.mode & S_ISVTX) != 0) {
      auto victim = fs_.stat(path);
      if (victim.has_value() && victim->uid != c_.peer.uid && dir.uid != c_.peer.uid) {
        return fail(EPERM, std::string(path) + ": operation not permitted (sticky directory)");
      }
    }
    return {};
  }

  // Removing NAME from directory DIR (named by number): as may_change_name.
  Result<void> may_remove_at(InodeNumber dir, std::string_view name) const {
    TRY(may_name(dir));
    if (c_.privileged) return {};
    TRY(may_walk_to(dir));
    const Stat st = TRY(fs_.stat(dir));
    if (!permits(st, 3)) return fail(EACCES, "inode " + std::to_string(dir.value()) + ": permission denied (cannot write it)");
    if ((st.mode & S_ISVTX) != 0) {
      auto victim = fs_.lookup_at(dir, name);
      if (victim.has_value()) {
        auto vst = fs_.stat(*victim);
        if (vst.has_value() && vst->uid != c_.peer.uid && st.uid != c_.peer.uid) {
          return fail(EPERM, std::string(name) + ": operation not permitted (sticky directory)");
        }
      }
    }
    return {};
  }

  // Who may read or change an extended attribute, as the kernel decides:
  // trusted. is root's (others neither see nor read it); security. reads for
  // anyone and changes for root; an ACL changes by its file's owner; user.
  // needs read or write permission and is only on files and directories.
  Result<void> may_xattr(InodeNumber ino, std::string_view name, bool change) const {
    TRY(may_name(ino));
    if (c_.privileged) return {};
    auto st = TRY(fs_.stat(ino));
    const std::string what = std::string(name) + " of inode " + std::to_string(ino.value());
    auto in = [&](std::string_view prefix) { return name.substr(0, prefix.size()) == prefix; };
    if (in("trusted.")) {
      return change ? fail(EPERM, what + ": trusted. attributes are root's") : fail(ENODATA, what + ": no such attribute");
    }
    if (in("security.")) return change ? fail(EPERM, what + ": security. attributes are root's to change") : Result<void>{};
    if (in("system.")) {
      if (change && st.uid != c_.peer.uid) return fail(EPERM, what + ": only the file's owner changes its ACL");
      return {};
    }
    if (st.type != FileType::Regular && st.type != FileType::Directory) {
      return change ? fail(EPERM, what + ": user. attributes are for files and directories")
                    : fail(ENODATA, what + ": no such attribute");
    }
    if (change && st.type == FileType::Directory && (st.mode & S_ISVTX) != 0 && st.uid != c_.peer.uid) {
      return fail(EPERM, what + ": in a sticky directory only its owner changes user. attributes");
    }
    if (!permits(st, change ? 2 : 4)) return fail(EACCES, what + ": permission denied");
    return {};
  }
  // A directory moving to another parent changes its "..": that needs write
  // permission on the directory itself (as the kernel's rename checks).
  Result<void> may_move_directory(std::string_view from, std::string_view to) const {
    if (c_.privileged) return {};
    auto moved = fs_.stat(from);
    if (!moved.has_value() || moved->type != FileType::Directory) return {};  // the rename itself answers
    auto parent_of = [&](std::string_view p) {
      auto parts = components(p);
      return fs_.lookup(join(parts, parts.empty() ? 0 : parts.size() - 1));
    };
    auto a = parent_of(from), b = parent_of(to);
    if (a.has_value() && b.has_value() && *a == *b) return {};
    if (!permits(*moved, 2)) {
      return fail(EACCES, std::string(from) + ": permission denied (moving a directory to another parent needs "
                                              "write permission on it)");
    }
    return {};
  }
  bool in_group(uint32_t gid) const {
    return gid == c_.peer.gid || std::find(c_.peer.groups.begin(), c_.peer.groups.end(), gid) != c_.peer.groups.end();
  }

  // Whether the caller belongs to the group a new file at PATH gets: its own,
  // or a set-group-ID parent's. A file of another group is made without
  // set-group-ID (unless the caller is privileged).
  bool in_group_of_new_file(std::string_view path) const {
    if (c_.privileged) return true;
    auto parts = components(path);
    auto dir = fs_.stat(join(parts, parts.empty() ? 0 : parts.size() - 1));
    return in_group(dir.has_value() && (dir->mode & S_ISGID) != 0 ? dir->gid : c_.peer.gid);
  }
  bool sees_xattr(std::string_view name) const {
    return c_.privileged || name.substr(0, 8) != "trusted.";
  }

  Result<void> privileged(const char* what) const {
    if (c_.privileged) return {};
    return fail(EACCES, std::string(what) + " through poise serve is for root and the server's own user");
  }

 private:
  Filesystem& fs_;
  const Server::Client& c_;
};

}  // namespace poise::serve
