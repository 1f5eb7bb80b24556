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
// in messages of up to 1 MiB. Not yet through a server: map() and pin()
// (ENOTSUP); unmount() and shutdown() only disconnect this client (the
// server's filesystem stays mounted). When the server goes away every later
// call fails with ESHUTDOWN.
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
  // The serving process's pid.
  virtual uint32_t server_pid() const = 0;
  // What the device reports as bad, and its description (`poise badblocks`).
  virtual Result<std::vector<BadRange>> bad_ranges(std::string* device_description) = 0;
  // Poisons (an emulated device's) memory and tells the running filesystem at
  // once, as the kernel's memory-failure path would; or clears the poison.
  // For root and the server's own user.
  virtual Result<void> inject_poison(uint64_t offset, uint64_t length) = 0;
  virtual Result<void> clear_poison(uint64_t offset, uint64_t length) = 0;
};

// Connects to the server listening on `socket_path`. ENOENT/ECONNREFUSED when
// nobody serves there; EPROTONOSUPPORT when the server speaks another version.
Result<std::unique_ptr<RemoteFilesystem>> connect(const std::string& socket_path);

// Where `poise serve IMAGE` listens unless told otherwise: IMAGE.sock.
std::string default_socket_path(const std::string& image);

}  // namespace poise
