// The client side of docs/protocol.md: poise::connect and RemoteFilesystem.
#include "poise/client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <mutex>

#include "serve/protocol.h"

namespace poise {

namespace {

using serve::Decoder;
using serve::Encoder;
using serve::Op;

class Remote final : public RemoteFilesystem {
 public:
  explicit Remote(int fd) : fd_(fd) {}
  ~Remote() override { disconnect(); }

  Result<void> hello() {
    uint32_t version = 0, pid = 0;
    TRY(call(
        Op::Hello, [](Encoder& e) { e.u32(serve::kProtocolVersion); },
        [&](Decoder& d) { return d.u32(&version) && d.u32(&pid); }));
    pid_ = pid;
    return {};
  }

  uint32_t server_pid() const override { return pid_; }

  Result<void> unmount() override {
    disconnect();
    return {};
  }
  Result<void> checkpoint() override { return call0(Op::Checkpoint, [](Encoder&) {}); }
  void shutdown() override { disconnect(); }

  Result<InodeNumber> lookup(std::string_view path) override { return ino_call(Op::Lookup, [&](Encoder& e) { e.string(path); }); }
  Result<InodeNumber> create(std::string_view path, uint32_t mode, std::optional<Credentials>) override {
    return ino_call(Op::Create, [&](Encoder& e) {
      e.string(path);
      e.u32(mode);
    });
  }
  Result<InodeNumber> mkdir(std::string_view path, uint32_t mode, std::optional<Credentials>) override {
    return ino_call(Op::Mkdir, [&](Encoder& e) {
      e.string(path);
      e.u32(mode);
    });
  }
  Result<void> unlink(std::string_view path) override { return call0(Op::Unlink, [&](Encoder& e) { e.string(path); }); }
  Result<void> rmdir(std::string_view path) override { return call0(Op::Rmdir, [&](Encoder& e) { e.string(path); }); }
  Result<void> rename(std::string_view from, std::string_view to) override {
    return call0(Op::Rename, [&](Encoder& e) {
      e.string(from);
      e.string(to);
    });
  }
  Result<void> link(std::string_view existing, std::string_view new_path) override {
    return call0(Op::Link, [&](Encoder& e) {
      e.string(existing);
      e.string(new_path);
    });
  }

  Result<std::vector<DirEntry>> readdir(std::string_view path) override {
    std::vector<DirEntry> all;
    for (uint8_t more = 1; more != 0;) {
      const uint64_t from = all.size();
      TRY(call(
          Op::Readdir,
          [&](Encoder& e) {
            e.string(path);
            e.u64(from);
          },
          [&](Decoder& d) {
            uint32_t n = 0;
            if (!d.u32(&n)) return false;
            for (uint32_t i = 0; i < n; ++i) {
              DirEntry entry;
              uint64_t ino = 0;
              uint8_t type = 0;
              if (!d.string(&entry.name) || !d.u64(&ino) || !d.u8(&type) || type > 1) return false;
              entry.ino = InodeNumber(ino);
              entry.type = type ? FileType::Directory : FileType::Regular;
              all.push_back(std::move(entry));
            }
            // A page that brings nothing new would never end.
            return d.u8(&more) && (n > 0 || more == 0);
          }));
    }
    return all;
  }

  Result<Stat> stat(std::string_view path) override { return stat_call(Op::StatPath, [&](Encoder& e) { e.string(path); }); }
  Result<Stat> stat(InodeNumber ino) override { return stat_call(Op::StatIno, [&](Encoder& e) { e.u64(ino.value()); }); }

  Result<File> open(std::string_view path, OpenFlags flags, uint32_t mode) override {
    InodeNumber ino;
    auto found = lookup(path);
    if (found.has_value()) {
      if (has(flags, OpenFlags::Create) && has(flags, OpenFlags::Exclusive)) {
        return fail(EEXIST, std::string(path) + ": already exists");
      }
      ino = *found;
    } else {
      if (found.error().code != ENOENT || !has(flags, OpenFlags::Create)) return Unexpected<Error>(std::move(found).error());
      ino = TRY(create(path, mode, std::nullopt));
    }
    auto st = TRY(stat(ino));
    if (st.type == FileType::Directory) return fail(EISDIR, std::string(path) + ": is a directory");
    TRY(retain(ino));
    File file(this, ino);
    if (has(flags, OpenFlags::Truncate) && st.size_bytes != 0) TRY(truncate(ino, 0));
    return file;
  }

  Result<std::string> path_of(InodeNumber ino) override {
    std::string path;
    TRY(call(Op::PathOf, [&](Encoder& e) { e.u64(ino.value()); }, [&](Decoder& d) { return d.string(&path, UINT32_MAX); }));
    return path;
  }

