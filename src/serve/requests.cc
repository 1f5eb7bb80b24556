// What the server answers to one request (src/serve/server.h: answer): each
// operation of docs/protocol.md against the filesystem, after the permission
// checks of serve/access.h; the server's
// copy of a client mapping (ServerMirror), which tells the client of every
// page it changes. server.cc holds the connections, the follow channel and
// the event stream.
#include <fcntl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "fs/posix_acl.h"
#include "mapping/page_runs.h"
#include "serve/access.h"
#include "serve/protocol.h"
#include "serve/server.h"

namespace poise::serve {

namespace {

constexpr size_t kReplyBudgetBytes = 900 * 1024;  // lists are cut into pages below this
constexpr uint32_t kFsmapRecordsPerReply = 16384;
constexpr size_t kLeasesPerClientMax = 4096;
constexpr uint32_t kXattrBytesMax = 64 * 1024;  // a value the filesystem refuses (E2BIG) still decodes

// A list too long for one message keeps its first lines and says so.
std::vector<std::string> cut(std::vector<std::string> list, size_t budget) {
  size_t bytes = 0, keep = 0;
  while (keep < list.size() && bytes + list[keep].size() + 4 < budget) bytes += list[keep++].size() + 4;
  if (keep < list.size()) {
    size_t more = list.size() - keep;
    list.resize(keep);
    list.push_back("... and " + std::to_string(more) + " more (run the command on the unserved image)");
  }
  return list;
}

}  // namespace

namespace {

// The server's copy of a client's mapping tells the client of every page it
// changes (a recall when a page goes away or loses write access), and passes
// on the owner's notices.
class ServerMirror final : public MappingMirror {
 public:
  ServerMirror(Server& server, std::weak_ptr<Server::Client> client, uint64_t client_mapping, InodeNumber ino,
               uint64_t first_page)
      : server_(server), client_(std::move(client)), id_(client_mapping), ino_(ino), first_page_(first_page) {}

  void pages_changed(uint64_t first, uint64_t count, uint8_t state, uint64_t dev_block) override {
    const auto s = static_cast<mapping::PageState>(state);
    if (s == mapping::PageState::Absent || s == mapping::PageState::Lost || s == mapping::PageState::Poisoned) {
      if (auto client = client_.lock()) {
        server_.publish({{"event", "lease_recalled"},
                         {"pid", client->peer.pid},
                         {"inode", ino_.value()},
                         {"file_offset", (first_page_ + first) * 4096},
                         {"length", count * 4096},
                         {"pages_now", mapping::to_string(s)}});
      }
    }
    Encoder e(Op::PagesChanged, 0);
    e.u64(id_);
    e.u64(first);
    e.u64(count);
    e.u8(state);
    e.u64(dev_block);
    // Failed memory is never reused: its recall need not hold the failure flow
    // up client by client; the flow's end waits for every acknowledgement at
    // once (Server::settle_all). Every other change waits for its own.
    send(e, !(s == mapping::PageState::Lost || s == mapping::PageState::Poisoned));
  }
  void died(MappingCause cause) override {
    Encoder e(Op::MappingDied, 0);
    e.u64(id_);
    e.u8(static_cast<uint8_t>(cause));
    send(e, true);
  }
  void notice(const MappingEvent& event) {
    Encoder e(Op::Notice, 0);
    e.u64(id_);
    e.u64(event.file_offset);
    e.u64(event.length);
    e.u8(static_cast<uint8_t>(event.cause));
    e.u8(event.consumed ? 1 : 0);
    send(e, false);
  }

 private:
  void send(Encoder& e, bool wait) {
    if (auto client = client_.lock()) server_.push(*client, e.finish(), wait);
  }
  Server& server_;
  std::weak_ptr<Server::Client> client_;
  uint64_t id_;
  InodeNumber ino_;
  uint64_t first_page_;
};

// What one request comes to: its results (into `out`), or an error.
class Handler {
 public:
  Handler(Filesystem& fs, Device& device, Server::Client& client, Server* server)
      : fs_(fs), device_(device), c_(client), server_(server), access_(fs, client) {}

  // A descriptor the reply passes along (DeviceFd), or -1.
  int reply_fd() const { return reply_fd_; }
  // The client as shared by the server (for its mirrors), when it has one.
  void set_client_ptr(std::weak_ptr<Server::Client> p) { client_ptr_ = std::move(p); }

  // False: the message was malformed (the client is dropped).
  bool handle(Op op, Decoder& in, Encoder& out, Result<void>* status);

 private:
  Result<void> run(Op op, Decoder& in, Encoder& out);

  Filesystem& fs_;
  Device& device_;
  Server::Client& c_;
  // Direct mappings: the device descriptor they need reaches every byte of the
  // device, so only a client that could open the image itself gets one; and
  // only one the server can kill, should it not give memory back in time.
  Result<void> may_map() const {
    TRY(access_.privileged("a direct mapping"));
    if (c_.pidfd < 0 || ::syscall(SYS_pidfd_send_signal, c_.pidfd, 0, nullptr, 0) != 0) {
      return fail(EPERM, "the server cannot signal this process (to kill it should it hold memory too long): "
                         "no direct mappings for it");
    }
    return {};
  }

