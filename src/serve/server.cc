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
#include <map>

#include "base/random.h"
#include "mapping/page_runs.h"
#include "serve/protocol.h"

namespace poise::serve {

namespace {

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
    if (raw->options_.on_event) raw->options_.on_event(e);
    if (e.kind == FsEvent::Kind::Repaired) {
      for (const auto& f : e.files) {
        raw->log(fmt::format("repaired {} bytes {}..{}: {}", raw->fs_.path_of(f.ino).value_or("(unlinked)"),
                             f.file_offset, f.file_offset + f.length, e.action));
      }
    }
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

nlohmann::json Server::event_json(const FsEvent& e) {
  nlohmann::json j{{"event", to_string(e.kind)}};
  if (e.kind == FsEvent::Kind::MemoryFailure || e.kind == FsEvent::Kind::Repaired) {
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
  return j;
}

void Server::set_kernel_owns_size(std::function<bool(uint64_t)> fn) {
  std::lock_guard lock(size_owner_mutex_);
  kernel_owns_size_ = std::move(fn);
}

bool Server::kernel_owns_size(uint64_t ino) {
  std::lock_guard lock(size_owner_mutex_);
  return kernel_owns_size_ && kernel_owns_size_(ino);
}

size_t Server::subscriber_count() {
  std::lock_guard lock(subscribers_mutex_);
  return subscribers_.size();
}

void Server::publish(nlohmann::json event) {
  event["time"] = now_text();
  const std::string json = event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
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
  publish({{"event", "server_stopped"},
           {"action", "every client's mappings revoked; the filesystem is unmounted next"}});
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
  const std::string stamp = now_text();
  std::lock_guard lock(log_mutex_);
  std::fprintf(options_.log, "%s poise serve: %s\n", stamp.c_str(), line.c_str());
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
    if (header.op == Op::ReleasePins) {  // this connection gives back another client's pins
      Decoder in(body);
      uint64_t token = 0;
      if (!in.u64(&token) || !in.done()) {
        why = "sent a malformed release-pins message: disconnected";
        break;
      }
      Encoder reply(Op::ReleasePins, header.id);
      if (attach_releaser(token, *client)) {
        reply.i32(0);
      } else {
        reply.i32(EINVAL);
        reply.string("no client of this process has that token");
      }
      if (!send_frame(client->fd, reply.finish())) break;
      continue;
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

void Server::release_all_pins() {
  std::vector<std::shared_ptr<Client>> clients;
  {
    std::lock_guard lock(clients_mutex_);
    clients = clients_;
  }
  for (const auto& c : clients) {
    std::map<uint64_t, Client::PinnedRange> pins;
    {
      std::lock_guard lock(c->leases_mutex);
      pins.swap(c->pins);
      c->pinned_bytes = 0;
    }
    if (pins.empty()) continue;
    push(*c, Encoder(Op::PinsReleased, 0).finish(), true);
    log(fmt::format("client pid {}: its {} pin(s) let go for the removal (it keeps private copies)", c->peer.pid,
                    pins.size()));
  }
}

bool Server::attach_releaser(uint64_t token, Client& from) {
  if (token == 0) return false;
  std::lock_guard lock(clients_mutex_);
  for (const auto& c : clients_) {
    if (c->token != token || c.get() == &from) continue;
    // Only the process that was given the token may give back its pins.
    if (c->peer.pid != from.peer.pid || c->peer.uid != from.peer.uid) return false;
    from.releases_for = c;
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
  // Its pins go with it: the blocks they held may be freed again (a client
  // that is gone reads nothing more; one that disconnected made its pins
  // private copies first).
  std::map<uint64_t, Client::PinnedRange> pins;
  {
    std::lock_guard lock(client.leases_mutex);
    pins.swap(client.pins);
    client.pinned_bytes = 0;
  }
  // A client still running is told first, and copies what its pins show
  // before their blocks may change (one that does not answer is killed).
  if (!pins.empty()) push(client, Encoder(Op::PinsReleased, 0).finish(), true);
  pins.clear();
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
  publish({{"event", "client_killed"},
           {"pid", client.peer.pid},
           {"action", fmt::format("did not acknowledge a {} within {} ms", op_name(op), options_.recall_timeout_ms)}});
  if (::syscall(SYS_pidfd_send_signal, client.pidfd, SIGKILL, nullptr, 0) != 0) {
    log(fmt::format("cannot kill client pid {}: {}; waiting for it to end", client.peer.pid, std::strerror(errno)));
  }
  // The memory may be reused only once the process is gone.
  while (::poll(&dead, 1, 1000) == 0) {
    log(fmt::format("waiting for client pid {} to die", client.peer.pid));
  }
}

}  // namespace poise::serve
