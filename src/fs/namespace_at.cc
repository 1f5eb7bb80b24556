// The Filesystem interface's defaults for the namespace calls relative to a
// directory inode: they name the directory by path_of() and call the path
// versions. The mounted filesystem (FsImpl) overrides every one of them with a
// direct lookup under its namespace lock; a remote one uses these.
#include "poise/filesystem.h"

namespace poise {

namespace {
Result<std::string> child_path(Filesystem& fs, InodeNumber dir, std::string_view name) {
  if (name.empty() || name.find('/') != std::string_view::npos) return fail(EINVAL, "a name is one path component");
  std::string path = TRY(fs.path_of(dir));
  if (path != "/") path += '/';
  path += name;
  return path;
}
}  // namespace

Result<InodeNumber> Filesystem::lookup_at(InodeNumber dir, std::string_view name) {
  return lookup(TRY(child_path(*this, dir, name)));
}
Result<InodeNumber> Filesystem::create_at(InodeNumber dir, std::string_view name, uint32_t mode,
                                          std::optional<Credentials> owner) {
  return create(TRY(child_path(*this, dir, name)), mode, owner);
}
Result<InodeNumber> Filesystem::mkdir_at(InodeNumber dir, std::string_view name, uint32_t mode,
                                         std::optional<Credentials> owner) {
  return mkdir(TRY(child_path(*this, dir, name)), mode, owner);
}
Result<void> Filesystem::unlink_at(InodeNumber dir, std::string_view name) {
  return unlink(TRY(child_path(*this, dir, name)));
}
Result<void> Filesystem::rmdir_at(InodeNumber dir, std::string_view name) {
  return rmdir(TRY(child_path(*this, dir, name)));
}
Result<std::vector<DirEntry>> Filesystem::readdir_at(InodeNumber dir) { return readdir(TRY(path_of(dir))); }
Result<void> Filesystem::rename_at(InodeNumber from_dir, std::string_view from_name, InodeNumber to_dir,
                                   std::string_view to_name, RenameFlags flags) {
  if (flags != RenameFlags::None) return fail(ENOTSUP, "rename flags need the mounted filesystem");
  return rename(TRY(child_path(*this, from_dir, from_name)), TRY(child_path(*this, to_dir, to_name)));
}
Result<void> Filesystem::link_at(InodeNumber ino, InodeNumber dir, std::string_view name) {
  return link(TRY(path_of(ino)), TRY(child_path(*this, dir, name)));
}
Result<File> Filesystem::open_tmpfile(std::string_view, uint32_t, std::optional<Credentials>) {
  return fail(ENOTSUP, "unnamed files need the mounted filesystem or a newer server");
}
Result<InodeNumber> Filesystem::create_unnamed_at(InodeNumber, uint32_t, std::optional<Credentials>) {
  return fail(ENOTSUP, "unnamed files need the mounted filesystem");
}
Result<void> Filesystem::link_tmpfile(const File&, std::string_view, bool) {
  return fail(ENOTSUP, "unnamed files need the mounted filesystem or a newer server");
}
Result<Stat> Filesystem::set_attributes(InodeNumber, const SetAttributes&) {
  return fail(ENOTSUP, "changing attributes needs the mounted filesystem");
}
Result<InodeNumber> Filesystem::symlink(std::string_view, std::string_view, std::optional<Credentials>) {
  return fail(ENOTSUP, "symbolic links need the mounted filesystem");
}
Result<InodeNumber> Filesystem::symlink_at(InodeNumber, std::string_view, std::string_view,
                                           std::optional<Credentials>) {
  return fail(ENOTSUP, "symbolic links need the mounted filesystem");
}
Result<uint64_t> Filesystem::seek(InodeNumber, uint64_t, SeekTarget) {
  return fail(ENOTSUP, "SEEK_DATA and SEEK_HOLE need the mounted filesystem");
}
Result<void> Filesystem::restore_lost_block(InodeNumber, uint64_t, std::span<const std::byte>, std::string_view) {
  return fail(ENOTSUP, "restoring lost blocks needs the mounted filesystem");
}
Result<std::string> Filesystem::readlink(InodeNumber) {
  return fail(ENOTSUP, "symbolic links need the mounted filesystem");
}
Result<InodeNumber> Filesystem::mknod(std::string_view, FileType, uint32_t, uint64_t, std::optional<Credentials>) {
  return fail(ENOTSUP, "special files need the mounted filesystem");
}
Result<InodeNumber> Filesystem::mknod_at(InodeNumber, std::string_view, FileType, uint32_t, uint64_t,
                                         std::optional<Credentials>) {
  return fail(ENOTSUP, "special files need the mounted filesystem");
}
Result<void> Filesystem::set_xattr(InodeNumber, std::string_view, std::string_view, XattrMode) {
  return fail(ENOTSUP, "extended attributes need the mounted filesystem");
}
Result<std::string> Filesystem::get_xattr(InodeNumber, std::string_view) {
  return fail(ENOTSUP, "extended attributes need the mounted filesystem");
}
Result<std::vector<std::string>> Filesystem::list_xattrs(InodeNumber) {
  return fail(ENOTSUP, "extended attributes need the mounted filesystem");
}
Result<void> Filesystem::remove_xattr(InodeNumber, std::string_view) {
  return fail(ENOTSUP, "extended attributes need the mounted filesystem");
}

}  // namespace poise
