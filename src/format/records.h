// Host-side forms of what the checkpoint sections and journal records hold, and
// their encoders and verifying decoders. A decoder checks every field it can
// (type bits, flags, ranges, name length) and names the check that failed.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "format/ondisk.h"
#include "poise/result.h"

namespace poise::format {

struct InodeCore {
  uint64_t ino = 0;
  uint32_t mode = 0;  // POSIX S_IFREG/S_IFDIR/S_IFLNK plus permission bits
  uint32_t nlink = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t size_bytes = 0;
  int64_t atime_ns = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  bool operator==(const InodeCore&) const = default;
};

struct ExtentRecord {
  uint64_t ino = 0;
  uint64_t file_block = 0;
  uint64_t dev_block = 0;
  uint32_t block_count = 0;
  uint32_t flags = 0;
  bool operator==(const ExtentRecord&) const = default;
};

struct DirentRecord {
  uint64_t dir = 0;
  uint64_t child = 0;
  std::string name;
  bool operator==(const DirentRecord&) const = default;
};

struct InodeFreeRecord {
  uint64_t ino = 0;
  bool operator==(const InodeFreeRecord&) const = default;
};

struct DirentRemoveRecord {
  uint64_t dir = 0;
  std::string name;
  bool operator==(const DirentRemoveRecord&) const = default;
};

struct ExtentClearRecord {
  uint64_t ino = 0;
  uint64_t file_block = 0;
  uint64_t block_count = 0;
  bool operator==(const ExtentClearRecord&) const = default;
};

struct BadRangeRecord {
  uint64_t start_block = 0;
  uint64_t block_count = 0;
  bool operator==(const BadRangeRecord&) const = default;
};

// A run of device blocks shared by `refcount` (2 or more) file extents; only in
// the checkpoint, never in the journal.
struct RefcountRecord {
  uint64_t start_block = 0;
  uint64_t block_count = 0;
  uint64_t refcount = 0;
  bool operator==(const RefcountRecord&) const = default;
};

// An extended attribute of `ino` set to `value` (created or replaced).
struct XattrRecord {
  uint64_t ino = 0;
  std::string name;
  std::string value;  // bytes, not text
  bool operator==(const XattrRecord&) const = default;
};

struct XattrRemoveRecord {
  uint64_t ino = 0;
  std::string name;
  bool operator==(const XattrRemoveRecord&) const = default;
};

// Changes nothing: the journal had been written back to the backing file
// through transaction `lsn` when the transaction holding this was written
// (kIncompatWrittenBackMarks).
struct WrittenBackRecord {
  uint64_t lsn = 0;
  bool operator==(const WrittenBackRecord&) const = default;
};

// One journal record: what a transaction changes, replayed in order at mount.
using JournalRecord = std::variant<InodeCore, InodeFreeRecord, DirentRecord, DirentRemoveRecord,
                                   ExtentRecord, ExtentClearRecord, BadRangeRecord, XattrRecord,
                                   XattrRemoveRecord, WrittenBackRecord>;

constexpr uint32_t kModeTypeMask = 0170000;
constexpr uint32_t kModeRegular = 0100000;
constexpr uint32_t kModeDirectory = 0040000;
constexpr uint32_t kModeSymlink = 0120000;  // its target is its data (feature kIncompatSymlinks)
// Special files (feature kIncompatSpecialFiles): no data; a device node keeps
// its number (dev_t) in size_bytes, the others 0.
constexpr uint32_t kModeFifo = 0010000;
constexpr uint32_t kModeCharDevice = 0020000;
constexpr uint32_t kModeBlockDevice = 0060000;
constexpr uint32_t kModeSocket = 0140000;
constexpr uint32_t kModePermMask = 07777;

void encode_inode(const InodeCore& in, DiskInode& out);
Result<InodeCore> decode_inode(const DiskInode& in);
void encode_extent(const ExtentRecord& in, DiskExtent& out);
Result<ExtentRecord> decode_extent(const DiskExtent& in);

// Bytes a directory entry takes on media (header, name, padding to 8).
size_t dirent_bytes(size_t name_len);
void encode_dirent(const DirentRecord& in, unsigned char* out);
// Decodes the entry at `in`, reading at most `available` bytes.
Result<DirentRecord> decode_dirent(const unsigned char* in, size_t available, size_t* consumed);

// A name is valid when it is 1..255 bytes, not "." or "..", with no '/' or NUL.
bool valid_name(const std::string& name);

// The kind byte of the named record at `in` (kNamedDirent or kNamedXattr), or
// -1 if fewer than a header's bytes are left.
int named_kind(const unsigned char* in, size_t available);

// Bytes an extended attribute takes on media (header, name, value, padding to 8).
size_t xattr_bytes(size_t name_len, size_t value_len);
void encode_xattr(const XattrRecord& in, unsigned char* out);
Result<XattrRecord> decode_xattr(const unsigned char* in, size_t available, size_t* consumed);
// An attribute name is 1..255 bytes with no NUL and a namespace prefix
// ("user.", "trusted.", "security.", "system.") followed by at least one byte.
bool valid_xattr_name(std::string_view name);

void encode_bad_range(const BadRangeRecord& in, DiskBadRange& out);
Result<BadRangeRecord> decode_bad_range(const DiskBadRange& in);
void encode_refcount(const RefcountRecord& in, DiskRefcount& out);
Result<RefcountRecord> decode_refcount(const DiskRefcount& in);

}  // namespace poise::format
