#include "format/records.h"

#include <cstddef>
#include <cstring>

namespace poise::format {

void encode_inode(const InodeCore& in, DiskInode& out) {
  std::memset(&out, 0, sizeof out);
  out.ino.set(in.ino);
  out.mode.set(in.mode);
  out.nlink.set(in.nlink);
  out.uid.set(in.uid);
  out.gid.set(in.gid);
  out.size_bytes.set(in.size_bytes);
  out.atime_ns.set(static_cast<uint64_t>(in.atime_ns));
  out.mtime_ns.set(static_cast<uint64_t>(in.mtime_ns));
  out.ctime_ns.set(static_cast<uint64_t>(in.ctime_ns));
  out.flags.set(0);
}

Result<InodeCore> decode_inode(const DiskInode& in) {
  InodeCore core;
  core.ino = in.ino.get();
  core.mode = in.mode.get();
  core.nlink = in.nlink.get();
  core.uid = in.uid.get();
  core.gid = in.gid.get();
  core.size_bytes = in.size_bytes.get();
  core.atime_ns = static_cast<int64_t>(in.atime_ns.get());
  core.mtime_ns = static_cast<int64_t>(in.mtime_ns.get());
  core.ctime_ns = static_cast<int64_t>(in.ctime_ns.get());
  std::string who = "inode " + std::to_string(core.ino);
  if (core.ino == 0) return fail(EUCLEAN, "inode record has inode number 0");
  uint32_t type = core.mode & kModeTypeMask;
  if (type != kModeRegular && type != kModeDirectory && type != kModeSymlink && type != kModeFifo &&
      type != kModeCharDevice && type != kModeBlockDevice && type != kModeSocket) {
    return fail(EUCLEAN, who + ": unknown file type bits in mode " + std::to_string(core.mode));
  }
  if ((core.mode & ~(kModeTypeMask | kModePermMask)) != 0) {
    return fail(EUCLEAN, who + ": mode has bits outside type and permissions");
  }
  if (in.flags.get() != 0) return fail(EUCLEAN, who + ": unknown inode flags");
  if (core.size_bytes > (1ull << 60)) return fail(EUCLEAN, who + ": size beyond 2^60 bytes");
  return core;
}

void encode_extent(const ExtentRecord& in, DiskExtent& out) {
  out.ino.set(in.ino);
  out.file_block.set(in.file_block);
  out.dev_block.set(in.dev_block);
  out.block_count.set(in.block_count);
  out.flags.set(in.flags);
}

Result<ExtentRecord> decode_extent(const DiskExtent& in) {
  ExtentRecord e{in.ino.get(), in.file_block.get(), in.dev_block.get(), in.block_count.get(),
                 in.flags.get()};
  std::string who = "extent of inode " + std::to_string(e.ino) + " at file block " +
                    std::to_string(e.file_block);
  if (e.ino == 0) return fail(EUCLEAN, "extent record has inode number 0");
  if (e.block_count == 0) return fail(EUCLEAN, who + ": zero length");
  if ((e.flags & ~kExtentFlagsKnown) != 0) return fail(EUCLEAN, who + ": unknown extent flags");
  if (e.file_block + e.block_count < e.file_block || e.file_block > (1ull << 48)) {
    return fail(EUCLEAN, who + ": file range overflows");
  }
  if (e.dev_block + e.block_count < e.dev_block) return fail(EUCLEAN, who + ": device range overflows");
  return e;
}

void encode_bad_range(const BadRangeRecord& in, DiskBadRange& out) {
  out.start_block.set(in.start_block);
  out.block_count.set(in.block_count);
}

Result<BadRangeRecord> decode_bad_range(const DiskBadRange& in) {
  BadRangeRecord r{in.start_block.get(), in.block_count.get()};
  if (r.block_count == 0 || r.start_block + r.block_count < r.start_block) {
    return fail(EUCLEAN, "bad-range record out of range");
  }
  return r;
}

void encode_refcount(const RefcountRecord& in, DiskRefcount& out) {
  out.start_block.set(in.start_block);
  out.block_count.set(in.block_count);
  out.refcount.set(in.refcount);
}

Result<RefcountRecord> decode_refcount(const DiskRefcount& in) {
  RefcountRecord r{in.start_block.get(), in.block_count.get(), in.refcount.get()};
  if (r.block_count == 0 || r.start_block + r.block_count < r.start_block) {
    return fail(EUCLEAN, "refcount record out of range");
  }
  if (r.refcount < 2) return fail(EUCLEAN, "refcount record below 2 (unshared blocks have none)");
  return r;
}

size_t dirent_bytes(size_t name_len) { return (sizeof(DiskDirent) + name_len + 7) / 8 * 8; }

void encode_dirent(const DirentRecord& in, unsigned char* out) {
  size_t total = dirent_bytes(in.name.size());
  std::memset(out, 0, total);
  DiskDirent d{};
  d.dir.set(in.dir);
  d.child.set(in.child);
  d.name_len.set(static_cast<uint16_t>(in.name.size()));
  std::memcpy(out, &d, sizeof d);
  std::memcpy(out + sizeof d, in.name.data(), in.name.size());
}

bool valid_name(const std::string& name) {
  if (name.empty() || name.size() > kNameBytesMax || name == "." || name == "..") return false;
  return name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
}

Result<DirentRecord> decode_dirent(const unsigned char* in, size_t available, size_t* consumed) {
  if (available < sizeof(DiskDirent)) return fail(EUCLEAN, "directory entry truncated");
  DiskDirent d;
  std::memcpy(&d, in, sizeof d);
  size_t len = d.name_len.get();
  if (dirent_bytes(len) > available) return fail(EUCLEAN, "directory entry runs past its block");
  if (d.kind != kNamedDirent) return fail(EUCLEAN, "named record is not a directory entry");
  for (unsigned char c : d.reserved) {
    if (c != 0) return fail(EUCLEAN, "directory entry reserved bytes are not zero");
  }
  DirentRecord r{d.dir.get(), d.child.get(), std::string(reinterpret_cast<const char*>(in) + sizeof d, len)};
  if (!valid_name(r.name)) {
    return fail(EUCLEAN, "directory " + std::to_string(r.dir) + " has an invalid entry name");
  }
  if (r.dir == 0 || r.child == 0) return fail(EUCLEAN, "directory entry names inode 0");
  *consumed = dirent_bytes(len);
  return r;
}

int named_kind(const unsigned char* in, size_t available) {
  if (available < sizeof(DiskDirent)) return -1;
  return in[offsetof(DiskDirent, kind)];
}

size_t xattr_bytes(size_t name_len, size_t value_len) { return (sizeof(DiskXattr) + name_len + value_len + 7) / 8 * 8; }

void encode_xattr(const XattrRecord& in, unsigned char* out) {
  size_t total = xattr_bytes(in.name.size(), in.value.size());
  std::memset(out, 0, total);
  DiskXattr d{};
  d.ino.set(in.ino);
  d.value_len.set(static_cast<uint32_t>(in.value.size()));
  d.name_len.set(static_cast<uint16_t>(in.name.size()));
  d.kind = kNamedXattr;
  std::memcpy(out, &d, sizeof d);
  std::memcpy(out + sizeof d, in.name.data(), in.name.size());
  if (!in.value.empty()) std::memcpy(out + sizeof d + in.name.size(), in.value.data(), in.value.size());
}

bool valid_xattr_name(std::string_view name) {
  if (name.empty() || name.size() > kXattrNameBytesMax || name.find('\0') != std::string_view::npos) return false;
  for (std::string_view prefix : {"user.", "trusted.", "security.", "system."}) {
    if (name.size() > prefix.size() && name.substr(0, prefix.size()) == prefix) return true;
  }
  return false;
}

Result<XattrRecord> decode_xattr(const unsigned char* in, size_t available, size_t* consumed) {
  if (available < sizeof(DiskXattr)) return fail(EUCLEAN, "extended attribute truncated");
  DiskXattr d;
  std::memcpy(&d, in, sizeof d);
  if (d.kind != kNamedXattr) return fail(EUCLEAN, "named record is not an extended attribute");
  size_t name_len = d.name_len.get();
  size_t value_len = d.value_len.get();
  if (value_len > kXattrValueBytesMax) return fail(EUCLEAN, "extended attribute value longer than the limit");
  if (xattr_bytes(name_len, value_len) > available) return fail(EUCLEAN, "extended attribute runs past its block");
  if (d.reserved0.get() != 0) return fail(EUCLEAN, "extended attribute reserved bytes are not zero");
  for (unsigned char c : d.reserved) {
    if (c != 0) return fail(EUCLEAN, "extended attribute reserved bytes are not zero");
  }
  const char* p = reinterpret_cast<const char*>(in) + sizeof d;
  XattrRecord r{d.ino.get(), std::string(p, name_len), std::string(p + name_len, value_len)};
  if (r.ino == 0) return fail(EUCLEAN, "extended attribute of inode 0");
  if (!valid_xattr_name(r.name)) {
    return fail(EUCLEAN, "inode " + std::to_string(r.ino) + " has an extended attribute with an invalid name");
  }
  *consumed = xattr_bytes(name_len, value_len);
  return r;
}

}  // namespace poise::format
