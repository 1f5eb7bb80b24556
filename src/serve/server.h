// The server behind `poise serve`: one mounted filesystem shared by many
// processes over a Unix socket (docs/protocol.md).
//
// Each client gets a thread. Its identity is the socket peer's (SO_PEERCRED:
// uid, gid, pid; supplementary groups from /proc/PID/status), and every
// operation is checked as the kernel would check the same system call: search
// permission on every directory of a path, write and search permission on the
// parent for a change to a name (with the sticky-bit rule), read or write
// permission on the file for its data. Root and the server's own user may do
// anything (they can open the image itself). Files a client creates belong to
// its uid and gid. A malformed, truncated or oversized message disconnects
// that client only; a client's death releases the inodes it kept open.
//
// Thread-safety: listen() and run() on one thread; clients on their own.
#pragma once

#include <atomic>
#include <cstdio>
#include <functional>
#include <map>
#include <set>
#include <span>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "poise/device.h"
#include "poise/filesystem.h"
#include "serve/protocol.h"

namespace poise::serve {

struct ServerOptions {
  std::string image;        // reported to clients (Hello) and in the log
  std::string socket_path;  // created; an old socket nobody answers on is replaced
  uint32_t socket_mode = 0600;
  std::optional<uint32_t> socket_group;  // chown the socket to this group
  std::FILE* log = stderr;               // one line per significant event
  // How long a client has to acknowledge a recall of its mapped pages before
  // it is killed (SIGKILL) and the change goes on once it is dead.
  uint32_t recall_timeout_ms = 1000;
  // Also told of every failure and removal step, before the event is published
  // (the FUSE mount drops what the kernel caches). Quick work only.
  std::function<void(const FsEvent&)> on_event;
};

class Server {
 public:
  // Binds and listens (nothing is served until run()). EADDRINUSE if a server
  // already answers on the path; EEXIST if the path is something else.
  static Result<std::unique_ptr<Server>> listen(Filesystem& fs, Device& device, const ServerOptions& options);
  ~Server();  // disconnects every client, waits for their threads, removes the socket
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Accepts and serves clients until `stop_fd` becomes readable (a signalfd).
  void run(int stop_fd);
  // Writes one log line (with a timestamp) and flushes it.
  void log(const std::string& line);

  struct Client;
  // Sends a message on the client's follow channel, after the acknowledgement
  // of the one before; with `wait`, returns once this one is acknowledged too.
  // A client that does not answer in time is killed, and this returns once it
  // is dead. Nothing is sent to a client that is gone.
  void push(Client& client, const std::vector<std::byte>& frame, bool wait);
  // Waits for every acknowledgement still owed, by every client.
  void settle_all();
  // Lets every client's pins go, each client told first (pins-released: it
  // keeps private copies) or killed: device removal waits for no client.
  void release_all_pins();
  uint32_t recall_timeout_ms() const { return options_.recall_timeout_ms; }
  // Sends one event to every subscriber, with its time added; a subscriber
  // that cannot take it within a second is dropped.
  void publish(nlohmann::json event);
  size_t subscriber_count();
  // A FUSE mount with the kernel's writeback cache (-o writeback) names the
  // inodes whose size the kernel keeps itself: their data and size may then
  // change only through the mount (EBUSY here), or the kernel would write its
  // stale size and pages over the change.
  void set_kernel_owns_size(std::function<bool(uint64_t)> fn);
  bool kernel_owns_size(uint64_t ino);

 private:
  std::mutex size_owner_mutex_;
  std::function<bool(uint64_t)> kernel_owns_size_;  // guarded by size_owner_mutex_
  Server(Filesystem& fs, Device& device, ServerOptions options, int listen_fd)
      : fs_(fs), device_(device), options_(std::move(options)), listen_fd_(listen_fd) {}
  nlohmann::json event_json(const FsEvent& event);
  void serve(const std::shared_ptr<Client>& client);
  // Makes `connection` the follow channel of the client that was given
  // `token`, sending `reply` on it first (so no push can come before it).
  bool attach_follower(uint64_t token, Client& from, uint64_t request_id);
  // Makes `from` the release channel of the client with `token` (same pid and uid).
  bool attach_releaser(uint64_t token, Client& from);
  // The client's mappings (the server's copies) are revoked in it and dropped.
  void drop_leases(Client& client);
  bool settle_locked(Client& client);        // REQUIRES: client.follow_mutex held
  void kill_locked(Client& client, Op op);   // REQUIRES: client.follow_mutex held

