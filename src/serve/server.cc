#include "serve/server.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <sstream>

#include "serve/protocol.h"

namespace poise::serve {

namespace {

constexpr size_t kReplyBudgetBytes = 900 * 1024;  // lists are cut into pages below this
constexpr uint32_t kFsmapRecordsPerReply = 16384;

std::vector<uint32_t> supplementary_groups(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  std::vector<uint32_t> groups;
  while (std::getline(in, line)) {
    if (line.rfind("Groups:", 0) != 0) continue;
    std::istringstream fields(line.substr(7));
    uint32_t g = 0;
    while (fields >> g) groups.push_back(g);
  }
  return groups;
}

// Path components, empty ones dropped ("/a//b/" -> a, b).
std::vector<std::string> components(std::string_view path) {
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

std::string join(const std::vector<std::string>& parts, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) out += "/" + parts[i];
  return out.empty() ? "/" : out;
}

}  // namespace

namespace {

// The permission checks, as the kernel makes them for the same system calls.
class Access {
 public:
  Access(Filesystem& fs, const Server::Client& c) : fs_(fs), c_(c) {}

  bool permits(const Stat& st, uint32_t want) const {
    if (c_.privileged) return true;
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

  // The file at PATH (walked to) allows `want`.
  Result<Stat> may_use(std::string_view path, uint32_t want) const {
    TRY(may_walk(path));
    auto st = TRY(fs_.stat(path));
    if (!permits(st, want)) return fail(EACCES, std::string(path) + ": permission denied");
    return st;
  }

  Result<Stat> may_use(InodeNumber ino, uint32_t want) const {
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

  Result<void> privileged(const char* what) const {
    if (c_.privileged) return {};
    return fail(EACCES, std::string(what) + " through poise serve is for root and the server's own user");
  }

 private:
  Filesystem& fs_;
  const Server::Client& c_;
};

}  // namespace

// --- listening ------------------------------------------------------------------

Result<std::unique_ptr<Server>> Server::listen(Filesystem& fs, Device& device, const ServerOptions& options) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (options.socket_path.empty() || options.socket_path.size() >= sizeof(addr.sun_path)) {
    return fail(ENAMETOOLONG, options.socket_path + ": a socket path must be 1.." +
                                  std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, options.socket_path.data(), options.socket_path.size());
  struct stat st {};
  if (::lstat(options.socket_path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return fail(EEXIST, options.socket_path + ": exists and is not a socket");
    int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool answered = probe >= 0 && ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    if (probe >= 0) ::close(probe);
    if (answered) return fail(EADDRINUSE, options.socket_path + ": another server answers there");
    ::unlink(options.socket_path.c_str());  // left by a server that died
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(errno, std::string("socket: ") + std::strerror(errno));
  // The socket never exists with wider permissions than asked for.
  mode_t old_mask = ::umask(0777 & ~options.socket_mode);
  int bound = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int bind_errno = errno;
  ::umask(old_mask);
  if (bound != 0) {
    ::close(fd);
    return fail(bind_errno, options.socket_path + ": cannot create the socket: " + std::strerror(bind_errno));
  }
  if (::chmod(options.socket_path.c_str(), options.socket_mode) != 0 ||
      (options.socket_group && ::chown(options.socket_path.c_str(), static_cast<uid_t>(-1), *options.socket_group) != 0) ||
      ::listen(fd, 128) != 0) {
    int e = errno;
    ::close(fd);
    ::unlink(options.socket_path.c_str());
    return fail(e, options.socket_path + ": " + std::strerror(e));
  }
  return std::unique_ptr<Server>(new Server(fs, device, options, fd));
}

Server::~Server() {
  {
    std::lock_guard lock(clients_mutex_);
    for (const auto& c : clients_) ::shutdown(c->fd, SHUT_RDWR);  // each thread sees its socket close
  }
  for (auto& t : threads_) t.join();
  for (const auto& c : clients_) ::close(c->fd);
  ::close(listen_fd_);
  ::unlink(options_.socket_path.c_str());
}

void Server::log(const std::string& line) {
  if (options_.log == nullptr) return;
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
  std::lock_guard lock(log_mutex_);
  std::fprintf(options_.log, "%s poise serve: %s\n", stamp, line.c_str());
  std::fflush(options_.log);
}

void Server::run(int stop_fd) {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    int n = ::poll(fds, 2, 1000);
    if (n < 0 && errno != EINTR) {
      log(std::string("poll failed: ") + std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    {  // threads of clients that left are joined as we go
      std::lock_guard lock(clients_mutex_);
      for (size_t i = 0; i < clients_.size();) {
        if (clients_[i]->done.load()) {
          threads_[i].join();
          ::close(clients_[i]->fd);
          clients_.erase(clients_.begin() + static_cast<long>(i));
          threads_.erase(threads_.begin() + static_cast<long>(i));
        } else {
          ++i;
        }
      }
    }
    if ((fds[0].revents & POLLIN) == 0) continue;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      ::close(fd);
      continue;
    }
    auto client = std::make_shared<Client>();
    client->fd = fd;
    client->peer.uid = cred.uid;
    client->peer.gid = cred.gid;
    client->peer.pid = cred.pid;
    client->peer.groups = supplementary_groups(cred.pid);
    client->privileged = cred.uid == 0 || cred.uid == ::geteuid();
    log(fmt::format("client pid {} (uid {}, gid {}) connected", cred.pid, cred.uid, cred.gid));
    std::lock_guard lock(clients_mutex_);
    clients_.push_back(client);
    threads_.emplace_back([this, client] { serve(client); });
  }
}

// --- one client -----------------------------------------------------------------

namespace {

// What one request comes to: its results (into `out`), or an error.
class Handler {
 public:
  Handler(Filesystem& fs, Device& device, Server::Client& client, Server* server)
      : fs_(fs), device_(device), c_(client), server_(server), access_(fs, client) {}

  // False: the message was malformed (the client is dropped).
  bool handle(Op op, Decoder& in, Encoder& out, Result<void>* status);

 private:
  Result<void> run(Op op, Decoder& in, Encoder& out);

  Filesystem& fs_;
  Device& device_;
  Server::Client& c_;
  Server* server_;
  Access access_;
  bool malformed_ = false;
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
      return {};
    }
    case Op::Lookup:
      if (!in.string(&path)) return bad();
      TRY(access_.may_walk(path));
      out.u64(TRY(fs_.lookup(path)).value());
      return {};
    case Op::Create:
    case Op::Mkdir: {
      if (!in.string(&path) || !in.u32(&mode)) return bad();
      TRY(access_.may_change_name(path, false));
      Credentials owner{c_.peer.uid, c_.peer.gid};
      auto ino = op == Op::Create ? fs_.create(path, mode & 07777, owner) : fs_.mkdir(path, mode & 07777, owner);
      out.u64(TRY(std::move(ino)).value());
      return {};
    }
    case Op::Unlink:
    case Op::Rmdir:
      if (!in.string(&path)) return bad();
      TRY(access_.may_change_name(path, true));
      return op == Op::Unlink ? fs_.unlink(path) : fs_.rmdir(path);
    case Op::Rename:
      if (!in.string(&path) || !in.string(&other)) return bad();
      TRY(access_.may_change_name(path, true));
      TRY(access_.may_change_name(other, true));
      return fs_.rename(path, other);
    case Op::Link:
      if (!in.string(&path) || !in.string(&other)) return bad();
      TRY(access_.may_walk(path));
      TRY(access_.may_change_name(other, false));
      return fs_.link(path, other);
    case Op::Readdir: {
      if (!in.string(&path) || !in.u64(&a)) return bad();
      TRY(access_.may_use(path, 4));
      auto entries = TRY(fs_.readdir(path));
      uint32_t n = 0;
      size_t bytes = 0;
      Encoder page(Op::Readdir, 0);
      uint64_t i = a;
      for (; i < entries.size() && bytes < kReplyBudgetBytes; ++i, ++n) {
        page.string(entries[i].name);
        page.u64(entries[i].ino.value());
        page.u8(entries[i].type == FileType::Directory ? 1 : 0);
        bytes += entries[i].name.size() + 13;
      }
      out.u32(n);
      out.raw(page.body());
      out.u8(i < entries.size() ? 1 : 0);
      return {};
    }
    case Op::StatPath:
      if (!in.string(&path)) return bad();
      TRY(access_.may_walk(path));
      out.stat(TRY(fs_.stat(path)));
      return {};
    case Op::StatIno:
      if (!in.u64(&a)) return bad();
      out.stat(TRY(fs_.stat(InodeNumber(a))));
      return {};
    case Op::PathOf:
      if (!in.u64(&a)) return bad();
      out.string(TRY(fs_.path_of(InodeNumber(a))));
      return {};
    case Op::Read: {
      if (!in.u64(&a) || !in.u64(&b) || !in.u64(&c)) return bad();
      if (c > kDataBytesMax) return bad();
      TRY(access_.may_use(InodeNumber(a), 4));
      std::vector<std::byte> buf(c);
      size_t n = TRY(fs_.read(InodeNumber(a), b, buf));
      out.bytes({buf.data(), n});
      return {};
    }
    case Op::Write: {
      std::span<const std::byte> data;
      if (!in.u64(&a) || !in.u64(&b) || !in.bytes(&data, kDataBytesMax)) return bad();
      TRY(access_.may_use(InodeNumber(a), 2));
      out.u64(TRY(fs_.write(InodeNumber(a), b, data)));
      return {};
    }
    case Op::Truncate:
      if (!in.u64(&a) || !in.u64(&b)) return bad();
      TRY(access_.may_use(InodeNumber(a), 2));
      return fs_.truncate(InodeNumber(a), b);
    case Op::Fallocate: {
      uint8_t keep = 0;
      if (!in.u64(&a) || !in.u64(&b) || !in.u64(&c) || !in.u8(&keep) || keep > 1) return bad();
      TRY(access_.may_use(InodeNumber(a), 2));
      return fs_.fallocate(InodeNumber(a), b, c, keep ? FallocateMode::KeepSize : FallocateMode::ExtendSize);
    }
    case Op::PunchHole:
      if (!in.u64(&a) || !in.u64(&b) || !in.u64(&c)) return bad();
      TRY(access_.may_use(InodeNumber(a), 2));
      return fs_.punch_hole(InodeNumber(a), b, c);
    case Op::Fsync:
      if (!in.u64(&a)) return bad();
      return fs_.fsync(InodeNumber(a));
    case Op::Sync:
      return fs_.sync();
    case Op::Reflink:
      if (!in.u64(&a) || !in.u64(&b)) return bad();
      TRY(access_.may_use(InodeNumber(a), 4));
      TRY(access_.may_use(InodeNumber(b), 2));
      return fs_.reflink(InodeNumber(a), InodeNumber(b));
    case Op::CloneRange:
      if (!in.u64(&a) || !in.u64(&b) || !in.u64(&c) || !in.u64(&d) || !in.u64(&e)) return bad();
      TRY(access_.may_use(InodeNumber(a), 4));
      TRY(access_.may_use(InodeNumber(c), 2));
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
      FsInfo info = fs_.info();
      out.u64(info.size_bytes);
      out.u32(info.block_size);
      out.u64(info.used_bytes);
      out.u64(info.free_bytes);
      out.u64(info.files);
      out.u64(info.journal_bytes);
      out.u64(info.checkpoint_generation);
      return {};
    }
    case Op::Check: {
      TRY(access_.privileged("check"));
      CheckReport r = fs_.check();
      // A report too long for one message keeps its first lines and says so.
      auto cut = [](std::vector<std::string> list, size_t budget) {
        size_t bytes = 0, keep = 0;
        while (keep < list.size() && bytes + list[keep].size() + 4 < budget) bytes += list[keep++].size() + 4;
        if (keep < list.size()) {
          size_t more = list.size() - keep;
          list.resize(keep);
          list.push_back("... and " + std::to_string(more) + " more (run check on the unserved image)");
        }
        return list;
      };
      out.strings(cut(r.problems, kReplyBudgetBytes / 2));
      out.strings(cut(r.notes, kReplyBudgetBytes / 4));
      for (uint64_t v : {r.inodes, r.directories, r.extents, r.used_blocks, r.shared_blocks, r.bad_blocks, r.free_blocks}) {
        out.u64(v);
      }
      return {};
    }
    case Op::MountWarnings:
      out.strings(fs_.mount_warnings());
      return {};
    case Op::Checkpoint:
      return fs_.checkpoint();
    case Op::Retain: {
      if (!in.u64(&a)) return bad();
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
      if (--it->second == 0) c_.retained.erase(it);
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

std::optional<std::vector<std::byte>> answer(Filesystem& fs, Device& device, Server::Client& client, Server* server,
                                             const Header& header, std::span<const std::byte> body) {
  Handler handler(fs, device, client, server);
  Decoder in(body);
  Encoder results(header.op, header.id);
  Result<void> status;
  if (!handler.handle(header.op, in, results, &status)) return std::nullopt;
  Encoder reply(header.op, header.id);
  if (status.has_value()) {
    reply.i32(0);
    reply.raw(results.body());
  } else {
    reply.i32(status.error().code);
    reply.string(status.error().message.substr(0, kPathBytesMax * 2));
  }
  return reply.finish();
}

void Server::serve(const std::shared_ptr<Client>& client) {
  Header header;
  std::vector<std::byte> body;
  std::string why = "disconnected";  // closed its end, or sent a bad header
  while (receive_frame(client->fd, &header, &body)) {
    auto reply = answer(fs_, device_, *client, this, header, body);
    if (!reply) {
      why = fmt::format("sent a malformed {} message: disconnected", op_name(header.op));
      break;
    }
    if (!send_frame(client->fd, *reply)) break;
  }
  for (const auto& [ino, count] : client->retained) {
    for (uint64_t i = 0; i < count; ++i) fs_.release(InodeNumber(ino));
  }
  client->retained.clear();
  log(fmt::format("client pid {} {}", client->peer.pid, why));
  ::shutdown(client->fd, SHUT_RDWR);  // closed when the thread is joined
  client->done = true;
}

}  // namespace poise::serve
