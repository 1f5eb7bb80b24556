// Extended attributes: a small map per inode, changed by journaled records
// (XattrRecord, XattrRemoveRecord) and kept in the checkpoint's directory
// section. POSIX ACLs are attributes too; the filesystem keeps the mode bits
// and the access ACL in step and hands a directory's default ACL to what is
// made in it (fs/posix_acl.h).
#include "format/records.h"
#include "fs/fs_impl.h"
#include "fs/posix_acl.h"

namespace poise {
namespace {
constexpr std::string_view kSystemPrefix = "system.";

bool is_acl_name(std::string_view name) { return name == acl::kAccessName || name == acl::kDefaultName; }

// ERANGE for a name of the wrong length (as the kernel's own check), ENOTSUP
// for a namespace poise does not keep.
Result<void> check_xattr_name(std::string_view name) {
  if (name.empty() || name.size() > format::kXattrNameBytesMax) {
    return fail(ERANGE, "an attribute name is 1..255 bytes");
  }
  if (!format::valid_xattr_name(name)) {
    return fail(ENOTSUP, std::string(name) + ": not a user., trusted., security. or system. attribute");
  }
  if (name.substr(0, kSystemPrefix.size()) == kSystemPrefix && !is_acl_name(name)) {
    return fail(ENOTSUP, std::string(name) + ": the only system. attributes are the POSIX ACLs");
  }
  return {};
}

// What an attribute counts against the per-inode bound: its name with the NUL
// that ends it in a listing, and its value. So a listing (every name and its
// NUL) always fits in the 64 KiB the kernel takes (XATTR_LIST_MAX).
uint64_t charge(std::string_view name, std::string_view value) { return name.size() + 1 + value.size(); }

uint64_t bytes_of(const Xattrs* xattrs) {
  uint64_t total = 0;
  if (xattrs != nullptr) {
    for (const auto& [name, value] : *xattrs) total += charge(name, value);
  }
  return total;
}
}  // namespace

Result<void> FsImpl::set_xattr(InodeNumber ino, std::string_view name, std::string_view value, XattrMode mode) {
  const std::string copy(value);
  return change_xattr(ino, name, &copy, mode);
}

Result<void> FsImpl::remove_xattr(InodeNumber ino, std::string_view name) {
  return change_xattr(ino, name, nullptr, XattrMode::Replace);
}

Result<void> FsImpl::change_xattr(InodeNumber ino, std::string_view name, const std::string* value, XattrMode mode) {
  TRY(check_xattr_name(name));
  if (value != nullptr && value->size() > format::kXattrValueBytesMax) {
    return fail(E2BIG, "an attribute value is at most " + std::to_string(format::kXattrValueBytesMax) + " bytes");
  }
  const bool access_acl = name == acl::kAccessName;
  const bool default_acl = name == acl::kDefaultName;
  std::optional<acl::Acl> parsed;
  if (value != nullptr && (access_acl || default_acl)) {
    // An ACL of no entries is a removal (as Linux reads one).
    if (acl::is_empty(*value)) return change_xattr(ino, name, nullptr, XattrMode::Either);
    parsed = TRY(acl::parse(*value));
  }
  // The image is marked before the first attribute; a removal never needs it
  // (without the mark there is nothing to remove).
  if (value != nullptr) TRY(enable_feature(format::kIncompatXattrs));
  auto op = TRY(begin_op(kNamespaceTxBytes + format::xattr_bytes(name.size(), value ? value->size() : 0)));
  InodePtr inode = TRY(get_inode(ino));
  std::unique_lock ns(ns_mutex_);
  std::unique_lock<std::shared_mutex> lock;
  if (!inode->is_dir()) lock = std::unique_lock(inode->lock);
  if (inode->freed) return fail(ENOENT, "file was deleted");
  if ((access_acl || default_acl) && inode->kind == FileType::Symlink) {
    return fail(ENOTSUP, "a symbolic link has no ACL");
  }
  if (inode->kind != FileType::Regular && !inode->is_dir() && name.substr(0, 5) == "user.") {
    return fail(EPERM, "user. attributes are for files and directories only (as Linux keeps them)");
  }
  if (default_acl && value != nullptr && !inode->is_dir()) {
    return fail(EACCES, "only a directory has a default ACL");
  }
  const std::string key(name);
  const std::string* existing = nullptr;
  if (inode->xattrs) {
    auto it = inode->xattrs->find(key);
    if (it != inode->xattrs->end()) existing = &it->second;
  }
  if (mode == XattrMode::Create && existing != nullptr) return fail(EEXIST, key + ": attribute exists");
  // Removing an ACL that is not there succeeds, as on Linux (the mode says it all).
  if (value == nullptr && existing == nullptr && (access_acl || default_acl)) return {};
  if (mode == XattrMode::Replace && existing == nullptr) return fail(ENODATA, key + ": no such attribute");
  format::InodeCore core = inode->core;
  core.ctime_ns = now();
  bool keep = value != nullptr;
  if (access_acl && parsed) {
    // The ACL's owner, group-class and other entries are the permission bits;
    // an ACL that says no more than those is not kept (as Linux does).
    core.mode = (core.mode & ~0777u) | acl::mode_bits(*parsed);
    keep = !acl::says_only_mode(*parsed);
  }
  Records records;
  if (keep) {
    const uint64_t after = bytes_of(inode->xattrs.get()) + charge(key, *value) -
                           (existing != nullptr ? charge(key, *existing) : 0);
    if (after > format::kXattrInodeBytesMax) {
      return fail(ENOSPC, "a file holds at most " + std::to_string(format::kXattrInodeBytesMax) +
                              " bytes of attribute names (one more byte each) and values");
    }
    const uint64_t record = format::xattr_bytes(key.size(), value->size());
    const uint64_t grows = existing == nullptr ? record : record - std::min(record, format::xattr_bytes(key.size(), existing->size()));
    TRY(expect_space(xattr_space_blocks(grows, record), "setxattr"));
    records.push_back(format::XattrRecord{ino.value(), key, *value});
  } else if (existing != nullptr) {
    records.push_back(format::XattrRemoveRecord{ino.value(), key});
  }
  records.push_back(core);
  commit(op, records, {inode.get()});
  return {};
}

Result<std::string> FsImpl::get_xattr(InodeNumber ino, std::string_view name) {
  TRY(check_xattr_name(name));
  InodePtr inode = TRY(get_inode(ino));
  std::shared_lock ns(ns_mutex_);
  std::shared_lock<std::shared_mutex> lock;
  if (!inode->is_dir()) lock = std::shared_lock(inode->lock);
  if (inode->freed) return fail(ENOENT, "file was deleted");
  if (inode->xattrs) {
    auto it = inode->xattrs->find(name);
    if (it != inode->xattrs->end()) return it->second;
  }
  return fail(ENODATA, std::string(name) + ": no such attribute");
}

Result<std::vector<std::string>> FsImpl::list_xattrs(InodeNumber ino) {
  InodePtr inode = TRY(get_inode(ino));
  std::shared_lock ns(ns_mutex_);
  std::shared_lock<std::shared_mutex> lock;
  if (!inode->is_dir()) lock = std::shared_lock(inode->lock);
  if (inode->freed) return fail(ENOENT, "file was deleted");
  std::vector<std::string> names;
  if (inode->xattrs) {
    for (const auto& [name, value] : *inode->xattrs) names.push_back(name);
  }
  return names;
}

bool FsImpl::inherit_acls(const Inode& parent, format::InodeCore& core, Records* records) const {
  if (!parent.xattrs) return false;
  auto it = parent.xattrs->find(acl::kDefaultName);
  if (it == parent.xattrs->end()) return false;
  auto parsed = acl::parse(it->second);
  if (!parsed.has_value()) return false;  // damage the checker reports: as if there were none
  acl::Acl access = *parsed;
  core.mode = (core.mode & ~0777u) | acl::inherit(access, core.mode & 0777u);
  if (!acl::says_only_mode(access)) {
    records->push_back(format::XattrRecord{core.ino, std::string(acl::kAccessName), acl::encode(access)});
  }
  if ((core.mode & format::kModeTypeMask) == format::kModeDirectory) {
    records->push_back(format::XattrRecord{core.ino, std::string(acl::kDefaultName), it->second});
  }
  return true;
}

std::optional<format::XattrRecord> FsImpl::acl_after_chmod(const Inode& inode, uint32_t mode) const {
  if (!inode.xattrs) return std::nullopt;
  auto it = inode.xattrs->find(acl::kAccessName);
  if (it == inode.xattrs->end()) return std::nullopt;
  auto parsed = acl::parse(it->second);
  if (!parsed.has_value()) return std::nullopt;
  acl::apply_mode(*parsed, mode);
  return format::XattrRecord{inode.ino.value(), it->first, acl::encode(*parsed)};
}

void check_xattrs(const Inode& inode, bool feature_bit, const std::string& who,
                  const std::function<void(std::string)>& problem) {
  if (!inode.xattrs || inode.xattrs->empty()) return;
  if (!feature_bit) problem(who + ": extended attributes on an image without the extended-attribute feature bit");
  if (bytes_of(inode.xattrs.get()) > format::kXattrInodeBytesMax) {
    problem(who + ": more than " + std::to_string(format::kXattrInodeBytesMax) + " bytes of extended attributes");
  }
  for (const auto& [name, value] : *inode.xattrs) {
    if (!is_acl_name(name)) {
      if (name.substr(0, kSystemPrefix.size()) == kSystemPrefix) problem(who + ": unknown attribute " + name);
      continue;
    }
    if (inode.kind == FileType::Symlink) problem(who + ": a symbolic link with " + name);
    if (name == acl::kDefaultName && !inode.is_dir()) problem(who + ": a default ACL on a non-directory");
    auto parsed = acl::parse(value);
    if (!parsed.has_value()) {
      problem(who + ": " + name + " is not a valid ACL (" + parsed.error().message + ")");
    } else if (name == acl::kAccessName && acl::mode_bits(*parsed) != (inode.core.mode & 0777u)) {
      problem(who + ": access ACL and permission bits disagree");
    }
  }
}

}  // namespace poise