  // After `poise offline --remove` the filesystem is gone with its memory:
  // what would describe it (info, check) fails as every access does.
  Result<void> device_present() const {
    if (device_.state() != DeviceState::Dead) return {};
    return fail(EIO, device_.describe() + ": the device was removed (poise offline --remove); mount the image "
                                          "again where its memory now lives");
  }

  // A change of a file's bytes drops what lets it run with more privilege, as
  // the kernel's file_remove_privs does: the set-user-ID bit (and set-group-ID
  // with group execute) unless the caller is privileged, and a file capability
  // whoever the caller is.
  // Under a FUSE mount with -o writeback the kernel keeps its own size of every
  // file it knows: such a file's data and size change only through the mount.
  Result<void> not_in_writeback_cache(InodeNumber ino) {
    if (server_ == nullptr || !server_->kernel_owns_size(ino.value())) return {};
    return fail(EBUSY, "inode " + std::to_string(ino.value()) +
                           " is in use through a mount with -o writeback, whose kernel keeps its own size of it: "
                           "change it through the mount");
  }

  Result<void> drop_privileges(InodeNumber ino, const Stat& st) {
    if (st.type != FileType::Regular) return {};  // the operation itself refuses the rest
    uint32_t mode = st.mode;
    if (!c_.privileged) {
      mode &= ~static_cast<uint32_t>(S_ISUID);
      // Set-group-ID goes with group execute, or (Linux 6.2 on) from a writer outside the group.
      if ((mode & S_IXGRP) != 0 || !access_.in_group(st.gid)) mode &= ~static_cast<uint32_t>(S_ISGID);
    }
    if (mode != st.mode) {
      SetAttributes change;
      change.mode = mode;
      TRY(fs_.set_attributes(ino, change));
    }
    if (fs_.get_xattr(ino, kCapabilityName).has_value()) {
      auto removed = fs_.remove_xattr(ino, kCapabilityName);
      if (!removed.has_value() && removed.error().code != ENODATA) return removed;
    }
    return {};
  }
  static constexpr std::string_view kCapabilityName = "security.capability";

  bool has_follow_channel() {
    std::lock_guard lock(c_.follow_mutex);
    return c_.follow_fd >= 0 && !c_.gone;
  }