  Filesystem& fs_;
  Device& device_;
  ServerOptions options_;
  int listen_fd_;
  std::mutex log_mutex_;
  std::mutex clients_mutex_;
  std::vector<std::shared_ptr<Client>> clients_;
  std::vector<std::thread> threads_;
  std::mutex subscribers_mutex_;
  std::vector<int> subscribers_;  // guarded by subscribers_mutex_
};

// Who sent a request, as the server sees it.
struct Peer {
  uint32_t uid = 0, gid = 0;
  int32_t pid = 0;
  std::vector<uint32_t> groups;  // supplementary
};

// A client's state, held by the server for its connection.
struct Server::Client {
  int fd = -1;  // written under Server::clients_mutex_ once the client is listed
  Peer peer;
  int pidfd = -1;                         // to kill it, and to know when it is dead
  uint64_t token = 0;                     // names it on its follow connection
  bool privileged = false;                // root, or the server's own user
  std::map<uint64_t, uint64_t> retained;  // inode -> Retain count, released when the client goes
  std::set<uint64_t> tmpfiles;            // made unnamed by this client: the ones it may link
  // Inodes this client reached through a path it was allowed to walk: the only
  // ones it may name by number (the kernel's by-handle opens need a capability).
  std::set<uint64_t> reached;
  std::atomic<bool> done{false};
  bool sent_fd = false, sent_writable_fd = false;  // the device descriptor, once per access

  std::mutex follow_mutex;  // one push at a time on the follow channel
  int follow_fd = -1;       // guarded by follow_mutex
  bool gone = false;        // guarded by follow_mutex: dead or killed; nothing more is sent
  uint64_t next_push = 1;   // guarded by follow_mutex
  uint64_t pending_ack = 0; // guarded by follow_mutex: the push whose acknowledgement is owed (0: none)
  Op pending_op = Op::PagesChanged;

  std::mutex leases_mutex;
  std::map<uint64_t, Mapping> leases;  // guarded by leases_mutex: lease id -> the server's copy
  struct PinnedRange {
    Pin pin;
    uint64_t bytes = 0;  // as asked
  };
  std::map<uint64_t, PinnedRange> pins;  // guarded by leases_mutex: pin id -> the server's pin
  uint64_t pinned_bytes = 0;             // guarded by leases_mutex: the sum of their bytes
  uint64_t next_pin = 1;                 // guarded by leases_mutex
  // Set on a release channel (ReleasePins): the client whose pins its Unpin
  // requests give back. Read and written by this connection's thread only.
  std::weak_ptr<Client> releases_for;
};

// One reply: the frame, and a descriptor to pass with it (-1: none; the caller
// closes it after sending).
struct Reply {
  std::vector<std::byte> frame;
  int fd = -1;
};

// Answers one request from `client` as the server does: the reply frame, or
// nullopt when the message is malformed (the server then drops the client).
// `server` (may be null) gets the log lines. Used by the server loop and by
// the fuzzer (tests/fuzz/fuzz_protocol.cc).
std::optional<Reply> answer(Filesystem& fs, Device& device, Server::Client& client, Server* server,
                            const Header& header, std::span<const std::byte> body);
// The same, for a client the server shares with its mirrors (`shared`), which
// may then map (requests.cc).
std::optional<Reply> answer_as(Filesystem& fs, Device& device, Server::Client& client,
                               std::weak_ptr<Server::Client> shared, Server* server, const Header& header,
                               std::span<const std::byte> body);

}  // namespace poise::serve
