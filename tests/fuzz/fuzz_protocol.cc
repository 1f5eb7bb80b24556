// The server's decoder and dispatcher: the input is a stream of request frames
// (16-byte header, body), answered one after another by `answer()` against a
// small mounted filesystem, as an unprivileged client (uid 1000) and then as
// root, exactly as the server answers a socket. A malformed frame ends the
// stream, as it ends a connection. Errors are fine; crashes, hangs, leaks and
// reads past a message are not.
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "device/memory_device.h"
#include "poise/filesystem.h"
#include "serve/protocol.h"
#include "serve/server.h"

namespace {

using namespace poise;

constexpr uint64_t kBytes = 16ull << 20;

const std::vector<std::byte>& base_image() {
  static const std::vector<std::byte> image = [] {
    MemoryDevice device(kBytes);
    POISE_ASSERT(Filesystem::format(device).has_value());
    auto fs = *Filesystem::mount(device);
    POISE_ASSERT(fs->mkdir("/d", 0700).has_value());
    auto a = *fs->create("/d/a");
    std::string text(9000, 'a');
    POISE_ASSERT(fs->write(a, 0, {reinterpret_cast<const std::byte*>(text.data()), text.size()}).has_value());
    POISE_ASSERT(fs->create("/pub", 0666).has_value());
    POISE_ASSERT(fs->unmount().has_value());
    return std::vector<std::byte>(device.data(), device.data() + kBytes);
  }();
  return image;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  MemoryDevice device(kBytes);
  std::memcpy(device.data(), base_image().data(), kBytes);
  auto fs = Filesystem::mount(device);
  if (!fs.has_value()) return 0;
  serve::Server::Client clients[2];
  clients[0].peer.uid = clients[0].peer.gid = 1000;
  clients[1].privileged = true;
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  for (int turn = 0; in.size() >= serve::kHeaderBytes && turn < 64; ++turn) {
    auto header = serve::decode_header(in.first<serve::kHeaderBytes>());
    if (!header) break;
    in = in.subspan(serve::kHeaderBytes);
    if (header->body_bytes > in.size()) break;  // a cut message: the connection ends
    auto body = in.first(header->body_bytes);
    in = in.subspan(header->body_bytes);
    serve::Server::Client& client = clients[turn % 2];
    auto reply = serve::answer(**fs, device, client, nullptr, *header, body);
    if (!reply) break;
    if (reply->fd >= 0) ::close(reply->fd);
    // Every reply is itself a well-formed frame.
    auto back = serve::decode_header(std::span<const std::byte, serve::kHeaderBytes>(reply->frame.data(), serve::kHeaderBytes));
    POISE_ASSERT(back.has_value() && back->body_bytes + serve::kHeaderBytes == reply->frame.size());
  }
  for (auto& c : clients) {
    for (const auto& [ino, count] : c.retained) {
      for (uint64_t i = 0; i < count; ++i) (*fs)->release(InodeNumber(ino));
    }
  }
  (void)(*fs)->unmount();
  return 0;
}