  Result<size_t> read(InodeNumber ino, uint64_t offset, std::span<std::byte> out) override {
    size_t done = 0;
    while (done < out.size()) {
      const uint64_t want = std::min<uint64_t>(out.size() - done, serve::kDataBytesMax);
      size_t got = 0;
      TRY(call(
          Op::Read,
          [&](Encoder& e) {
            e.u64(ino.value());
            e.u64(offset + done);
            e.u64(want);
          },
          [&](Decoder& d) {
            std::span<const std::byte> bytes;
            if (!d.bytes(&bytes, static_cast<uint32_t>(want))) return false;
            std::memcpy(out.data() + done, bytes.data(), bytes.size());
            got = bytes.size();
            return true;
          }));
      done += got;
      if (got < want) break;  // the end of the file
    }
    return done;
  }

  Result<size_t> write(InodeNumber ino, uint64_t offset, std::span<const std::byte> in) override {
    size_t done = 0;
    while (done < in.size()) {
      auto piece = in.subspan(done, std::min<size_t>(in.size() - done, serve::kDataBytesMax));
      uint64_t n = 0;
      TRY(call(
          Op::Write,
          [&](Encoder& e) {
            e.u64(ino.value());
            e.u64(offset + done);
            e.bytes(piece);
          },
          [&](Decoder& d) { return d.u64(&n) && n <= piece.size(); }));
      done += n;
      if (n < piece.size()) break;
    }
    return done;
  }

  Result<void> truncate(InodeNumber ino, uint64_t size) override {
    return call0(Op::Truncate, [&](Encoder& e) {
      e.u64(ino.value());
      e.u64(size);
    });
  }
  Result<void> fallocate(InodeNumber ino, uint64_t offset, uint64_t length, FallocateMode mode) override {
    return call0(Op::Fallocate, [&](Encoder& e) {
      e.u64(ino.value());
      e.u64(offset);
      e.u64(length);
      e.u8(mode == FallocateMode::KeepSize ? 1 : 0);
    });
  }
  Result<void> punch_hole(InodeNumber ino, uint64_t offset, uint64_t length) override {
    return call0(Op::PunchHole, [&](Encoder& e) {
      e.u64(ino.value());
      e.u64(offset);
      e.u64(length);
    });
  }
  Result<void> fsync(InodeNumber ino) override { return call0(Op::Fsync, [&](Encoder& e) { e.u64(ino.value()); }); }
  Result<void> sync() override { return call0(Op::Sync, [](Encoder&) {}); }
  Result<void> reflink(InodeNumber src, InodeNumber dst) override {
    return call0(Op::Reflink, [&](Encoder& e) {
      e.u64(src.value());
      e.u64(dst.value());
    });
  }
  Result<void> clone_range(InodeNumber src, uint64_t src_offset, InodeNumber dst, uint64_t dst_offset,
                           uint64_t length) override {
    return call0(Op::CloneRange, [&](Encoder& e) {
      e.u64(src.value());
      e.u64(src_offset);
      e.u64(dst.value());
      e.u64(dst_offset);
      e.u64(length);
    });
  }

  Result<Mapping> map(InodeNumber, uint64_t, uint64_t, MapAccess, std::shared_ptr<MapOwner>) override {
    return fail(ENOTSUP, "direct mappings are not yet given out through poise serve; map in the serving process");
  }
  Result<Pin> pin(InodeNumber, uint64_t, uint64_t) override {
    return fail(ENOTSUP, "pins are not yet given out through poise serve; pin in the serving process");
  }
  size_t mapping_count() override { return 0; }

  Result<std::vector<FsmapRecord>> fsmap(uint64_t offset, uint64_t length) override {
    std::vector<FsmapRecord> all;
    const uint64_t end = length > UINT64_MAX - offset ? UINT64_MAX : offset + length;
    for (uint64_t at = offset;;) {
      uint64_t next = 0;
      TRY(call(
          Op::Fsmap,
          [&](Encoder& e) {
            e.u64(at);
            e.u64(end - at);
          },
          [&](Decoder& d) {
            uint32_t n = 0;
            if (!d.u32(&n)) return false;
            for (uint32_t i = 0; i < n; ++i) {
              FsmapRecord r;
              if (!d.fsmap_record(&r)) return false;
              all.push_back(r);
            }
            return d.u64(&next) && (next == 0 || (next > at && next < end));
          }));
      if (next == 0) break;
      at = next;
    }
    return all;
  }

  FsInfo info() override {
    FsInfo info;
    (void)call(Op::Info, [](Encoder&) {}, [&](Decoder& d) {
      return d.u64(&info.size_bytes) && d.u32(&info.block_size) && d.u64(&info.used_bytes) &&
             d.u64(&info.free_bytes) && d.u64(&info.files) && d.u64(&info.journal_bytes) &&
             d.u64(&info.checkpoint_generation);
    });
    return info;
  }

