// The messages between `poise serve` and its clients (docs/protocol.md): one
// fixed little-endian layout, defined here once for both sides.
//
// A frame is a 16-byte header — u32 body length, u16 operation, u16 zero,
// u64 request id — then the body. Requests carry the operation's arguments;
// a reply echoes the operation and id, then an i32 status (0 or an errno
// value), then either the error message or the operation's results. Every
// field is read through Decoder, which checks each length against what is
// left: a truncated, oversized or malformed message is an error for that
// client, never a read past the buffer.
//
// Thread-safety: plain values; each connection is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "poise/filesystem.h"

namespace poise::serve {

// 2: file type 2 (symbolic link), Symlink, Readlink. 3: extended attributes.
// 4: file types 3..6 (special files), a stat's device number, Mknod,
// ReportFailure. 5: Checkpoint's mode; metadata kind 9 (checkpoint delta).
// 6: Pin, Unpin, ReleasePins, PinsReleased, ReaddirAt, UnlinkAt, RmdirAt.
// 7: OpenTmpfile, LinkTmpfile.
inline constexpr uint32_t kProtocolVersion = 8;
inline constexpr size_t kHeaderBytes = 16;
// The largest body either side accepts: 1 MiB of file data plus room for fields.
inline constexpr uint32_t kBodyBytesMax = (1u << 20) + 4096;
// The most file bytes one read or write message carries.
inline constexpr uint32_t kDataBytesMax = 1u << 20;
// A path or name is at most this long (PATH_MAX).
inline constexpr uint32_t kPathBytesMax = 4096;

enum class Op : uint16_t {
  Hello = 1,  // u32 version -> u32 version, u32 server pid, string image
  Lookup = 2,
  Create = 3,
  Mkdir = 4,
  Unlink = 5,
  Rmdir = 6,
  Rename = 7,
  Link = 8,
  Readdir = 9,   // path, u64 first entry -> u32 n, n entries, u8 more
  StatPath = 10,
  StatIno = 11,
  PathOf = 12,
  Read = 13,
  Write = 14,
  Truncate = 15,
  Fallocate = 16,
  PunchHole = 17,
  Fsync = 18,
  Sync = 19,
  Reflink = 20,
  CloneRange = 21,
  Fsmap = 22,  // u64 offset, u64 length -> u32 n, n records, u64 next offset (0: done)
  Info = 23,
  Check = 24,
  MountWarnings = 25,
  Checkpoint = 26,  // u8 mode (CheckpointMode; protocol 5)
  Retain = 27,  // an open File on the client keeps the inode alive
  Release = 28,
  BadRanges = 29,    // the device's own bad-range list
  InjectPoison = 30, // u64 offset, u64 length (emulated devices; root only)
  ClearPoison = 31,
  // Direct mappings across processes (layout leases).
  DeviceFd = 32,  // u8 writable -> u8 writable; the device descriptor rides along (SCM_RIGHTS)
  Map = 33,       // u64 ino, u64 offset, u64 length, u8 writable, u64 client mapping id -> u64 lease
  Unmap = 34,     // u64 lease
  Fault = 35,     // u64 lease, u64 page, u8 is_write: the server takes the fault on its copy
  Follow = 36,    // u64 token: this connection becomes the sender's follow channel
  // Server to client, on the follow channel; the client answers each with an
  // empty frame of the same op and id (its acknowledgement).
  PagesChanged = 37,  // u64 client mapping id, u64 first, u64 count, u8 state, u64 device block
  MappingDied = 38,   // u64 client mapping id, u8 cause
  Notice = 39,        // u64 client mapping id, u64 file offset, u64 length, u8 cause, u8 consumed
  // Device removal (root and the server's own user): u8 step -> string state.
  Offline = 40,
  // This connection becomes an event stream (root and the server's own user).
  Subscribe = 41,
  Event = 42,  // server to subscriber: string, one JSON object
  Symlink = 43,   // string target, string link path -> u64 inode
  Readlink = 44,  // u64 inode -> string target
  // Extended attributes (protocol 3).
  SetXattr = 45,     // u64 inode, string name, bytes value, u8 mode (XattrMode)
  GetXattr = 46,     // u64 inode, string name -> bytes value
  ListXattrs = 47,   // u64 inode -> strings names
  RemoveXattr = 48,  // u64 inode, string name
  // Special files (protocol 4): string path, u8 file type (3..6), u32 mode, u64 device number -> u64 inode
  Mknod = 49,
  // A machine check in a client's mapping (protocol 4): u64 device offset, u64
  // length -> u8 confirmed (1: the server recorded it; 0: it could not confirm
  // an unprivileged client's report by reading the memory itself).
  ReportFailure = 50,
  // A pin through the server (protocol 6): u64 inode, u64 offset, u64 length
  // -> u64 pin, u64 device bytes, u32 n, n x (u64 length, u64 device offset or
  // kPinZeros for a hole). The client reads the pieces through its read-only
  // device descriptor; the server holds the pin until unpin or the client goes.
  Pin = 51,
  Unpin = 52,  // u64 pin
  // u64 token: this connection gives back the pins of the client `hello` gave
  // the token to (the same process): an unpin never waits behind that
  // client's own requests.
  ReleasePins = 53,
  // Server to client on the follow channel: every pin of this client is let go
  // once this is acknowledged (the client keeps private copies of them).
  PinsReleased = 54,
  // By directory inode (protocol 6), for trees deeper than a path can name:
  ReaddirAt = 55,  // u64 dir, u64 first entry -> as Readdir
  UnlinkAt = 56,   // u64 dir, string name
  RmdirAt = 57,    // u64 dir, string name
  // Unnamed files (protocol 7), as O_TMPFILE: string dir, u32 mode -> u64 inode,
  // open for this client (Release closes it; unlinked, it is then freed).
  OpenTmpfile = 58,
  LinkTmpfile = 59,  // u64 inode (made by this client's OpenTmpfile), string path, u8 replace
};
inline constexpr uint16_t kOpMax = 59;
// The most bytes one pin through a server covers.
inline constexpr uint64_t kPinBytesMax = 1ull << 30;
// A pin piece that is a hole (zeros), not device memory.
inline constexpr uint64_t kPinZeros = UINT64_MAX;
// The most pieces one pin may have (its answer fits one message).
inline constexpr uint32_t kPinPiecesMax = 60000;

// The steps of Op::Offline.
enum class OfflineStep : uint8_t { PreRemove = 0, Cancel = 1, Remove = 2 };
const char* op_name(Op op);

struct Header {
  uint32_t body_bytes = 0;
  Op op = Op::Hello;
  uint64_t id = 0;
};

// Appends fields to a frame; finish() fills in the header.
class Encoder {
 public:
  Encoder(Op op, uint64_t id);
  void u8(uint8_t v) { put(&v, 1); }
  void u16(uint16_t v);
  void u32(uint32_t v);
  void u64(uint64_t v);
  void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
  void i32(int32_t v) { u32(static_cast<uint32_t>(v)); }
  // u32 length, then the bytes.
  void bytes(std::span<const std::byte> b);
  void string(std::string_view s) { bytes(std::as_bytes(std::span(s.data(), s.size()))); }
  void stat(const Stat& st);
  void fsmap_record(const FsmapRecord& r);
  void strings(const std::vector<std::string>& list);
  void set_id(uint64_t id);
  // Bytes as they are (another encoder's body, say).
  void raw(std::span<const std::byte> b) { put(b.data(), b.size()); }
  // What has been added after the header so far.
  std::span<const std::byte> body() const { return std::span(buf_).subspan(kHeaderBytes); }
  // The frame, header included. REQUIRES: the body is at most kBodyBytesMax.
  const std::vector<std::byte>& finish();

