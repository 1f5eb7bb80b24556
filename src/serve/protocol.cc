#include "serve/protocol.h"

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

namespace poise::serve {

const char* op_name(Op op) {
  switch (op) {
    case Op::Hello: return "hello";
    case Op::Lookup: return "lookup";
    case Op::Create: return "create";
    case Op::Mkdir: return "mkdir";
    case Op::Unlink: return "unlink";
    case Op::Rmdir: return "rmdir";
    case Op::Rename: return "rename";
    case Op::Link: return "link";
    case Op::Readdir: return "readdir";
    case Op::StatPath: return "stat";
    case Op::StatIno: return "stat-inode";
    case Op::PathOf: return "path-of";
    case Op::Read: return "read";
    case Op::Write: return "write";
    case Op::Truncate: return "truncate";
    case Op::Fallocate: return "fallocate";
    case Op::PunchHole: return "punch-hole";
    case Op::Fsync: return "fsync";
    case Op::Sync: return "sync";
    case Op::Reflink: return "reflink";
    case Op::CloneRange: return "clone-range";
    case Op::Fsmap: return "fsmap";
    case Op::Info: return "info";
    case Op::Check: return "check";
    case Op::MountWarnings: return "mount-warnings";
    case Op::Checkpoint: return "checkpoint";
    case Op::Retain: return "retain";
    case Op::Release: return "release";
    case Op::BadRanges: return "badblocks";
    case Op::InjectPoison: return "inject-poison";
    case Op::ClearPoison: return "clear-poison";
    case Op::DeviceFd: return "device-fd";
    case Op::Map: return "map";
    case Op::Unmap: return "unmap";
    case Op::Fault: return "fault";
    case Op::Follow: return "follow";
    case Op::PagesChanged: return "pages-changed";
    case Op::MappingDied: return "mapping-died";
    case Op::Notice: return "notice";
    case Op::Offline: return "offline";
    case Op::Subscribe: return "subscribe";
    case Op::Event: return "event";
    case Op::Symlink: return "symlink";
    case Op::Readlink: return "readlink";
    case Op::SetXattr: return "setxattr";
    case Op::GetXattr: return "getxattr";
    case Op::ListXattrs: return "listxattr";
    case Op::RemoveXattr: return "removexattr";
    case Op::Mknod: return "mknod";
    case Op::ReportFailure: return "report-failure";
    case Op::Pin: return "pin";
    case Op::Unpin: return "unpin";
    case Op::ReleasePins: return "release-pins";
    case Op::PinsReleased: return "pins-released";
    case Op::ReaddirAt: return "readdir-at";
    case Op::UnlinkAt: return "unlink-at";
    case Op::RmdirAt: return "rmdir-at";
    case Op::OpenTmpfile: return "open-tmpfile";
    case Op::LinkTmpfile: return "link-tmpfile";
  }
  return "unknown";
}

// --- encoding -----------------------------------------------------------------

Encoder::Encoder(Op op, uint64_t id) {
  buf_.resize(kHeaderBytes);
  uint16_t o = static_cast<uint16_t>(op);
  for (int i = 0; i < 2; ++i) buf_[4 + i] = std::byte(o >> (8 * i));
  for (int i = 0; i < 8; ++i) buf_[8 + i] = std::byte(id >> (8 * i));
}

void Encoder::set_id(uint64_t id) {
  for (int i = 0; i < 8; ++i) buf_[8 + i] = std::byte(id >> (8 * i));
}

void Encoder::put(const void* p, size_t n) {
  const auto* b = static_cast<const std::byte*>(p);
  buf_.insert(buf_.end(), b, b + n);
}

void Encoder::u16(uint16_t v) {
  for (int i = 0; i < 2; ++i) buf_.push_back(std::byte(v >> (8 * i)));
}
void Encoder::u32(uint32_t v) {
  for (int i = 0; i < 4; ++i) buf_.push_back(std::byte(v >> (8 * i)));
}
void Encoder::u64(uint64_t v) {
  for (int i = 0; i < 8; ++i) buf_.push_back(std::byte(v >> (8 * i)));
}

void Encoder::bytes(std::span<const std::byte> b) {
  u32(static_cast<uint32_t>(b.size()));
  put(b.data(), b.size());
}

void Encoder::stat(const Stat& st) {
  u64(st.ino.value());
  u8(static_cast<uint8_t>(st.type));  // 0 file, 1 directory, 2 symbolic link, 3 FIFO, 4 char, 5 block, 6 socket
  u32(st.mode);
  u32(st.nlink);
  u32(st.uid);
  u32(st.gid);
  u64(st.size_bytes);
  u64(st.blocks);
  i64(st.atime_ns);
  i64(st.mtime_ns);
  i64(st.ctime_ns);
  u64(st.rdev);
}

void Encoder::fsmap_record(const FsmapRecord& r) {
  u64(r.device_offset_bytes);
  u64(r.length_bytes);
  u8(static_cast<uint8_t>(r.owner));
  u8(static_cast<uint8_t>(r.metadata_kind));
  u64(r.ino.value());
  u64(r.file_offset_bytes);
  u32(r.refcount);
}

void Encoder::strings(const std::vector<std::string>& list) {
  u32(static_cast<uint32_t>(list.size()));
  for (const auto& s : list) string(s);
}

const std::vector<std::byte>& Encoder::finish() {
  const size_t body = buf_.size() - kHeaderBytes;
  POISE_ASSERT(body <= kBodyBytesMax);
  for (int i = 0; i < 4; ++i) buf_[i] = std::byte(body >> (8 * i));
  return buf_;
}

// --- decoding -----------------------------------------------------------------

bool Decoder::get(void* p, size_t n) {
  if (!ok_ || rest_.size() < n) {
    ok_ = false;
    return false;
  }
  std::memcpy(p, rest_.data(), n);
  rest_ = rest_.subspan(n);
  return true;
}

namespace {
template <class T>
bool get_le(Decoder* d, bool (Decoder::*raw)(uint8_t*), T* v) {
  uint8_t b[sizeof(T)];
  for (auto& x : b) {
    if (!(d->*raw)(&x)) return false;
  }
  T out = 0;
  for (size_t i = 0; i < sizeof(T); ++i) out |= T(b[i]) << (8 * i);
  *v = out;
  return true;
}
}  // namespace

bool Decoder::u16(uint16_t* v) { return get_le(this, &Decoder::u8, v); }
bool Decoder::u32(uint32_t* v) { return get_le(this, &Decoder::u8, v); }
bool Decoder::u64(uint64_t* v) { return get_le(this, &Decoder::u8, v); }
bool Decoder::i64(int64_t* v) {
  uint64_t u = 0;
  if (!u64(&u)) return false;
  *v = static_cast<int64_t>(u);
  return true;
}
bool Decoder::i32(int32_t* v) {
  uint32_t u = 0;
  if (!u32(&u)) return false;
  *v = static_cast<int32_t>(u);
  return true;
}

bool Decoder::bytes(std::span<const std::byte>* out, uint32_t max) {
  uint32_t n = 0;
  if (!u32(&n)) return false;
  if (n > max || n > rest_.size()) {
    ok_ = false;
    return false;
  }
  *out = rest_.first(n);
  rest_ = rest_.subspan(n);
  return true;
}

bool Decoder::string(std::string* out, uint32_t max) {
  std::span<const std::byte> b;
  if (!bytes(&b, max)) return false;
  out->assign(reinterpret_cast<const char*>(b.data()), b.size());
  return true;
}

bool Decoder::stat(Stat* st) {
  uint64_t ino = 0;
  uint8_t type = 0;
  bool read = u64(&ino) && u8(&type) && u32(&st->mode) && u32(&st->nlink) && u32(&st->uid) && u32(&st->gid) &&
              u64(&st->size_bytes) && u64(&st->blocks) && i64(&st->atime_ns) && i64(&st->mtime_ns) &&
              i64(&st->ctime_ns) && u64(&st->rdev);
  if (!read || type > static_cast<uint8_t>(FileType::Socket)) return ok_ = false;
  st->ino = InodeNumber(ino);
  st->type = static_cast<FileType>(type);
  return true;
}

bool Decoder::fsmap_record(FsmapRecord* r) {
  uint8_t owner = 0, kind = 0;
  uint64_t ino = 0;
  bool read = u64(&r->device_offset_bytes) && u64(&r->length_bytes) && u8(&owner) && u8(&kind) && u64(&ino) &&
              u64(&r->file_offset_bytes) && u32(&r->refcount);
  if (!read || owner > static_cast<uint8_t>(OwnerKind::Bad) || kind > static_cast<uint8_t>(MetadataKind::CarriedJournal)) {
    return ok_ = false;
  }
  r->owner = static_cast<OwnerKind>(owner);
  r->metadata_kind = static_cast<MetadataKind>(kind);
  r->ino = InodeNumber(ino);
  return true;
}

bool Decoder::strings(std::vector<std::string>* list) {
  uint32_t n = 0;
  if (!u32(&n)) return false;
  // Each string takes at least its 4-byte length: a count the body cannot hold is malformed.
  if (n > rest_.size() / 4) return ok_ = false;
  list->resize(n);
  for (auto& s : *list) {
    if (!string(&s, kBodyBytesMax)) return false;
  }
  return true;
}

std::optional<Header> decode_header(std::span<const std::byte, kHeaderBytes> raw) {
  auto le = [&](size_t at, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= uint64_t(raw[at + i]) << (8 * i);
    return v;
  };
  Header h;
  h.body_bytes = static_cast<uint32_t>(le(0, 4));
  uint64_t op = le(4, 2);
  if (op == 0 || op > kOpMax || le(6, 2) != 0 || h.body_bytes > kBodyBytesMax) return std::nullopt;
  h.op = static_cast<Op>(op);
  h.id = le(8, 8);
  return h;
}

// --- the socket ---------------------------------------------------------------

bool send_frame(int fd, std::span<const std::byte> frame, int pass_fd) {
  while (!frame.empty()) {
    iovec iov{const_cast<std::byte*>(frame.data()), frame.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    if (pass_fd >= 0) {  // with the first byte only
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    pass_fd = -1;
    frame = frame.subspan(static_cast<size_t>(n));
  }
  return true;
}

namespace {
// Reads n bytes; a descriptor that arrives with them goes to *received_fd (one
// at most: any other is closed, so a peer cannot fill our descriptor table).
bool receive_all(int fd, std::byte* p, size_t n, int* received_fd) {
  while (n > 0) {
    iovec iov{p, n};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))];
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t got = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int passed;
        std::memcpy(&passed, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        if (received_fd != nullptr && *received_fd < 0) {
          *received_fd = passed;
        } else {
          ::close(passed);
        }
      }
    }
    p += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}
}  // namespace

bool receive_frame(int fd, Header* header, std::vector<std::byte>* body, int* received_fd) {
  std::array<std::byte, kHeaderBytes> raw;
  if (!receive_all(fd, raw.data(), raw.size(), received_fd)) return false;
  auto h = decode_header(raw);
  if (!h) return false;
  *header = *h;
  body->resize(h->body_bytes);
  return receive_all(fd, body->data(), body->size(), received_fd);
}

}  // namespace poise::serve
