// The client's side connections (serve/client_side.h).
#include "serve/client_side.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace poise::serve {

Result<int> connect_socket(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) return fail(ENAMETOOLONG, path + ": not a usable socket path");
  std::memcpy(addr.sun_path, path.data(), path.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(errno, std::string("socket: ") + std::strerror(errno));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int e = errno;
    ::close(fd);
    if (e == EACCES) {
      return fail(e, path + ": permission denied by the socket's mode (its owner can share it with "
                            "poise serve --socket-mode and --socket-group)");
    }
    return fail(e, path + ": no poise server answers: " + std::strerror(e));
  }
  return fd;
}

Result<int> open_side_connection(const std::string& socket_path, Op op, uint64_t token, const std::string& what) {
  int fd = TRY(connect_socket(socket_path));
  Encoder attach(op, 1);
  attach.u64(token);
  Header h;
  std::vector<std::byte> body;
  int32_t status = -1;
  if (!send_frame(fd, attach.finish()) || !receive_frame(fd, &h, &body) || h.op != op || h.id != 1 ||
      !Decoder(body).i32(&status) || status != 0) {
    ::close(fd);
    return fail(EPROTO, "the poise server refused " + what);
  }
  return fd;
}

}  // namespace poise::serve
