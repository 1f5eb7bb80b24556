// The client side of docs/protocol.md: poise::connect and RemoteFilesystem.
#include "poise/client.h"

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "base/safe_copy.h"
#include "failure/fault_handler.h"
#include "mapping/registry.h"
#include "serve/client_side.h"
#include "serve/protocol.h"

#include <nlohmann/json.hpp>

namespace poise {

namespace {

using serve::ClientDevice;
using serve::connect_socket;
using serve::Decoder;
using serve::Encoder;
using serve::Op;
using serve::open_side_connection;
using serve::ReleaseChannel;
using serve::RemotePins;

// What a pin shows for a hole.
alignas(4096) const std::byte kZeroPiece[64 * 1024] = {};

// Set while this thread is inside a request: a fault it takes then (its buffer
// lies in a poise mapping not shown yet) cannot wait for the connection.
thread_local bool in_request = false;


class Remote final : public RemoteFilesystem, public mapping::FaultForwarder {
 public:
  Remote(int fd, std::string socket_path) : fd_(fd), socket_path_(std::move(socket_path)) {}
  ~Remote() override { disconnect(); }

  Result<void> hello() {
    uint32_t version = 0, pid = 0;
    TRY(call(
        Op::Hello, [](Encoder& e) { e.u32(serve::kProtocolVersion); },
        [&](Decoder& d) { return d.u32(&version) && d.u32(&pid) && d.u64(&token_); }));
    pid_ = pid;
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd_, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return fail(errno, "SO_PEERCRED");
    server_uid_ = cred.uid;
    return {};
  }

  uint32_t server_pid() const override { return pid_; }
  uint32_t server_uid() const override { return server_uid_; }

  Result<void> unmount() override {
    disconnect();
    return {};
  }
  Result<void> checkpoint(CheckpointMode mode) override {
    return call0(Op::Checkpoint, [&](Encoder& e) { e.u8(static_cast<uint8_t>(mode)); });
  }
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
  Result<InodeNumber> symlink(std::string_view target, std::string_view link_path,
                              std::optional<Credentials>) override {
    return ino_call(Op::Symlink, [&](Encoder& e) {
      e.string(target);
      e.string(link_path);
    });
  }
  Result<InodeNumber> mknod(std::string_view path, FileType type, uint32_t mode, uint64_t rdev,
                            std::optional<Credentials>) override {
    return ino_call(Op::Mknod, [&](Encoder& e) {
      e.string(path);
      e.u8(static_cast<uint8_t>(type));
      e.u32(mode);
      e.u64(rdev);
    });
  }
  Result<std::string> readlink(InodeNumber ino) override {
    std::string target;
    TRY(call(Op::Readlink, [&](Encoder& e) { e.u64(ino.value()); },
             [&](Decoder& d) { return d.string(&target, UINT32_MAX); }));
    return target;
  }
  Result<void> set_xattr(InodeNumber ino, std::string_view name, std::string_view value, XattrMode mode) override {
    return call0(Op::SetXattr, [&](Encoder& e) {
      e.u64(ino.value());
      e.string(name);
      e.string(value);
      e.u8(static_cast<uint8_t>(mode));
    });
  }
  Result<std::string> get_xattr(InodeNumber ino, std::string_view name) override {
    std::string value;
    TRY(call(Op::GetXattr, [&](Encoder& e) {
      e.u64(ino.value());
      e.string(name);
    }, [&](Decoder& d) { return d.string(&value, UINT32_MAX); }));
    return value;
  }
  Result<std::vector<std::string>> list_xattrs(InodeNumber ino) override {
    std::vector<std::string> names;
    TRY(call(Op::ListXattrs, [&](Encoder& e) { e.u64(ino.value()); }, [&](Decoder& d) { return d.strings(&names); }));
    return names;
  }
  Result<void> remove_xattr(InodeNumber ino, std::string_view name) override {
    return call0(Op::RemoveXattr, [&](Encoder& e) {
      e.u64(ino.value());
      e.string(name);
    });
  }
  Result<File> open_tmpfile(std::string_view dir, uint32_t mode, std::optional<Credentials>) override {
    const InodeNumber ino = TRY(ino_call(Op::OpenTmpfile, [&](Encoder& e) {
      e.string(dir);
      e.u32(mode);
    }));
    return File(this, ino);  // the server holds it open for this client until the File's release
  }
  Result<void> link_tmpfile(const File& file, std::string_view new_path, bool replace) override {
    if (!file.is_open()) return fail(EBADF, "link of a closed file");
    return call0(Op::LinkTmpfile, [&](Encoder& e) {
      e.u64(file.ino().value());
      e.string(new_path);
      e.u8(replace ? 1 : 0);
    });
  }
  Result<void> link(std::string_view existing, std::string_view new_path) override {
    return call0(Op::Link, [&](Encoder& e) {
      e.string(existing);
      e.string(new_path);
    });
  }

