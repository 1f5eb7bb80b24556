#include "serve/server.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
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

#include "base/random.h"
#include "mapping/page_runs.h"
#include "serve/protocol.h"

namespace poise::serve {

namespace {

constexpr size_t kReplyBudgetBytes = 900 * 1024;  // lists are cut into pages below this
constexpr uint32_t kFsmapRecordsPerReply = 16384;
constexpr size_t kLeasesPerClientMax = 4096;
constexpr size_t kConnectionsPerUserMax = 128;  // for users other than root and the server's own

// The peer's supplementary groups, as the kernel recorded them at connect
// (SO_PEERGROUPS): never another process's, whatever happened to the pid since.
std::vector<uint32_t> peer_groups(int fd) {
  std::vector<gid_t> groups(64);
  for (int attempt = 0; attempt < 4; ++attempt) {
    socklen_t len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
      groups.resize(len / sizeof(gid_t));
      return std::vector<uint32_t>(groups.begin(), groups.end());
    }
    if (errno != ERANGE) break;
    groups.resize(len / sizeof(gid_t) + 1);
  }
  return {};
}

// A descriptor of the peer process, for killing it and for knowing when it is
// dead: from the socket itself where the kernel offers it (SO_PEERPIDFD, Linux
// 6.5), else by pid right after the connection (pidfd_open).
int peer_pidfd(int fd, pid_t pid) {
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
  int pidfd = -1;
  socklen_t len = sizeof(pidfd);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0 && pidfd >= 0) return pidfd;
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

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
  std::unique_ptr<Server> server(new Server(fs, device, options, fd));
  Server* raw = server.get();
  fs.set_event_listener([raw](const FsEvent& e) {
    raw->publish(raw->event_json(e));
    // A failure's recalls and notices went to every client at once: the flow
    // ends when all of them have acknowledged (or been killed).
    if (e.kind == FsEvent::Kind::MemoryFailure) raw->settle_all();
  });
  return server;
}

namespace {
std::string now_text() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return stamp;
}
}  // namespace

std::string Server::event_json(const FsEvent& e) {
  nlohmann::json j{{"time", now_text()}, {"event", to_string(e.kind)}};
  if (e.kind == FsEvent::Kind::MemoryFailure) {
    j["device_offset"] = e.device_offset;
    j["length"] = e.length;
    nlohmann::json owners = nlohmann::json::array();
    for (const auto& f : e.files) {
      owners.push_back({{"inode", f.ino.value()},
                        {"path", fs_.path_of(f.ino).value_or("")},
                        {"file_offset", f.file_offset},
                        {"length", f.length}});
    }
    j["files"] = owners;
    j["metadata"] = e.metadata;
  }
  j["action"] = e.action;
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

size_t Server::subscriber_count() {
  std::lock_guard lock(subscribers_mutex_);
  return subscribers_.size();
}

void Server::publish(const std::string& json) {
  Encoder e(Op::Event, 0);
  e.string(json.substr(0, kBodyBytesMax - 16));
  const auto& frame = e.finish();
  std::lock_guard lock(subscribers_mutex_);
  for (size_t i = 0; i < subscribers_.size();) {
    if (send_frame(subscribers_[i], frame)) {
      ++i;
      continue;
    }
    ::close(subscribers_[i]);
    subscribers_.erase(subscribers_.begin() + static_cast<long>(i));
  }
}

Server::~Server() {
  fs_.set_event_listener({});
  {
    std::lock_guard lock(clients_mutex_);
    // Each thread sees its socket close, and revokes its client's mappings on the way out.
    for (const auto& c : clients_) {
      if (c->fd >= 0) ::shutdown(c->fd, SHUT_RDWR);
    }
  }
  for (auto& t : threads_) t.join();
  publish(nlohmann::json{{"time", now_text()}, {"event", "server_stopped"},
                         {"action", "every client's mappings revoked; the filesystem is unmounted next"}}
              .dump());
  {
    std::lock_guard lock(subscribers_mutex_);
    for (int fd : subscribers_) ::close(fd);
    subscribers_.clear();
  }
  for (const auto& c : clients_) {
    if (c->fd >= 0) ::close(c->fd);
    if (c->pidfd >= 0) ::close(c->pidfd);
  }
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
          if (clients_[i]->fd >= 0) ::close(clients_[i]->fd);
          if (clients_[i]->pidfd >= 0) ::close(clients_[i]->pidfd);
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
    client->peer.groups = peer_groups(fd);
    client->pidfd = peer_pidfd(fd, cred.pid);
    fill_random(reinterpret_cast<unsigned char*>(&client->token), sizeof(client->token));
    client->privileged = cred.uid == 0 || cred.uid == ::geteuid();
    if (!client->privileged) {
      // One user cannot take every descriptor and thread of the server.
      std::lock_guard lock(clients_mutex_);
      size_t held = 0;
      for (const auto& c : clients_) held += c->peer.uid == cred.uid && !c->done.load() ? 1 : 0;
      if (held >= kConnectionsPerUserMax) {
        ::close(fd);
        if (client->pidfd >= 0) ::close(client->pidfd);
        log(fmt::format("client pid {} (uid {}) refused: that user holds {} connections already", cred.pid, cred.uid,
                        held));
        continue;
      }
    }
    log(fmt::format("client pid {} (uid {}, gid {}) connected", cred.pid, cred.uid, cred.gid));
    std::lock_guard lock(clients_mutex_);
    clients_.push_back(client);
    threads_.emplace_back([this, client] { serve(client); });
  }
}

