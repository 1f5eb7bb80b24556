// A client of `poise serve`: the filesystem another process serves, behind the
// same poise::Filesystem API as an in-process mount, so code written against
// one works against the other (docs/protocol.md).
//
//   auto fs = poise::connect("pool.img.sock");   // or default_socket_path("pool.img")
//   auto f = (*fs)->open("/db/log", poise::OpenFlags::Create);
//
// Every call is one request to the server, answered with the same results and
// errno values the in-process call gives, plus EACCES/EPERM where the caller's
// uid and gid (the server checks them as the kernel would) are not enough.
// Files it creates belong to the calling process's uid and gid (the `owner`
// argument of create/mkdir is ignored). File data travels through the socket
// in messages of up to 1 MiB. map() gives a direct mapping of the device
// memory, kept safe by a lease the server recalls before it changes the pages
// (docs/protocol.md); it is for root and the server's own user, since the
// device descriptor it needs reaches the whole device. pin() is for them too:
// the server holds the pin while this client reads the pinned pieces straight
// from device memory; a write by this same client to a file it has pinned is
// refused (EDEADLK). unmount() and shutdown() only disconnect this client (the
// server's filesystem stays mounted); a pin held then keeps what it showed. When the server goes away every mapping
// is revoked and every later call fails with ESHUTDOWN. MapOwner::on_event is
// called from a poise thread of this process.
//
// Thread-safety: any number of threads; their requests take turns on the one
// connection.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "poise/filesystem.h"

namespace poise {

class RemoteFilesystem : public Filesystem {
 public:
  // The serving process's pid, and its uid as the kernel saw it at connect
  // (SO_PEERCRED): check it before trusting a socket others could have bound.
  virtual uint32_t server_pid() const = 0;
  virtual uint32_t server_uid() const = 0;
  // info() and check() with the request's own error (EACCES, ESHUTDOWN)
  // instead of an empty or failed report.
  virtual Result<FsInfo> fs_info() = 0;
  virtual Result<CheckReport> check_report() = 0;
  // What the device reports as bad, and its description (`poise badblocks`).
  virtual Result<std::vector<BadRange>> bad_ranges(std::string* device_description) = 0;
  // Poisons (an emulated device's) memory and tells the running filesystem at
  // once, as the kernel's memory-failure path would; or clears the poison.
  // For root and the server's own user.
  virtual Result<void> inject_poison(uint64_t offset, uint64_t length) = 0;
  virtual Result<void> clear_poison(uint64_t offset, uint64_t length) = 0;
  // Device removal, as the seed threads' pre-remove: step 0 freezes, syncs and
  // revokes every mapping in every process (owners told); then 1 cancels (thaw)
  // or 2 removes (waiting writers fail, every later access fails). Returns the
  // server's account of the new state. For root and the server's own user.
  virtual Result<std::string> offline(uint8_t step) = 0;
  // The server's event stream (memory failures with every owner's path and
  // range, recalls, clients killed, removal steps, the server stopping), one
  // JSON object per call, on a connection of its own, until on_event returns
  // false or the server stops (its last event is "server_stopped"): then
  // success. ECONNRESET when the stream ends without that event (the server
  // was killed, or the connection broke). For root and the server's own user.
  virtual Result<void> watch_events(const std::function<bool(const std::string& json)>& on_event) = 0;
};

// Connects to the server listening on `socket_path`. ENOENT/ECONNREFUSED when
// nobody serves there; EPROTONOSUPPORT when the server speaks another version.
Result<std::unique_ptr<RemoteFilesystem>> connect(const std::string& socket_path);

// Where `poise serve IMAGE` listens unless told otherwise: IMAGE.sock.
std::string default_socket_path(const std::string& image);

}  // namespace poise