  Result<std::vector<DirEntry>> readdir(std::string_view path) override {
    return readdir_pages(Op::Readdir, [&](Encoder& e) { e.string(path); });
  }
  // By directory inode: these reach names below any path a message can carry.
  Result<std::vector<DirEntry>> readdir_at(InodeNumber dir) override {
    return readdir_pages(Op::ReaddirAt, [&](Encoder& e) { e.u64(dir.value()); });
  }
  Result<void> unlink_at(InodeNumber dir, std::string_view name) override {
    return call0(Op::UnlinkAt, [&](Encoder& e) {
      e.u64(dir.value());
      e.string(name);
    });
  }
  Result<void> rmdir_at(InodeNumber dir, std::string_view name) override {
    return call0(Op::RmdirAt, [&](Encoder& e) {
      e.u64(dir.value());
      e.string(name);
    });
  }
  Result<std::vector<DirEntry>> readdir_pages(Op op, const std::function<void(Encoder&)>& which) {
    std::vector<DirEntry> all;
    for (uint8_t more = 1; more != 0;) {
      const uint64_t from = all.size();
      TRY(call(
          op,
          [&](Encoder& e) {
            which(e);
            e.u64(from);
          },
          [&](Decoder& d) {
            uint32_t n = 0;
            if (!d.u32(&n)) return false;
            for (uint32_t i = 0; i < n; ++i) {
              DirEntry entry;
              uint64_t ino = 0;
              uint8_t type = 0;
              if (!d.string(&entry.name) || !d.u64(&ino) || !d.u8(&type) ||
                  type > static_cast<uint8_t>(FileType::Socket)) {
                return false;
              }
              entry.ino = InodeNumber(ino);
              entry.type = static_cast<FileType>(type);
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
    std::vector<std::byte> bounce;
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
            bounce.assign(bytes.begin(), bytes.end());
            return true;
          }));
      // Copied once the connection is free: `out` may lie in a poise mapping
      // whose fault needs the connection.
      got = bounce.size();
      if (got > 0) std::memcpy(out.data() + done, bounce.data(), got);
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

  Result<Mapping> map(InodeNumber ino, uint64_t offset, uint64_t length, MapAccess access,
                      std::shared_ptr<MapOwner> owner) override {
    const bool writable = access == MapAccess::ReadWrite;
    TRY(start_following());
    TRY(get_device_fd(writable));
    Mapping m = TRY(registry_->map_follower(ino, offset, length, access, std::move(owner)));
    uint64_t lease = 0;
    // The server's copy is made, and its pages reach this mapping through the
    // follow channel, before the answer comes.
    TRY(call(
        Op::Map,
        [&](Encoder& e) {
          e.u64(ino.value());
          e.u64(offset);
          e.u64(length);
          e.u8(writable ? 1 : 0);
          e.u64(m.id());
        },
        [&](Decoder& d) { return d.u64(&lease); }));
    std::lock_guard lock(leases_mu_);
    leases_[m.id()] = Lease{lease, ino};
    return m;
  }
  // A pin through the server: the server pins the range and says where its
  // pieces lie; they are read here through the read-only device descriptor.
  Result<Pin> pin(InodeNumber ino, uint64_t offset, uint64_t length) override {
    {
      std::lock_guard lock(mu_);
      if (fd_ < 0) return fail(ESHUTDOWN, "the poise server went away (not connected)");
    }
    if (length > serve::kPinBytesMax) {
      return fail(EFBIG, "a pin through a server covers at most " + std::to_string(serve::kPinBytesMax >> 30) +
                             " GiB: pin less at a time");
    }
    TRY(start_following());  // the server's death is then noticed at once (and the pins frozen)
    std::shared_ptr<ReleaseChannel> channel;
    {
      std::lock_guard lock(follow_start_mu_);
      if (release_ == nullptr) release_ = std::make_shared<ReleaseChannel>(socket_path_, token_);
      channel = release_;
    }
    TRY(channel->open());
    TRY(get_device_fd(false));
    uint64_t id = 0, device_bytes = 0;
    std::vector<std::pair<uint64_t, uint64_t>> pieces;
    TRY(call(
        Op::Pin,
        [&](Encoder& e) {
          e.u64(ino.value());
          e.u64(offset);
          e.u64(length);
        },
        [&](Decoder& d) {
          uint32_t n = 0;
          if (!d.u64(&id) || !d.u64(&device_bytes) || !d.u32(&n) || n > serve::kPinPiecesMax) return false;
          pieces.resize(n);
          for (auto& [len, where] : pieces) {
            if (!d.u64(&len) || !d.u64(&where)) return false;
          }
          return true;
        }));
    auto release = [channel](uint64_t pin) { return channel->unpin(pin); };
    auto given_back = [&](Error e) -> Result<Pin> {
      (void)release(id);
      return Unexpected<Error>(std::move(e));
    };
    auto pins = view_for(device_bytes);
    if (!pins.has_value()) return given_back(std::move(pins).error());
    std::vector<std::span<const std::byte>> segments;
    for (const auto& [len, where] : pieces) {
      if (where == serve::kPinZeros) {
        for (uint64_t at = 0; at < len; at += sizeof kZeroPiece) segments.emplace_back(kZeroPiece, std::min<uint64_t>(sizeof kZeroPiece, len - at));
      } else if (where > device_bytes || len > device_bytes - where) {
        return given_back(Error{EPROTO, "the poise server named a pin piece outside its device"});
      } else {
        segments.emplace_back((*pins)->view() + where, len);
      }
    }
    // Recorded only while connected (a server that died meanwhile took its
    // pin along; one that lives gets it back).
    if (auto added = (*pins)->add(id, std::move(pieces), release); !added.has_value()) {
      return given_back(std::move(added).error());
    }
    return Pin(*pins, id, std::move(segments));
  }
  size_t mapping_count() override { return registry_ ? registry_->mapping_count() : 0; }
  size_t pin_count() override {
    auto held = pins();
    return held ? held->count() : 0;
  }

  // mapping::FaultForwarder: what the follower registry asks of the server.
  mapping::FaultOutcome forward_fault(const mapping::MapState& m, uint64_t page, bool is_write) override {
    using mapping::FaultOutcome;
    if (in_request) {
      return FaultOutcome{FaultOutcome::Failed, EDEADLK,
                          false, "an access inside a poise call ran into a mapping page not shown yet"};
    }
    // A store to a read-only mapping is the program's error, as with the kernel:
    // SIGSEGV, never a request.
    if (is_write && m.access == MapAccess::Read) return FaultOutcome{FaultOutcome::NotOurs};
    auto lease = lease_of(m.id);
    if (!lease) return FaultOutcome{FaultOutcome::Failed, ESHUTDOWN, false, "the mapping has no lease"};
    auto r = call0(Op::Fault, [&](Encoder& e) {
      e.u64(lease->id);
      e.u64(page);
      e.u8(is_write ? 1 : 0);
    });
    if (r.has_value()) return FaultOutcome{};  // shown now: retry the access
    const Error& e = r.error();
    return FaultOutcome{FaultOutcome::Failed, e.code, e.code == EIO, e.message};
  }
  Result<void> sync(const mapping::MapState& m) override { return fsync(m.ino); }
  void unmapped(const mapping::MapState& m) override {
    std::optional<Lease> lease;
    {
      std::lock_guard lock(leases_mu_);
      auto it = leases_.find(m.id);
      if (it == leases_.end()) return;
      lease = it->second;
      leases_.erase(it);
    }
    (void)call0(Op::Unmap, [&](Encoder& e) { e.u64(lease->id); });
  }

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

  FsInfo info() override { return fs_info().value_or(FsInfo{}); }
  Result<FsInfo> fs_info() override {
    FsInfo info;
    TRY(call(Op::Info, [](Encoder&) {}, [&](Decoder& d) {
      return d.u64(&info.size_bytes) && d.u32(&info.block_size) && d.u64(&info.used_bytes) &&
             d.u64(&info.free_bytes) && d.u64(&info.files) && d.u64(&info.journal_bytes) &&
             d.u64(&info.checkpoint_generation) && d.u64(&info.previous_generation) && d.u64(&info.previous_bytes);
    }));
    return info;
  }

  CheckReport check() override {
    auto got = check_report();
    if (got.has_value()) return std::move(*got);
    // The report cannot say "clean" about what it could not check.
    CheckReport r;
    r.problems.push_back("check through the server failed: " + got.error().message);
    return r;
  }
  Result<CheckReport> check_report() override {
    CheckReport r;
    TRY(call(Op::Check, [](Encoder&) {}, [&](Decoder& d) {
      return d.strings(&r.problems) && d.strings(&r.notes) && d.u64(&r.inodes) && d.u64(&r.directories) &&
             d.u64(&r.extents) && d.u64(&r.used_blocks) && d.u64(&r.shared_blocks) && d.u64(&r.bad_blocks) &&
             d.u64(&r.free_blocks);
    }));
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
  // The in-process listener, fed from the event stream on a thread of its own.
  void set_event_listener(std::function<void(const FsEvent&)> listener) override {
    stop_listening();
    if (!listener) return;
    listening_ = true;
    listener_thread_ = std::thread([this, listener = std::move(listener)] {
      (void)watch_events([&](const std::string& text) {
        auto j = nlohmann::json::parse(text, nullptr, false);
        if (j.is_discarded() || !j.is_object()) return listening_.load();
        const std::string kind = j.value("event", std::string());
        FsEvent e;
        if (kind == "memory_failure") {
          e.kind = FsEvent::Kind::MemoryFailure;
        } else if (kind == "pre_remove") {
          e.kind = FsEvent::Kind::PreRemove;
        } else if (kind == "removal_cancelled") {
          e.kind = FsEvent::Kind::RemovalCancelled;
        } else if (kind == "removed") {
          e.kind = FsEvent::Kind::Removed;
        } else if (kind == "repaired") {
          e.kind = FsEvent::Kind::Repaired;
        } else {
          return listening_.load();  // the server's own events (recalls, kills) have no FsEvent
        }
        e.device_offset = j.value("device_offset", uint64_t(0));
        e.length = j.value("length", uint64_t(0));
        e.action = j.value("action", std::string());
        if (j.contains("files") && j["files"].is_array()) {
          for (const auto& f : j["files"]) {
            e.files.push_back({InodeNumber(f.value("inode", uint64_t(0))), f.value("file_offset", uint64_t(0)),
                               f.value("length", uint64_t(0))});
          }
        }
        if (j.contains("metadata") && j["metadata"].is_array()) {
          for (const auto& m : j["metadata"]) {
            if (m.is_string()) e.metadata.push_back(m.get<std::string>());
          }
        }
        listener(e);
        return listening_.load();
      });
    });
  }

  Result<void> watch_events(const std::function<bool(const std::string& json)>& on_event) override {
    int fd = TRY(open_connection());
    {
      std::lock_guard lock(watch_mu_);
      watch_fds_.push_back(fd);
    }
    struct Forget {
      Remote* self;
      int fd;
      ~Forget() {
        std::lock_guard lock(self->watch_mu_);
        auto& v = self->watch_fds_;
        v.erase(std::remove(v.begin(), v.end(), fd), v.end());
        ::close(fd);  // under the lock: never shut down once its number is reused
      }
    } forget{this, fd};
    Encoder subscribe(Op::Subscribe, 1);
    serve::Header h;
    std::vector<std::byte> body;
    if (!serve::send_frame(fd, subscribe.finish()) || !serve::receive_frame(fd, &h, &body) || h.op != Op::Subscribe) {
      return fail(ESHUTDOWN, "the poise server went away");
    }
    Decoder answer(body);
    int32_t status = -1;
    if (!answer.i32(&status) || status != 0) {
      std::string message = "the poise server refused the event stream";
      (void)answer.string(&message, UINT32_MAX);
      return fail(status > 0 ? status : EPROTO, message);
    }
    bool stopped = false;
    while (serve::receive_frame(fd, &h, &body)) {
      Decoder d(body);
      std::string json;
      if (h.op != Op::Event || !d.string(&json, UINT32_MAX) || !d.done()) {
          return fail(EPROTO, "the poise server sent a malformed event");
      }
      auto event = nlohmann::json::parse(json, nullptr, false);
      stopped = event.is_object() && event.value("event", std::string()) == "server_stopped";
      if (!on_event(json)) return {};
    }
    if (!stopped) {
      return fail(ECONNRESET, "the poise server went away without stopping (killed?): the event stream is cut off");
    }
    return {};
  }

  Result<std::string> offline(uint8_t step) override {
    std::string state;
    TRY(call(Op::Offline, [&](Encoder& e) { e.u8(step); }, [&](Decoder& d) { return d.string(&state, UINT32_MAX); }));
    return state;
  }
  Result<void> clear_poison(uint64_t offset, uint64_t length) override {
    return call0(Op::ClearPoison, [&](Encoder& e) {
      e.u64(offset);
      e.u64(length);
    });
  }

 private:
  // One request and its reply: the server's error, or `parse` reads the results.
  // With `passed_fd`, a descriptor the answer carries (SCM_RIGHTS) goes there
  // when the call succeeds; it is closed when it fails.
  Result<void> call(Op op, const std::function<void(Encoder&)>& args, const std::function<bool(Decoder&)>& parse,
                    int* passed_fd = nullptr) {
    int passed = -1;
    auto r = exchange(op, args, parse, passed_fd != nullptr ? &passed : nullptr);
    if (r.has_value() && passed_fd != nullptr) {
      *passed_fd = passed;
    } else if (passed >= 0) {
      ::close(passed);
    }
    return r;
  }
  Result<void> exchange(Op op, const std::function<void(Encoder&)>& args, const std::function<bool(Decoder&)>& parse,
                        int* passed_fd) {
    // The request is built before the connection is taken: its bytes may come
    // from a poise mapping whose fault needs the connection.
    Encoder request(op, 0);
    args(request);
    std::lock_guard lock(mu_);
    in_request = true;
    struct Leave {
      ~Leave() { in_request = false; }
    } leave;
    if (fd_ < 0) return fail(ESHUTDOWN, "the poise server went away (not connected)");
    const uint64_t id = ++next_id_;
    request.set_id(id);
    if (request.body().size() > serve::kBodyBytesMax) return fail(ENAMETOOLONG, "request too large");
    serve::Header header;
    std::vector<std::byte> body;
    if (!serve::send_frame(fd_, request.finish()) || !serve::receive_frame(fd_, &header, &body, passed_fd)) {
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
  void stop_listening() {
    listening_ = false;
    {
      std::lock_guard lock(watch_mu_);
      for (int fd : watch_fds_) ::shutdown(fd, SHUT_RDWR);  // the stream ends
    }
    if (listener_thread_.joinable()) listener_thread_.join();
  }

  void disconnect() {
    stop_listening();
    // Pins still held keep what they show, as private copies: the server
    // releases its pins when this connection closes.
    if (auto held = pins()) held->freeze();
    if (device_) device_->unregister_holder(&reporter_);
    // Nothing the server showed may stay reachable from this process.
    if (registry_) {
      std::vector<mapping::Notice> notices;
      registry_->kill_all(MappingCause::Shutdown, &notices);
    }
    {
      std::lock_guard lock(mu_);
      close_locked();
    }
    // The server now revokes (already dead here) and closes the follow channel.
    if (follow_thread_.joinable()) follow_thread_.join();
    if (notice_thread_.joinable()) notice_thread_.join();
    if (follow_fd_ >= 0) ::close(follow_fd_);
    follow_fd_ = -1;
    if (auto channel = release_channel()) channel->close();
    std::lock_guard lock(follow_start_mu_);
    if (watching_view_) failure::unwatch_device(*device_);
    watching_view_ = false;
  }

  struct Lease {
    uint64_t id;
    InodeNumber ino;
  };

  // Another connection to the same server (the follow channel, an event stream).
  Result<int> open_connection() const { return connect_socket(socket_path_); }
  std::optional<Lease> lease_of(uint64_t mapping_id) {
    std::lock_guard lock(leases_mu_);
    auto it = leases_.find(mapping_id);
    if (it == leases_.end()) return std::nullopt;
    return it->second;
  }

  // The second connection, on which the server pushes page changes and notices
  // and this process acknowledges each once it shows it.
  Result<void> start_following() {
    std::lock_guard lock(follow_start_mu_);
    if (follow_thread_.joinable()) return {};
    failure::install_fault_handler();
    int fd = TRY(open_side_connection(socket_path_, Op::Follow, token_, "the follow channel"));
    device_ = std::make_unique<ClientDevice>("the device of the poise server on " + socket_path_);
    registry_ = std::make_shared<mapping::MappingRegistry>(*device_);
    registry_->set_forwarder(this);
    reporter_.remote = this;
    (void)device_->register_holder(&reporter_);
    follow_fd_ = fd;
    follow_thread_ = std::thread([this] { follow_loop(); });
    notice_thread_ = std::thread([this] { notice_loop(); });
    return {};
  }

  // The read-only view of the whole device that pins read, made once.
  Result<std::shared_ptr<RemotePins>> view_for(uint64_t device_bytes) {
    std::lock_guard lock(follow_start_mu_);
    if (auto held = pins()) {
      if (held->size() != device_bytes) return fail(EPROTO, "the poise server's device changed size");
      return held;
    }
    if (device_bytes == 0 || device_bytes % 4096 != 0) return fail(EPROTO, "the poise server named no device size");
    void* view = ::mmap(nullptr, device_bytes, PROT_READ, MAP_SHARED, device_->map_fd(), 0);
    if (view == MAP_FAILED) return fail(errno, std::string("mapping the server's device for pins: ") + std::strerror(errno));
    auto made = std::make_shared<RemotePins>(static_cast<std::byte*>(view), device_bytes);
    device_->set_view(made->view(), device_bytes);
    failure::start_machine_check_thread();  // it tells the device of a machine check in the view
    failure::watch_device(*device_);
    watching_view_ = true;
    std::lock_guard pins_lock(pins_mu_);
    pins_ = made;
    return made;
  }
  std::shared_ptr<RemotePins> pins() {
    std::lock_guard lock(pins_mu_);
    return pins_;
  }
  std::shared_ptr<ReleaseChannel> release_channel() {
    std::lock_guard lock(follow_start_mu_);
    return release_;
  }


  Result<void> get_device_fd(bool writable) {
    std::lock_guard lock(follow_start_mu_);
    if (device_->has_fd(writable)) return {};  // (a read-write descriptor serves read-only mappings too)
    int passed = -1;
    TRY(call(
        Op::DeviceFd, [&](Encoder& e) { e.u8(writable ? 1 : 0); },
        [&](Decoder& d) {
          uint8_t given = 0;
          return d.u8(&given) && given == (writable ? 1 : 0);
        },
        &passed));
    if (passed < 0) return fail(EPROTO, "the poise server sent no device descriptor");
    device_->set_fd(passed, writable);
    return {};
  }

  void follow_loop() {
    serve::Header h;
    std::vector<std::byte> body;
    while (serve::receive_frame(follow_fd_, &h, &body)) {
      Decoder d(body);
      uint64_t id = 0, first = 0, count = 0, dev = 0;
      uint8_t state = 0, cause = 0, consumed = 0;
      bool understood = false;
      switch (h.op) {
        case Op::PagesChanged:
          understood = d.u64(&id) && d.u64(&first) && d.u64(&count) && d.u8(&state) && d.u64(&dev) && d.done() &&
                       state <= static_cast<uint8_t>(mapping::PageState::Poisoned);
          if (understood) {
            auto shown = registry_->follow(id, first, count, static_cast<mapping::PageState>(state), dev);
            // Pages that cannot be shown are not acknowledged: the server then
            // treats this process as one that did not follow.
            understood = shown.has_value();
          }
          break;
        case Op::PinsReleased:  // the server lets this client's pins go next: keep copies
          understood = d.done();
          if (understood) {
            if (auto held = pins()) held->freeze();
          }
          break;
        case Op::MappingDied:
          understood = d.u64(&id) && d.u8(&cause) && d.done() && cause <= static_cast<uint8_t>(MappingCause::Shutdown);
          if (understood) registry_->follow_death(id, static_cast<MappingCause>(cause));
          break;
        case Op::Notice:
          understood = d.u64(&id) && d.u64(&first) && d.u64(&count) && d.u8(&cause) && d.u8(&consumed) && d.done() &&
                       cause <= static_cast<uint8_t>(MappingCause::Shutdown);
          if (understood) {
            auto owner = registry_->owner_of(id);
            auto lease = lease_of(id);
            if (owner && owner->on_event) {
              MappingEvent e;
              e.mapping_id = id;
              e.owner = owner->name;
              e.ino = lease ? lease->ino : InodeNumber();
              e.file_offset = first;
              e.length = count;
              e.cause = static_cast<MappingCause>(cause);
              e.consumed = consumed != 0;
              // Delivered by another thread once acknowledged: a sink that
              // touches its mapping (whose fault the server answers with
              // pushes) must not stall this channel.
              std::lock_guard lock(notices_mu_);
              notices_.push_back(mapping::Notice{owner, e});
              notices_cv_.notify_one();
            }
          }
          break;
        default:
          break;
      }
      if (!understood) break;
      Encoder ack(h.op, h.id);
      if (!serve::send_frame(follow_fd_, ack.finish())) break;
    }
    // The server is gone (or this process is leaving): nothing it showed may
    // be reached any more, and what pins show is kept as private copies.
    if (auto held = pins()) held->freeze();
    std::vector<mapping::Notice> notices;
    registry_->kill_all(MappingCause::Shutdown, &notices);
    std::lock_guard lock(notices_mu_);
    for (auto& n : notices) notices_.push_back(std::move(n));
    following_ = false;
    notices_cv_.notify_one();
  }

  void notice_loop() {
    std::unique_lock lock(notices_mu_);
    for (;;) {
      notices_cv_.wait(lock, [&] { return !notices_.empty() || !reports_.empty() || !following_; });
      if (notices_.empty() && reports_.empty()) return;
      std::vector<mapping::Notice> batch(notices_.begin(), notices_.end());
      notices_.clear();
      std::vector<BadRange> reports = std::move(reports_);
      reports_.clear();
      lock.unlock();
      // The server records the memory and recalls every lease on it (this
      // process's too); its notices then come back on the follow channel.
      for (const BadRange& r : reports) {
        uint8_t confirmed = 0;
        (void)call(
            Op::ReportFailure,
            [&](Encoder& e) {
              e.u64(r.offset_bytes);
              e.u64(r.length_bytes);
            },
            [&](Decoder& d) { return d.u8(&confirmed); });
      }
      mapping::MappingRegistry::deliver(batch);
      lock.lock();
    }
  }
  void close_locked() {
    // Pins still held keep what they show, as private copies, before the
    // server may let their blocks go (it does once this connection closes).
    if (auto held = pins()) held->freeze();
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  std::mutex mu_;
  int fd_;
  uint64_t next_id_ = 0;
  uint32_t pid_ = 0;
  uint32_t server_uid_ = 0;
  std::string socket_path_;
  uint64_t token_ = 0;

  std::mutex follow_start_mu_;
  // The holder of this process's view of the server's device: a machine check
  // in one of this process's mappings (the kernel tells this process, not the
  // server) is queued here and reported to the server by the notice thread.
  // Called from the fault handler: it only queues.
  struct FailureReporter final : FailureHolder {
    Remote* remote = nullptr;
    Result<void> notify_failure(uint64_t offset, uint64_t length, FailureFlags) override {
      std::lock_guard lock(remote->notices_mu_);
      remote->reports_.push_back(BadRange{offset, length});
      remote->notices_cv_.notify_one();
      return {};
    }
  };
  FailureReporter reporter_;
  std::unique_ptr<ClientDevice> device_;
  std::mutex pins_mu_;                // a leaf: taken under any other lock
  std::shared_ptr<RemotePins> pins_;  // guarded by pins_mu_: made by the first pin
  bool watching_view_ = false;        // guarded by follow_start_mu_
  std::shared_ptr<ReleaseChannel> release_;  // guarded by follow_start_mu_: made by the first pin
  std::shared_ptr<mapping::MappingRegistry> registry_;
  int follow_fd_ = -1;
  std::thread follow_thread_;
  std::thread notice_thread_;
  std::mutex notices_mu_;
  std::condition_variable notices_cv_;
  std::deque<mapping::Notice> notices_;  // guarded by notices_mu_
  std::vector<BadRange> reports_;        // guarded by notices_mu_: machine checks to report
  bool following_ = true;                // guarded by notices_mu_
  std::mutex leases_mu_;
  std::map<uint64_t, Lease> leases_;
  std::mutex watch_mu_;
  std::vector<int> watch_fds_;  // guarded by watch_mu_: open event streams
  std::atomic<bool> listening_{false};
  std::thread listener_thread_;  // client mapping id -> the server's lease
};

}  // namespace

std::string default_socket_path(const std::string& image) { return image + ".sock"; }

Result<std::unique_ptr<RemoteFilesystem>> connect(const std::string& socket_path) {
  int fd = TRY(connect_socket(socket_path));
  auto remote = std::make_unique<Remote>(fd, socket_path);
  TRY(remote->hello());
  return std::unique_ptr<RemoteFilesystem>(std::move(remote));
}

}  // namespace poise