  CheckReport check() override {
    CheckReport r;
    auto got = call(Op::Check, [](Encoder&) {}, [&](Decoder& d) {
      return d.strings(&r.problems) && d.strings(&r.notes) && d.u64(&r.inodes) && d.u64(&r.directories) &&
             d.u64(&r.extents) && d.u64(&r.used_blocks) && d.u64(&r.shared_blocks) && d.u64(&r.bad_blocks) &&
             d.u64(&r.free_blocks);
    });
    // The report cannot say "clean" about what it could not check.
    if (!got.has_value()) r.problems.push_back("check through the server failed: " + got.error().message);
    return r;
  }

  std::vector<std::string> mount_warnings() const override {
    std::vector<std::string> list;
    (void)const_cast<Remote*>(this)->call(Op::MountWarnings, [](Encoder&) {},
                                          [&](Decoder& d) { return d.strings(&list); });
    return list;
  }

  void release(InodeNumber ino) override { (void)call0(Op::Release, [&](Encoder& e) { e.u64(ino.value()); }); }
  Result<void> retain(InodeNumber ino) override { return call0(Op::Retain, [&](Encoder& e) { e.u64(ino.value()); }); }

  Result<std::vector<BadRange>> bad_ranges(std::string* description) override {
    std::vector<BadRange> ranges;
    TRY(call(Op::BadRanges, [](Encoder&) {}, [&](Decoder& d) {
      uint32_t n = 0;
      if (!d.string(description) || !d.u32(&n)) return false;
      for (uint32_t i = 0; i < n; ++i) {
        BadRange r;
        if (!d.u64(&r.offset_bytes) || !d.u64(&r.length_bytes)) return false;
        ranges.push_back(r);
      }
      return true;
    }));
    return ranges;
  }
  Result<void> inject_poison(uint64_t offset, uint64_t length) override {
    return call0(Op::InjectPoison, [&](Encoder& e) {
      e.u64(offset);
      e.u64(length);
    });
  }
  Result<void> clear_poison(uint64_t offset, uint64_t length) override {
    return call0(Op::ClearPoison, [&](Encoder& e) {
      e.u64(offset);
      e.u64(length);
    });
  }

 private:
  // One request and its reply: the server's error, or `parse` reads the results.
  Result<void> call(Op op, const std::function<void(Encoder&)>& args, const std::function<bool(Decoder&)>& parse) {
    std::lock_guard lock(mu_);
    if (fd_ < 0) return fail(ESHUTDOWN, "not connected to the poise server");
    const uint64_t id = ++next_id_;
    Encoder request(op, id);
    args(request);
    if (request.body().size() > serve::kBodyBytesMax) return fail(ENAMETOOLONG, "request too large");
    serve::Header header;
    std::vector<std::byte> body;
    if (!serve::send_frame(fd_, request.finish()) || !serve::receive_frame(fd_, &header, &body)) {
      close_locked();
      return fail(ESHUTDOWN, "the poise server went away");
    }
    Decoder reply(body);
    int32_t status = 0;
    if (header.op != op || header.id != id || !reply.i32(&status)) {
      close_locked();
      return fail(EPROTO, "the poise server sent a malformed reply");
    }
    if (status != 0) {
      std::string message;
      if (!reply.string(&message, UINT32_MAX)) message = "error " + std::to_string(status);
      return fail(status, message);
    }
    if (!parse(reply) || !reply.done()) {
      close_locked();
      return fail(EPROTO, std::string("the poise server sent a malformed ") + serve::op_name(op) + " reply");
    }
    return {};
  }
  Result<void> call0(Op op, const std::function<void(Encoder&)>& args) {
    return call(op, args, [](Decoder&) { return true; });
  }
  Result<InodeNumber> ino_call(Op op, const std::function<void(Encoder&)>& args) {
    uint64_t ino = 0;
    TRY(call(op, args, [&](Decoder& d) { return d.u64(&ino); }));
    return InodeNumber(ino);
  }
  Result<Stat> stat_call(Op op, const std::function<void(Encoder&)>& args) {
    Stat st;
    TRY(call(op, args, [&](Decoder& d) { return d.stat(&st); }));
    return st;
  }
  void disconnect() {
    std::lock_guard lock(mu_);
    close_locked();
  }
  void close_locked() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  std::mutex mu_;
  int fd_;
  uint64_t next_id_ = 0;
  uint32_t pid_ = 0;
};

}  // namespace

std::string default_socket_path(const std::string& image) { return image + ".sock"; }

Result<std::unique_ptr<RemoteFilesystem>> connect(const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    return fail(ENAMETOOLONG, socket_path + ": not a usable socket path");
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(errno, std::string("socket: ") + std::strerror(errno));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int e = errno;
    ::close(fd);
    if (e == EACCES) {
      return fail(e, socket_path + ": permission denied by the socket's mode (its owner can share it with "
                                   "poise serve --socket-mode and --socket-group)");
    }
    return fail(e, socket_path + ": no poise server answers: " + std::strerror(e));
  }
  auto remote = std::make_unique<Remote>(fd);
  TRY(remote->hello());
  return std::unique_ptr<RemoteFilesystem>(std::move(remote));
}

}  // namespace poise