// --- one client -----------------------------------------------------------------

std::optional<Reply> answer_as(Filesystem& fs, Device& device, Server::Client& client,
                               std::weak_ptr<Server::Client> shared, Server* server, const Header& header,
                               std::span<const std::byte> body);

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
        server_.publish(nlohmann::json{{"event", "lease_recalled"},
                                       {"pid", client->peer.pid},
                                       {"inode", ino_.value()},
                                       {"file_offset", (first_page_ + first) * 4096},
                                       {"length", count * 4096},
                                       {"pages_now", mapping::to_string(s)}}
                            .dump());
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
      auto ino = op == Op::Create ? fs_.create(path, mode & 07777, owner) : fs_.mkdir(path, mode & 07777, owner);
      const uint64_t made = TRY(std::move(ino)).value();
      c_.reached.insert(made);
      out.u64(made);
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
    case Op::Link: {
      if (!in.string(&path) || !in.string(&other)) return bad();
      auto target = TRY(access_.may_use(path, 0));
      // As the kernel with fs.protected_hardlinks: a link only to a file the
      // caller owns or may read and write.
      if (!c_.privileged && target.uid != c_.peer.uid && !access_.permits(target, 6)) {
        return fail(EPERM, std::string(path) + ": a hard link needs the file's owner, or read and write permission");
      }
      TRY(access_.may_change_name(other, false));
      return fs_.link(path, other);
    }
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
      TRY(access_.may_name(InodeNumber(a)));
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
    case Op::Checkpoint:
      return fs_.checkpoint();
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
      if (server_ == nullptr || !has_follow_channel()) {
        return fail(EPROTO, "a mapping needs the follow channel (connect it with Follow first)");
      }
      {
        std::lock_guard lock(c_.leases_mutex);
        if (c_.leases.size() >= kLeasesPerClientMax) {
          return fail(EMFILE, "this client holds " + std::to_string(kLeasesPerClientMax) + " mappings, the most a client may");
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
          device_.cancel_removal();
          say("removal cancelled: writers and mappings resume");
          return {};
        case OfflineStep::Remove:
          if (device_.state() != DeviceState::Alive) return fail(ENXIO, device_.describe() + ": already removed");
          TRY(device_.pre_remove());  // frozen and synced first (again, if it was: nothing new to sync)
          TRY(device_.remove());
          say("removed: waiting writers got an error, every later access in every process fails; the image "
              "mounts again where the memory now lives");
          return {};
      }
      return bad();
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

void Server::serve(const std::shared_ptr<Client>& client) {
  Header header;
  std::vector<std::byte> body;
  std::string why = "disconnected";  // closed its end, or sent a bad header
  while (receive_frame(client->fd, &header, &body)) {
    if (header.op == Op::Follow) {  // this connection becomes another client's follow channel
      Decoder in(body);
      uint64_t token = 0;
      if (in.u64(&token) && in.done() && attach_follower(token, *client, header.id)) {
        client->done = true;  // its descriptor is the owner's now
        return;
      }
      Encoder reply(Op::Follow, header.id);
      reply.i32(EINVAL);
      reply.string("no client is waiting for this follow channel");
      (void)send_frame(client->fd, reply.finish());
      why = "sent a follow request nobody was waiting for: disconnected";
      break;
    }
    if (header.op == Op::Subscribe) {  // this connection becomes an event stream
      Encoder reply(Op::Subscribe, header.id);
      if (!body.empty()) {
        why = "sent a malformed subscribe message: disconnected";
        break;
      }
      if (!client->privileged) {
        reply.i32(EACCES);
        reply.string("the event stream names every file: it is for root and the server's own user");
        if (!send_frame(client->fd, reply.finish())) break;
        continue;
      }
      reply.i32(0);
      timeval tv{1, 0};
      (void)::setsockopt(client->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
      {
        // Lock order: clients_mutex_, a client's follow_mutex, subscribers_mutex_.
        std::lock_guard clients(clients_mutex_);  // the destructor never shuts down a descriptor handed on
        std::lock_guard lock(subscribers_mutex_);  // no event before the answer
        if (!send_frame(client->fd, reply.finish())) break;
        subscribers_.push_back(client->fd);
        client->fd = -1;
      }
      log(fmt::format("client pid {} subscribed to events", client->peer.pid));
      client->done = true;
      return;
    }
    auto reply = answer_as(fs_, device_, *client, client, this, header, body);
    if (!reply) {
      why = fmt::format("sent a malformed {} message: disconnected", op_name(header.op));
      break;
    }
    bool sent = send_frame(client->fd, reply->frame, reply->fd);
    if (reply->fd >= 0) ::close(reply->fd);
    if (!sent) break;
  }
  drop_leases(*client);
  for (const auto& [ino, count] : client->retained) {
    for (uint64_t i = 0; i < count; ++i) fs_.release(InodeNumber(ino));
  }
  client->retained.clear();
  log(fmt::format("client pid {} {}", client->peer.pid, why));
  ::shutdown(client->fd, SHUT_RDWR);  // closed when the thread is joined
  client->done = true;
}

bool Server::attach_follower(uint64_t token, Client& from, uint64_t request_id) {
  const int connection = from.fd;
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (token == 0 || ::getsockopt(connection, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
  std::lock_guard lock(clients_mutex_);
  for (const auto& c : clients_) {
    if (c->token != token) continue;
    // Only the process that was given the token may follow for it.
    if (static_cast<pid_t>(c->peer.pid) != cred.pid || c->peer.uid != cred.uid) return false;
    std::lock_guard follow(c->follow_mutex);
    if (c->follow_fd >= 0 || c->gone) return false;
    // A client that stops reading (or answers half a frame) must not hold the
    // server beyond the recall timeout.
    timeval tv{static_cast<time_t>(options_.recall_timeout_ms / 1000),
               static_cast<suseconds_t>(options_.recall_timeout_ms % 1000) * 1000};
    (void)::setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)::setsockopt(connection, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    Encoder reply(Op::Follow, request_id);
    reply.i32(0);
    if (!send_frame(connection, reply.finish())) return false;
    c->follow_fd = connection;
    from.fd = -1;  // under clients_mutex_: the destructor never shuts down a descriptor handed on
    return true;
  }
  return false;
}

void Server::drop_leases(Client& client) {
  std::map<uint64_t, Mapping> leases;
  {
    std::lock_guard lock(client.leases_mutex);
    leases.swap(client.leases);
  }
  // A client that left (or is leaving) must not keep showing device memory:
  // each of its mappings is revoked in it (or it is killed) before the
  // server's copy goes and its blocks may be reused.
  for (auto& [lease, m] : leases) {
    (void)lease;
    if (auto* owner = m.owner(); owner != nullptr && owner->mirror) owner->mirror->died(MappingCause::Shutdown);
  }
  leases.clear();
  std::lock_guard lock(client.follow_mutex);
  if (client.follow_fd >= 0) {
    ::shutdown(client.follow_fd, SHUT_RDWR);
    ::close(client.follow_fd);
    client.follow_fd = -1;
  }
  client.gone = true;
}

void Server::push(Client& client, const std::vector<std::byte>& frame_in, bool wait) {
  std::lock_guard lock(client.follow_mutex);
  if (client.gone || client.follow_fd < 0) return;
  std::vector<std::byte> frame = frame_in;
  const uint64_t id = client.next_push++;
  for (int i = 0; i < 8; ++i) frame[8 + i] = std::byte(id >> (8 * i));
  const Op op = decode_header(std::span<const std::byte, kHeaderBytes>(frame.data(), kHeaderBytes))->op;
  // In order: the acknowledgement still owed comes first.
  if (!settle_locked(client) || !send_frame(client.follow_fd, frame)) return kill_locked(client, op);
  client.pending_ack = id;
  client.pending_op = op;
  if (wait && !settle_locked(client)) kill_locked(client, op);
}

bool Server::settle_locked(Client& client) {
  if (client.pending_ack == 0) return true;
  pollfd p{client.follow_fd, POLLIN, 0};
  bool acknowledged = false;
  if (::poll(&p, 1, static_cast<int>(options_.recall_timeout_ms)) == 1) {
    Header h;
    std::vector<std::byte> body;
    acknowledged = receive_frame(client.follow_fd, &h, &body) && h.op == client.pending_op && h.id == client.pending_ack;
  }
  if (acknowledged) client.pending_ack = 0;
  return acknowledged;
}

void Server::settle_all() {
  std::vector<std::shared_ptr<Client>> clients;
  {
    std::lock_guard lock(clients_mutex_);
    clients = clients_;
  }
  for (const auto& c : clients) {
    std::lock_guard lock(c->follow_mutex);
    if (c->gone || c->follow_fd < 0) continue;
    if (!settle_locked(*c)) kill_locked(*c, c->pending_op);
  }
}

void Server::kill_locked(Client& client, Op op) {
  client.gone = true;
  // Not acknowledged: the client may still reach the memory. It is killed,
  // and the change goes on only once it is dead (as the kernel kills what it
  // must before reusing memory).
  pollfd dead{client.pidfd, POLLIN, 0};
  if (client.pidfd < 0 || ::poll(&dead, 1, 0) != 0) return;  // (no mapping without a pidfd)
  log(fmt::format("client pid {} did not acknowledge a {} within {} ms: killed", client.peer.pid, op_name(op),
                  options_.recall_timeout_ms));
  publish(nlohmann::json{{"time", now_text()}, {"event", "client_killed"}, {"pid", client.peer.pid},
                         {"action", fmt::format("did not acknowledge a {} within {} ms", op_name(op),
                                                options_.recall_timeout_ms)}}
              .dump());
  if (::syscall(SYS_pidfd_send_signal, client.pidfd, SIGKILL, nullptr, 0) != 0) {
    log(fmt::format("cannot kill client pid {}: {}; waiting for it to end", client.peer.pid, std::strerror(errno)));
  }
  // The memory may be reused only once the process is gone.
  while (::poll(&dead, 1, 1000) == 0) {
    log(fmt::format("waiting for client pid {} to die", client.peer.pid));
  }
}

}  // namespace poise::serve