 private:
  void put(const void* p, size_t n);
  std::vector<std::byte> buf_;
};

// Reads fields in order; after the first field that does not fit, every read
// fails and ok() is false.
class Decoder {
 public:
  explicit Decoder(std::span<const std::byte> body) : rest_(body) {}
  bool u8(uint8_t* v) { return get(v, 1); }
  bool u16(uint16_t* v);
  bool u32(uint32_t* v);
  bool u64(uint64_t* v);
  bool i64(int64_t* v);
  bool i32(int32_t* v);
  // A length-prefixed field of at most `max` bytes (a view into the body).
  bool bytes(std::span<const std::byte>* out, uint32_t max);
  // A string (a path, a name) of any length the body holds: the operation
  // answers ENAMETOOLONG for one that is too long, as the kernel does, rather
  // than the message being taken as malformed.
  bool string(std::string* out, uint32_t max = kBodyBytesMax);
  bool stat(Stat* st);
  bool fsmap_record(FsmapRecord* r);
  bool strings(std::vector<std::string>* list);
  bool ok() const { return ok_; }
  // Whether every byte was read: a well-formed message has nothing left over.
  bool done() const { return ok_ && rest_.empty(); }

 private:
  bool get(void* p, size_t n);
  std::span<const std::byte> rest_;
  bool ok_ = true;
};

// Parses a header; nullopt when the operation is unknown, the reserved field is
// not zero or the body is larger than kBodyBytesMax.
std::optional<Header> decode_header(std::span<const std::byte, kHeaderBytes> raw);

// Sends a whole frame (with `pass_fd` attached when it is not -1); reads
// exactly one frame (header and body), taking a descriptor that came with it
// into *received_fd (closed when received_fd is null). False when the peer
// went away or sent a bad header.
bool send_frame(int fd, std::span<const std::byte> frame, int pass_fd = -1);
bool receive_frame(int fd, Header* header, std::vector<std::byte>* body, int* received_fd = nullptr);

}  // namespace poise::serve
