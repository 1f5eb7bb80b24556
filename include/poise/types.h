// Value types shared by the public API: strong integer types for the distinct
// address spaces (device blocks, file blocks, inode numbers), file attributes,
// directory entries, reverse-map (fsmap) records and filesystem totals.
//
// Mixing address spaces must not compile: a DevBlock is not a FileBlock, and
// neither converts silently to or from a plain integer.
//
// Thread-safety: plain values.
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <vector>

namespace poise {

inline constexpr uint32_t kBlockSize = 4096;
inline constexpr uint32_t kBlockShift = 12;
inline constexpr uint64_t kHugeBlocks = 512;  // 2 MiB, preferred extent alignment

template <class Tag>
class StrongU64 {
 public:
  constexpr StrongU64() = default;
  constexpr explicit StrongU64(uint64_t v) : v_(v) {}
  constexpr uint64_t value() const { return v_; }
  constexpr auto operator<=>(const StrongU64&) const = default;
  // Moving within one address space by a count keeps the type.
  constexpr StrongU64 operator+(uint64_t n) const { return StrongU64(v_ + n); }
  constexpr StrongU64 operator-(uint64_t n) const { return StrongU64(v_ - n); }
  // The distance between two positions of one space is a plain count.
  constexpr uint64_t operator-(StrongU64 o) const { return v_ - o.v_; }

 private:
  uint64_t v_ = 0;
};

using DevBlock = StrongU64<struct DevBlockTag>;    // block index on the device
using FileBlock = StrongU64<struct FileBlockTag>;  // block index within a file
using InodeNumber = StrongU64<struct InodeTag>;

inline constexpr InodeNumber kRootInode{1};

// A symbolic link holds its target (1..4095 bytes) as its data; poise's own
// path lookups do not follow links (a FUSE mount's kernel does). The special
// files (a FIFO, a character or block device node, a Unix socket) hold no
// data: the kernel gives them their meaning when a program opens one through
// the FUSE mount; poise's own I/O calls refuse them (EINVAL).
enum class FileType : uint8_t { Regular, Directory, Symlink, Fifo, CharDevice, BlockDevice, Socket };
inline constexpr bool is_special(FileType t) { return t >= FileType::Fifo; }

struct Stat {
  InodeNumber ino;
  FileType type = FileType::Regular;
  uint32_t mode = 0;  // permission bits only (07777)
  uint32_t nlink = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t size_bytes = 0;
  uint64_t blocks = 0;  // 4 KiB blocks mapped (shared ones count for each sharer)
  int64_t atime_ns = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  uint64_t rdev = 0;  // a device node's number (as the kernel's dev_t: makedev(major, minor)); else 0
};

// Who a new file or directory belongs to (a server creates files for its
// clients): without it, the owner the filesystem was mounted with.
// Who makes a new inode: it belongs to uid and gid. `umask` is the maker's
// umask, applied to the mode asked for unless the directory has a default ACL
// (which then decides instead, as on a local filesystem); 0 leaves the mode.
struct Credentials {
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t umask = 0;
};

struct DirEntry {
  std::string name;
  InodeNumber ino;
  FileType type = FileType::Regular;
};

// Who owns a stretch of device blocks.
enum class OwnerKind : uint8_t { File, Metadata, Free, Bad };

// Named metadata structures, as reported by fsmap.
enum class MetadataKind : uint8_t {
  Superblock = 1,
  Journal = 2,
  CheckpointRoot = 3,
  InodeTable = 4,
  Directory = 5,
  ExtentMap = 6,
  BadRangeList = 7,
  RefcountList = 8,
  CheckpointDelta = 9,  // an incremental checkpoint's journals
  PreviousCheckpoint = 10,  // the checkpoint before the current one, kept for a fallback
  CarriedJournal = 11,      // the journal written between the two, carried for that fallback
};

// What Filesystem::checkpoint() writes.
enum class CheckpointMode : uint8_t { Auto = 0, Full = 1 };

const char* to_string(OwnerKind kind);
const char* to_string(MetadataKind kind);

// One owner of one stretch of the device, like a GETFSMAP record. A block shared
// by three files appears in three records.
struct FsmapRecord {
  uint64_t device_offset_bytes = 0;
  uint64_t length_bytes = 0;
  OwnerKind owner = OwnerKind::Free;
  MetadataKind metadata_kind = MetadataKind::Superblock;  // for Metadata
  InodeNumber ino;                                        // for File
  uint64_t file_offset_bytes = 0;                         // for File
  uint32_t refcount = 0;  // files (or metadata) referencing this stretch; a bad marker is none
  bool shared() const { return refcount > 1; }
};

struct FsInfo {
  uint64_t size_bytes = 0;
  uint32_t block_size = kBlockSize;
  uint64_t used_bytes = 0;
  uint64_t free_bytes = 0;
  uint64_t files = 0;        // inodes of every type, the root included
  uint64_t journal_bytes = 0;
  uint64_t checkpoint_generation = 0;
  // The checkpoint kept one more generation as a fallback (0: none kept), and
  // the bytes it and the journal carried beside it hold (counted as free).
  uint64_t previous_generation = 0;
  uint64_t previous_bytes = 0;
};

}  // namespace poise