  Server* server_;
  Access access_;
  bool malformed_ = false;
  int reply_fd_ = -1;
  std::weak_ptr<Server::Client> client_ptr_;
};

bool Handler::handle(Op op, Decoder& in, Encoder& out, Result<void>* status) {
  *status = run(op, in, out);
  return !malformed_ && in.done();
}

Result<void> Handler::run(Op op, Decoder& in, Encoder& out) {
  auto bad = [&]() -> Result<void> {
    malformed_ = true;
    return fail(EPROTO, "malformed message");
  };
  std::string path, other;
  uint64_t a = 0, b = 0, c = 0, d = 0, e = 0;
  uint32_t mode = 0;
  switch (op) {
    case Op::Hello: {
      uint32_t version = 0;
      if (!in.u32(&version)) return bad();
      if (version != kProtocolVersion) {
        return fail(EPROTONOSUPPORT, "protocol version " + std::to_string(version) + " is not served (the server speaks " +
                                         std::to_string(kProtocolVersion) + ")");
      }
      out.u32(kProtocolVersion);
      out.u32(static_cast<uint32_t>(::getpid()));
      out.u64(c_.token);
      return {};
    }
    case Op::Lookup: {
      if (!in.string(&path)) return bad();
      TRY(access_.may_walk(path));
      const uint64_t ino = TRY(fs_.lookup(path)).value();
      c_.reached.insert(ino);
      out.u64(ino);
      return {};
    }
    case Op::Create:
    case Op::Mkdir: {
      if (!in.string(&path) || !in.u32(&mode)) return bad();
      TRY(access_.may_change_name(path, false));
      Credentials owner{c_.peer.uid, c_.peer.gid};
      // The mode is that of `mkdir -m` / `install -m` (a chmod by the new
      // owner), so set-group-ID only for a caller in the group the inode gets
      // (the kernel's mode_strip_sgid); a directory in a set-group-ID parent
      // gets the bit from the parent anyway.
      mode &= 07777u;
      if ((mode & S_ISGID) != 0 && !access_.in_group_of_new_file(path)) mode &= ~static_cast<uint32_t>(S_ISGID);
      auto ino = op == Op::Create ? fs_.create(path, mode, owner) : fs_.mkdir(path, mode, owner);
      const uint64_t made = TRY(std::move(ino)).value();
      c_.reached.insert(made);
      out.u64(made);
      return {};
    }
    case Op::OpenTmpfile: {
      if (!in.string(&path) || !in.u32(&mode)) return bad();
      // Write and search permission on the directory, as for a name made in it.
      const Stat dir = TRY(access_.may_use(path, 3));
      if (dir.type != FileType::Directory) return fail(ENOTDIR, std::string(path) + ": not a directory");
      mode &= 07777u;
      if ((mode & S_ISGID) != 0 && !access_.in_group_of_new_file(std::string(path) + "/f")) {
        mode &= ~static_cast<uint32_t>(S_ISGID);
      }
      File file = TRY(fs_.open_tmpfile(path, mode, Credentials{c_.peer.uid, c_.peer.gid}));
      const uint64_t made = file.ino().value();
      TRY(fs_.retain(file.ino()));  // the client's, until its Release (or its end); `file` closes here
      ++c_.retained[made];
      c_.tmpfiles.insert(made);
      c_.reached.insert(made);
      out.u64(made);
      return {};
    }
    case Op::LinkTmpfile: {
      uint8_t replace = 0;
      if (!in.u64(&a) || !in.string(&path) || !in.u8(&replace) || replace > 1) return bad();
      if (c_.tmpfiles.count(a) == 0 || c_.retained.count(a) == 0) {
        return fail(EBADF, "inode " + std::to_string(a) + " is no unnamed file this client has open");
      }
      TRY(access_.may_change_name(path, replace != 0));  // replacing removes a name: the sticky rule too
      TRY(fs_.retain(InodeNumber(a)));
      File file(&fs_, InodeNumber(a));  // balances the retain when it closes
      TRY(fs_.link_tmpfile(file, path, replace != 0));
      c_.tmpfiles.erase(a);  // named now: linked again only by its path, with Link's checks
      return {};
    }
    case Op::Unlink:
    case Op::Rmdir:
      if (!in.string(&path)) return bad();
      TRY(access_.may_change_name(path, true));
      return op == Op::Unlink ? fs_.unlink(path) : fs_.rmdir(path);
    case Op::UnlinkAt:
    case Op::RmdirAt:
      // By directory inode: a name below any path a message could carry (a
      // tree moved under a deep directory) can still be removed.
      if (!in.u64(&a) || !in.string(&path)) return bad();
      TRY(access_.may_remove_at(InodeNumber(a), path));
      return op == Op::UnlinkAt ? fs_.unlink_at(InodeNumber(a), path) : fs_.rmdir_at(InodeNumber(a), path);
    case Op::Rename:
      if (!in.string(&path) || !in.string(&other)) return bad();
      TRY(access_.may_change_name(path, true));
      TRY(access_.may_change_name(other, true));
      TRY(access_.may_move_directory(path, other));
      return fs_.rename(path, other);
    case Op::Symlink: {
      if (!in.string(&other) || !in.string(&path)) return bad();
      TRY(access_.may_change_name(path, false));
      const uint64_t made = TRY(fs_.symlink(other, path, Credentials{c_.peer.uid, c_.peer.gid})).value();
      c_.reached.insert(made);
      out.u64(made);
      return {};
    }
    case Op::Mknod: {
      uint8_t type = 0;
      if (!in.string(&path) || !in.u8(&type) || !in.u32(&mode) || !in.u64(&a)) return bad();
      if (!is_special(static_cast<FileType>(type)) || type > static_cast<uint8_t>(FileType::Socket)) {
        return fail(EINVAL, "mknod makes a FIFO, a device node or a socket");
      }
      const FileType kind = static_cast<FileType>(type);
      // The kernel's rule: a device node needs CAP_MKNOD, here root.
      if ((kind == FileType::CharDevice || kind == FileType::BlockDevice) && c_.peer.uid != 0) {
        return fail(EPERM, "only root may make a device node");
      }
      TRY(access_.may_change_name(path, false));
      mode &= 07777u;
      if ((mode & S_ISGID) != 0 && !access_.in_group_of_new_file(path)) mode &= ~static_cast<uint32_t>(S_ISGID);
      const uint64_t made = TRY(fs_.mknod(path, kind, mode, a, Credentials{c_.peer.uid, c_.peer.gid})).value();
      c_.reached.insert(made);
      out.u64(made);
      return {};
    }
    case Op::Readlink:
      if (!in.u64(&a)) return bad();
      TRY(access_.may_name(InodeNumber(a)));  // a link's own bits are never checked
      out.string(TRY(fs_.readlink(InodeNumber(a))));
      return {};
    case Op::SetXattr: {
      uint8_t how = 0;
      if (!in.u64(&a) || !in.string(&path) || !in.string(&other, kXattrBytesMax) || !in.u8(&how) ||
          how > static_cast<uint8_t>(XattrMode::Replace)) {
        return bad();
      }
      TRY(access_.may_xattr(InodeNumber(a), path, true));
      TRY(fs_.set_xattr(InodeNumber(a), path, other, static_cast<XattrMode>(how)));
      // An access ACL set by one outside the file's group drops set-group-ID
      // (as the kernel's posix_acl_update_mode).
      if (path == acl::kAccessName && !c_.privileged) {
        Stat st = TRY(fs_.stat(InodeNumber(a)));
        if ((st.mode & S_ISGID) != 0 && !access_.in_group(st.gid)) {
          SetAttributes change;
          change.mode = st.mode & ~static_cast<uint32_t>(S_ISGID);
          TRY(fs_.set_attributes(InodeNumber(a), change));
        }
      }
      return {};
    }
    case Op::GetXattr:
      if (!in.u64(&a) || !in.string(&path)) return bad();
      TRY(access_.may_xattr(InodeNumber(a), path, false));
      out.string(TRY(fs_.get_xattr(InodeNumber(a), path)));
      return {};
    case Op::ListXattrs: {
      if (!in.u64(&a)) return bad();
      TRY(access_.may_name(InodeNumber(a)));
      auto names = TRY(fs_.list_xattrs(InodeNumber(a)));
      std::erase_if(names, [&](const std::string& n) { return !access_.sees_xattr(n); });
      out.strings(names);
      return {};
    }
    case Op::RemoveXattr:
      if (!in.u64(&a) || !in.string(&path)) return bad();
      TRY(access_.may_xattr(InodeNumber(a), path, true));
      return fs_.remove_xattr(InodeNumber(a), path);
    case Op::Link: {
      if (!in.string(&path) || !in.string(&other)) return bad();
      auto target = TRY(access_.may_use(path, 0));
      // As the kernel with fs.protected_hardlinks: a link only to a file the
      // caller owns or may read and write.
      if (!c_.privileged && target.uid != c_.peer.uid && !access_.permits(target, 6)) {
        return fail(EPERM, std::string(path) + ": a hard link needs the file's owner, or read and write permission");
      }
      const bool privileged_file = (target.mode & S_ISUID) != 0 || (target.mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP);
      if (!c_.privileged && target.uid != c_.peer.uid && privileged_file) {
        return fail(EPERM, std::string(path) + ": a hard link to another's set-user-ID or set-group-ID file");
      }
      TRY(access_.may_change_name(other, false));
      return fs_.link(path, other);
    }
    case Op::Readdir:
    case Op::ReaddirAt: {
      std::vector<DirEntry> entries;
      bool searchable = false;
      if (op == Op::Readdir) {
        if (!in.string(&path) || !in.u64(&a)) return bad();
        TRY(access_.may_use(path, 4));
        entries = TRY(fs_.readdir(path));
        // One who may also search the directory reaches each entry by its path
        // (stat of DIR/NAME): it may then name them by number too, as `ls -l` does.
        searchable = access_.may_use(path, 1).has_value();
      } else {
        if (!in.u64(&b) || !in.u64(&a)) return bad();
        const Stat dir = TRY(access_.may_use(InodeNumber(b), 4));
        if (dir.type != FileType::Directory) return fail(ENOTDIR, "inode " + std::to_string(b) + " is not a directory");
        TRY(access_.may_walk_to(InodeNumber(b)));
        entries = TRY(fs_.readdir_at(InodeNumber(b)));
        searchable = access_.permits(dir, 1);
      }
      uint32_t n = 0;
      size_t bytes = 0;
      Encoder page(Op::Readdir, 0);
      uint64_t i = a;
      for (; i < entries.size() && bytes < kReplyBudgetBytes; ++i, ++n) {
        page.string(entries[i].name);
        page.u64(entries[i].ino.value());
        page.u8(static_cast<uint8_t>(entries[i].type));
        if (searchable && entries[i].name != "." && entries[i].name != "..") c_.reached.insert(entries[i].ino.value());
        bytes += entries[i].name.size() + 13;
      }
      out.u32(n);
      out.raw(page.body());
      out.u8(i < entries.size() ? 1 : 0);
      return {};
    }
    case Op::StatPath: {
      if (!in.string(&path)) return bad();
      TRY(access_.may_walk(path));
      Stat st = TRY(fs_.stat(path));
      c_.reached.insert(st.ino.value());
      out.stat(st);
      return {};
    }
    case Op::StatIno:
      if (!in.u64(&a)) return bad();
      TRY(access_.may_name(InodeNumber(a)));
      out.stat(TRY(fs_.stat(InodeNumber(a))));
      return {};
    case Op::PathOf:
      if (!in.u64(&a)) return bad();
      // A path names every directory above the file: root and the server's user only.
      TRY(access_.privileged("path-of"));
      out.string(TRY(fs_.path_of(InodeNumber(a))));
      return {};
    case Op::Read: {
      if (!in.u64(&a) || !in.u64(&b) || !in.u64(&c)) return bad();
      if (c > kDataBytesMax) return fail(EINVAL, "a read of more than 1 MiB in one message");
      TRY(access_.may_use(InodeNumber(a), 4));
      std::vector<std::byte> buf(c);
      size_t n = TRY(fs_.read(InodeNumber(a), b, buf));
      out.bytes({buf.data(), n});
      return {};
    }
    case Op::Write: {
      std::span<const std::byte> data;
      if (!in.u64(&a) || !in.u64(&b) || !in.bytes(&data, kDataBytesMax)) return bad();
      TRY(not_in_writeback_cache(InodeNumber(a)));
      TRY(drop_privileges(InodeNumber(a), TRY(access_.may_use(InodeNumber(a), 2))));
      out.u64(TRY(fs_.write(InodeNumber(a), b, data)));
      return {};
    }
    case Op::Truncate:
      if (!in.u64(&a) || !in.u64(&b)) return bad();
      TRY(not_in_writeback_cache(InodeNumber(a)));
      TRY(drop_privileges(InodeNumber(a), TRY(access_.may_use(InodeNumber(a), 2))));
      return fs_.truncate(InodeNumber(a), b);
    case Op::Fallocate: {
      uint8_t keep = 0;
      if (!in.u64(&a) || !in.u64(&b) || !in.u64(&c) || !in.u8(&keep) || keep > 1) return bad();
      TRY(not_in_writeback_cache(InodeNumber(a)));
      TRY(drop_privileges(InodeNumber(a), TRY(access_.may_use(InodeNumber(a), 2))));
      return fs_.fallocate(InodeNumber(a), b, c, keep ? FallocateMode::KeepSize : FallocateMode::ExtendSize);
    }
    case Op::PunchHole:
      if (!in.u64(&a) || !in.u64(&b) || !in.u64(&c)) return bad();
      TRY(not_in_writeback_cache(InodeNumber(a)));
      TRY(drop_privileges(InodeNumber(a), TRY(access_.may_use(InodeNumber(a), 2))));
      return fs_.punch_hole(InodeNumber(a), b, c);
    case Op::Fsync:
      if (!in.u64(&a)) return bad();
      TRY(access_.may_name(InodeNumber(a)));
      return fs_.fsync(InodeNumber(a));
    case Op::Sync:
      return fs_.sync();
    case Op::Reflink:
      if (!in.u64(&a) || !in.u64(&b)) return bad();
      TRY(access_.may_use(InodeNumber(a), 4));
      TRY(not_in_writeback_cache(InodeNumber(b)));
      TRY(drop_privileges(InodeNumber(b), TRY(access_.may_use(InodeNumber(b), 2))));  // as FICLONE
      return fs_.reflink(InodeNumber(a), InodeNumber(b));
    case Op::CloneRange:
      if (!in.u64(&a) || !in.u64(&b) || !in.u64(&c) || !in.u64(&d) || !in.u64(&e)) return bad();
      TRY(access_.may_use(InodeNumber(a), 4));
      TRY(not_in_writeback_cache(InodeNumber(c)));
      TRY(drop_privileges(InodeNumber(c), TRY(access_.may_use(InodeNumber(c), 2))));
      return fs_.clone_range(InodeNumber(a), b, InodeNumber(c), d, e);
    case Op::Fsmap: {
      if (!in.u64(&a) || !in.u64(&b)) return bad();
      TRY(access_.privileged("fsmap"));
      auto records = TRY(fs_.fsmap(a, b));
      // A page ends where a new device offset begins, so the next one starts there.
      size_t n = records.size();
      uint64_t next = 0;
      if (n > kFsmapRecordsPerReply) {
        n = kFsmapRecordsPerReply;
        while (n > 0 && records[n].device_offset_bytes == records[n - 1].device_offset_bytes) --n;
        if (n == 0) n = records.size();  // (never: one offset has few owners)
        if (n < records.size()) next = records[n].device_offset_bytes;
      }
      out.u32(static_cast<uint32_t>(n));
      for (size_t i = 0; i < n; ++i) out.fsmap_record(records[i]);
      out.u64(next);
      return {};
    }
    case Op::Info: {
      TRY(device_present());
      FsInfo info = fs_.info();
      out.u64(info.size_bytes);
      out.u32(info.block_size);
      out.u64(info.used_bytes);
      out.u64(info.free_bytes);
      out.u64(info.files);
      out.u64(info.journal_bytes);
      out.u64(info.checkpoint_generation);
      out.u64(info.previous_generation);
      out.u64(info.previous_bytes);
      return {};
    }
    case Op::Check: {
      TRY(access_.privileged("check"));
      TRY(device_present());
      CheckReport r = fs_.check();
      out.strings(cut(r.problems, kReplyBudgetBytes / 2));
      out.strings(cut(r.notes, kReplyBudgetBytes / 4));
      for (uint64_t v : {r.inodes, r.directories, r.extents, r.used_blocks, r.shared_blocks, r.bad_blocks, r.free_blocks}) {
        out.u64(v);
      }
      return {};
    }
    case Op::MountWarnings:
      out.strings(cut(fs_.mount_warnings(), kReplyBudgetBytes));
      return {};
    case Op::Checkpoint: {  // u8 mode (protocol 5; absent before: Auto)
      uint8_t mode = 0;
      if (!in.done() && (!in.u8(&mode) || mode > static_cast<uint8_t>(CheckpointMode::Full))) return bad();
      return fs_.checkpoint(static_cast<CheckpointMode>(mode));
    }
    case Op::Retain: {
      if (!in.u64(&a)) return bad();
      TRY(access_.may_name(InodeNumber(a)));
      auto st = TRY(fs_.stat(InodeNumber(a)));
      if (!access_.permits(st, 4) && !access_.permits(st, 2)) {
        return fail(EACCES, "inode " + std::to_string(a) + ": permission denied");
      }
      TRY(fs_.retain(InodeNumber(a)));
      ++c_.retained[a];
      return {};
    }
    case Op::Release: {
      if (!in.u64(&a)) return bad();
      auto it = c_.retained.find(a);
      if (it == c_.retained.end()) return fail(EINVAL, "inode " + std::to_string(a) + " is not open by this client");
      if (--it->second == 0) {
        c_.retained.erase(it);
        c_.tmpfiles.erase(a);
      }
      fs_.release(InodeNumber(a));
      return {};
    }
    case Op::BadRanges: {
      TRY(access_.privileged("badblocks"));
      auto ranges = TRY(device_.bad_ranges());
      out.string(device_.describe());
      out.u32(static_cast<uint32_t>(std::min<size_t>(ranges.size(), kReplyBudgetBytes / 16)));
      for (size_t i = 0; i < ranges.size() && i < kReplyBudgetBytes / 16; ++i) {
        out.u64(ranges[i].offset_bytes);
        out.u64(ranges[i].length_bytes);
      }
      return {};
    }
    case Op::DeviceFd: {
      uint8_t writable = 0;
      if (!in.u8(&writable) || writable > 1) return bad();
      TRY(may_map());
      // The descriptor grants the device, so it comes with no more access than
      // the client's mappings need: read-write only to one that may write.
      int fd = ::open(("/proc/self/fd/" + std::to_string(device_.map_fd())).c_str(),
                      (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
      if (device_.map_fd() < 0 || fd < 0) {
        return fail(ENOTSUP, device_.describe() + ": its memory cannot be mapped by other processes");
      }
      reply_fd_ = fd;
      out.u8(writable);
      return {};
    }
    case Op::Map: {
      uint8_t writable = 0;
      if (!in.u64(&a) || !in.u64(&b) || !in.u64(&c) || !in.u8(&writable) || writable > 1 || !in.u64(&d)) return bad();
      TRY(may_map());
      if (writable) TRY(not_in_writeback_cache(InodeNumber(a)));
      if (server_ == nullptr || !has_follow_channel()) {
        return fail(EPROTO, "a mapping needs the follow channel (connect it with Follow first)");
      }
      {
        std::lock_guard lock(c_.leases_mutex);
        if (c_.leases.size() + c_.pins.size() >= kLeasesPerClientMax) {
          return fail(EMFILE, "this client holds " + std::to_string(kLeasesPerClientMax) +
                                  " mappings and pins, the most a client may");
        }
      }
      TRY(access_.may_use(InodeNumber(a), writable ? 6 : 4));
      auto mirror = std::make_shared<ServerMirror>(*server_, client_ptr_, d, InodeNumber(a), b / 4096);
      auto owner = std::make_shared<MapOwner>(MapOwner{
          fmt::format("pid {}", c_.peer.pid),
          [mirror](const MappingEvent& e) { mirror->notice(e); }, mirror});
      Mapping m = TRY(fs_.map(InodeNumber(a), b, c, writable ? MapAccess::ReadWrite : MapAccess::Read, owner));
      const uint64_t lease = m.id();
      {
        std::lock_guard lock(c_.leases_mutex);
        c_.leases.emplace(lease, std::move(m));
      }
      out.u64(lease);
      return {};
    }
    case Op::Pin: {
      if (!in.u64(&a) || !in.u64(&b) || !in.u64(&c)) return bad();
      TRY(may_map());
      if (c > kPinBytesMax) {
        return fail(EFBIG, "a pin through a server covers at most " + std::to_string(kPinBytesMax >> 30) +
                               " GiB: pin less at a time");
      }
      {
        std::lock_guard lock(c_.leases_mutex);
        if (c_.leases.size() + c_.pins.size() >= kLeasesPerClientMax) {
          return fail(EMFILE, "this client holds " + std::to_string(kLeasesPerClientMax) +
                                  " mappings and pins, the most a client may");
        }
      }
      TRY(access_.may_use(InodeNumber(a), 4));
      // The server's own pin, held for the client (and counted as this
      // connection's: a write by the same client to the range is refused, as
      // an in-process thread's is). The client reads the same device memory
      // through its descriptor, so the answer says where each piece lies.
      // All of a client's pins are copied when the server lets them go while it
      // runs (pins-released), within the recall timeout: at most 1 GiB at once.
      {
        std::lock_guard lock(c_.leases_mutex);
        if (c > kPinBytesMax - std::min(kPinBytesMax, c_.pinned_bytes)) {
          return fail(EAGAIN, "this client has " + std::to_string(c_.pinned_bytes) + " bytes pinned; a client may pin " +
                                  std::to_string(kPinBytesMax >> 30) + " GiB at once: release some first");
        }
      }
      Pin pin = TRY(fs_.pin(InodeNumber(a), b, c));
      const std::byte* base = device_.data();
      const uint64_t size = device_.size_bytes();
      std::vector<std::pair<uint64_t, uint64_t>> pieces;  // length, device offset or kPinZeros
      for (std::span<const std::byte> s : pin.segments()) {
        const bool on_device = base != nullptr && s.data() >= base && s.data() < base + size;
        const uint64_t where = on_device ? static_cast<uint64_t>(s.data() - base) : kPinZeros;
        if (!pieces.empty() && where == kPinZeros && pieces.back().second == kPinZeros) {
          pieces.back().first += s.size();
        } else {
          pieces.emplace_back(s.size(), where);
        }
      }
      if (pieces.size() > kPinPiecesMax) {
        return fail(E2BIG, "the range lies in " + std::to_string(pieces.size()) + " pieces of device memory, more than " +
                               std::to_string(kPinPiecesMax) + " a pin through a server may have: pin less at a time");
      }
      uint64_t id = 0;
      {
        std::lock_guard lock(c_.leases_mutex);
        id = c_.next_pin++;
        c_.pinned_bytes += c;
        c_.pins.emplace(id, Server::Client::PinnedRange{std::move(pin), c});
      }
      out.u64(id);
      out.u64(size);
      out.u32(static_cast<uint32_t>(pieces.size()));
      for (const auto& [length, where] : pieces) {
        out.u64(length);
        out.u64(where);
      }
      return {};
    }
    case Op::Unpin: {
      if (!in.u64(&a)) return bad();
      // On a release channel, the pins are its owner's (still connected).
      std::shared_ptr<Server::Client> owner = c_.releases_for.lock();
      Server::Client& holder = owner != nullptr ? *owner : c_;
      Pin dropped;
      {
        std::lock_guard lock(holder.leases_mutex);
        auto it = holder.pins.find(a);
        if (it == holder.pins.end()) return fail(EINVAL, "no pin " + std::to_string(a));
        dropped = std::move(it->second.pin);
        holder.pinned_bytes -= it->second.bytes;
        holder.pins.erase(it);
      }
      return {};  // `dropped` releases the server's pin
    }
    case Op::Unmap: {
      if (!in.u64(&a)) return bad();
      Mapping dropped;
      {
        std::lock_guard lock(c_.leases_mutex);
        auto it = c_.leases.find(a);
        if (it == c_.leases.end()) return fail(EINVAL, "no lease " + std::to_string(a));
        dropped = std::move(it->second);
        c_.leases.erase(it);
      }
      return {};  // `dropped` unmaps the server's copy
    }
    case Op::Fault: {
      uint8_t is_write = 0;
      if (!in.u64(&a) || !in.u64(&b) || !in.u8(&is_write) || is_write > 1) return bad();
      std::byte* page = nullptr;
      {
        std::lock_guard lock(c_.leases_mutex);
        auto it = c_.leases.find(a);
        if (it == c_.leases.end()) return fail(EINVAL, "no lease " + std::to_string(a));
        if (b >= it->second.size() / 4096) return fail(EFAULT, "page " + std::to_string(b) + " is outside lease " + std::to_string(a));
        // A store fault in a read-only lease would be a stray store in the
        // server's copy (a SIGSEGV here): the client's error, refused.
        if (is_write && it->second.access() != MapAccess::ReadWrite) {
          return fail(EACCES, "a store to read-only lease " + std::to_string(a));
        }
        page = it->second.data() + b * 4096;
      }
      // The server's copy takes the same fault, through the same code as an
      // in-process mapping; every page it changes reaches the client (pushed and
      // acknowledged) before this returns. A store fault is a locked add of
      // zero: it changes no byte, whatever the client stores meanwhile.
      return guarded([&] {
        if (is_write) {
          __atomic_fetch_add(reinterpret_cast<uint8_t*>(page), 0, __ATOMIC_RELAXED);
        } else {
          (void)*reinterpret_cast<volatile const uint8_t*>(page);
        }
      });
    }
    case Op::Subscribe:
    case Op::Event:
    case Op::Follow:
    case Op::ReleasePins:
    case Op::PinsReleased:
    case Op::PagesChanged:
    case Op::MappingDied:
    case Op::Notice:
      return bad();  // Follow is taken before dispatch; the rest only go the other way
    case Op::Offline: {
      uint8_t step = 0;
      if (!in.u8(&step) || step > 2) return bad();
      TRY(access_.privileged("offline"));
      auto say = [&](const std::string& line) {
        if (server_ != nullptr) server_->log(line);
        out.string(line);
      };
      switch (static_cast<OfflineStep>(step)) {
        case OfflineStep::PreRemove:
          TRY(device_.pre_remove());
          say("pre-removed: writers wait, everything is synced, every mapping in every process is revoked and its "
              "owner told; next: poise offline --cancel (thaw) or --remove");
          return {};
        case OfflineStep::Cancel:
          if (device_.state() != DeviceState::Alive) return fail(ENXIO, device_.describe() + ": already removed");
          if (!fs_.frozen()) {
            return fail(EINVAL, "no removal is under way: nothing to cancel (poise offline IMAGE pre-removes)");
          }
          device_.cancel_removal();
          say("removal cancelled: writers and mappings resume");
          return {};
        case OfflineStep::Remove:
          if (device_.state() != DeviceState::Alive) return fail(ENXIO, device_.describe() + ": already removed");
          TRY(device_.pre_remove());  // frozen and synced first (again, if it was: nothing new to sync)
          // The removal waits for every pin: clients' pins become their own
          // private copies first, so that none holds it up.
          if (server_ != nullptr) server_->release_all_pins();
          TRY(device_.remove());
          say("removed: waiting writers got an error, every later access in every process fails; the image "
              "mounts again where the memory now lives");
          return {};
      }
      return bad();
    }
    case Op::ReportFailure: {
      // A machine check in this client's mapping: the kernel told the client,
      // not this process. Root and the server's own user are believed; anyone
      // else's report is confirmed by reading the memory here (real failed
      // memory fails this read too, and the safe copy turns it into EIO), so
      // that no client can make blocks it may only read unreadable for all.
      if (!in.u64(&a) || !in.u64(&b)) return bad();
      constexpr uint64_t kReportBytesMax = 1ull << 30;
      if (b == 0 || b > kReportBytesMax || a >= device_.size_bytes() || b > device_.size_bytes() - a) {
        return fail(EINVAL, "a failure report must name 1 byte to 1 GiB inside the device");
      }
      BadRange failed{a, b};
      bool confirmed = c_.privileged;
      if (!confirmed) {
        std::vector<std::byte> buf(std::min<uint64_t>(b, 1 << 20));
        for (uint64_t at = a; at < a + b && !confirmed; at += buf.size()) {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), a + b - at));
          auto read = device_.read(at, buf.data(), n);
          if (read.has_value()) continue;
          if (read.error().code != EIO) return Unexpected<Error>(std::move(read).error());  // removed, say
          confirmed = true;
          if (auto where = Device::take_failed_read()) {
            failed = *where;
          } else if (auto listed = device_.first_poisoned(at, n)) {
            failed = *listed;
          }
        }
      }
      if (server_ != nullptr) {
        server_->log(fmt::format("pid {} reported a machine check in its mapping at device bytes {}..{}: {}",
                                 c_.peer.pid, a, a + b, confirmed ? "recorded" : "not confirmed, ignored"));
      }
      if (confirmed) TRY(device_.notify_failure(failed.offset_bytes, failed.length_bytes, FailureFlags::None));
      out.u8(confirmed ? 1 : 0);
      return {};
    }
    case Op::InjectPoison:
    case Op::ClearPoison:
      if (!in.u64(&a) || !in.u64(&b)) return bad();
      TRY(access_.privileged(op_name(op)));
      if (op == Op::ClearPoison) return device_.clear_poison(a, b);
      TRY(device_.inject_poison(a, b));
      // The running filesystem hears of it at once, as from the kernel's
      // memory-failure path: owners are told and their pages revoked.
      if (server_ != nullptr) server_->log(fmt::format("pid {} poisoned device bytes {}..{}", c_.peer.pid, a, a + b));
      return device_.notify_failure(a, b, FailureFlags::None);
  }
  return bad();
}

}  // namespace

std::optional<Reply> answer_as(Filesystem& fs, Device& device, Server::Client& client,
                               std::weak_ptr<Server::Client> shared, Server* server, const Header& header,
                               std::span<const std::byte> body) {
  Handler handler(fs, device, client, server);
  handler.set_client_ptr(std::move(shared));
  Decoder in(body);
  Encoder results(header.op, header.id);
  Result<void> status;
  bool well_formed = handler.handle(header.op, in, results, &status);
  Reply reply;
  reply.fd = handler.reply_fd();
  if (!well_formed) {
    if (reply.fd >= 0) ::close(reply.fd);
    return std::nullopt;
  }
  Encoder frame(header.op, header.id);
  if (status.has_value()) {
    frame.i32(0);
    frame.raw(results.body());
  } else {
    frame.i32(status.error().code);
    frame.string(status.error().message.substr(0, kPathBytesMax * 2));
  }
  reply.frame = frame.finish();
  return reply;
}

std::optional<Reply> answer(Filesystem& fs, Device& device, Server::Client& client, Server* server,
                            const Header& header, std::span<const std::byte> body) {
  return answer_as(fs, device, client, {}, server, header, body);
}

}  // namespace poise::serve
