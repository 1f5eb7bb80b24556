// The on-media structures of poise, byte for byte. docs/format.md explains them;
// ondisk_asserts.cc pins every size and important offset.
//
// Rules: fixed-width little-endian fields only (Le16/Le32/Le64, byte arrays), no
// padding the compiler could add (all alignment 1), no bool, enum, pointer or
// host-endian integer. Every metadata block starts with a BlockHeader that names
// its kind and its own location and carries a crc32c of the whole block.
//
// Layout of a device of N blocks (4 KiB each), as mkfs makes it:
//   block 0                primary superblock
//   blocks 1 .. J          the journal, copy 1 (J from the superblock)
//   blocks J+1 .. N-J-2    data and checkpoint blocks (both copies), allocated as needed
//   blocks N-J-1 .. N-2    the journal, copy 2 (its place is in the superblock)
//   block N-1              secondary superblock
// Every metadata structure is kept twice (version 2): two superblocks, two
// journal copies, two complete checkpoints written from the same images.
//
// Thread-safety: plain data.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

namespace poise::format {

static_assert(std::endian::native == std::endian::little || std::endian::native == std::endian::big);

template <class T>
struct Le {
  unsigned char bytes[sizeof(T)];
  T get() const {
    T v;
    std::memcpy(&v, bytes, sizeof v);
    if constexpr (std::endian::native == std::endian::big) v = swap(v);
    return v;
  }
  void set(T v) {
    if constexpr (std::endian::native == std::endian::big) v = swap(v);
    std::memcpy(bytes, &v, sizeof v);
  }

 private:
  static T swap(T v) {
    T out = 0;
    for (unsigned i = 0; i < sizeof(T); ++i) out = T((out << 8) | ((v >> (8 * i)) & 0xFF));
    return out;
  }
};
using Le16 = Le<uint16_t>;
using Le32 = Le<uint32_t>;
using Le64 = Le<uint64_t>;

inline constexpr uint32_t kMagic = 0x53494F50;    // "POIS"
inline constexpr uint32_t kTxMagic = 0x5854504A;  // "JPTX"
inline constexpr uint32_t kFormatVersion = 2;
// Version 1 kept one copy of the journal and of the checkpoint. It is still read
// (a read-only mount, or a read-write mount that upgrades it to version 2).
inline constexpr uint32_t kFormatVersionSingleCopy = 1;

// Feature bits. An unknown incompatible bit refuses the mount; an unknown
// read-only-compatible bit allows only a read-only mount.
inline constexpr uint64_t kIncompatReflink = 1ull << 0;
// Inodes of type S_IFLNK (symbolic links, their target in one data block). Set
// by mkfs, and on an older image when its first link is made.
inline constexpr uint64_t kIncompatSymlinks = 1ull << 1;
// Extended attributes: journal records kRecordXattrSet/Remove and entries of kind
// kNamedXattr in the checkpoint's directory section. Set by mkfs, and on an
// older image when its first attribute is set.
inline constexpr uint64_t kIncompatXattrs = 1ull << 2;
// Special files: inodes of type S_IFIFO, S_IFCHR, S_IFBLK and S_IFSOCK, with no
// data; a device node's number is its size_bytes field. Set by mkfs, and on an
// older image when its first special file is made.
inline constexpr uint64_t kIncompatSpecialFiles = 1ull << 3;
// Run lists: a checkpoint section whose blocks lie in more than
// kSectionExtentsMax runs (free space in small pieces) continues its run list
// in a chain of RunListBlock. Set by the first checkpoint that needs one.
inline constexpr uint64_t kIncompatRunLists = 1ull << 4;
// Incremental checkpoints: a checkpoint root may keep the sections of an
// earlier (base) checkpoint and add a delta, the journals written since, in
// blocks of kind kBlockDelta. Set by the first incremental checkpoint.
inline constexpr uint64_t kIncompatDeltas = 1ull << 5;
// Sharing marks: every journal extent record that maps blocks another extent
// maps (reflink, clone) carries kExtentShares, so that an unmarked record landing
// on another owner's block is known for a cross-link. Set by a full checkpoint
// (its journal starts empty and its delta is none, so every record after it is
// written so); mkfs writes one.
inline constexpr uint64_t kIncompatSharingMarks = 1ull << 6;
// Write-back marks: on an emulated device (whose persistence is the host's page
// cache) a transaction may carry a kRecordWrittenBack record, the lsn through
// which the journal had been written back to the backing file when it was
// written; a transaction bad in every copy that a later one says was written
// back is damage, never a crash's lost page. Set by mkfs, or on an older
// image by its first read-write mount on an emulated device.
inline constexpr uint64_t kIncompatWrittenBackMarks = 1ull << 7;
inline constexpr uint64_t kIncompatKnown = kIncompatReflink | kIncompatSymlinks | kIncompatXattrs |
                                           kIncompatSpecialFiles | kIncompatRunLists | kIncompatDeltas |
                                           kIncompatSharingMarks | kIncompatWrittenBackMarks;
inline constexpr uint64_t kRoCompatKnown = 0;
// Compatible features (an older reader ignores them, and drops them when it
// writes the superblock). Bit 0: the superblock names the previous checkpoint,
// kept one more generation, and the journal carried with the newest, so that a
// mount can fall back to them where the newest cannot be read in either copy.
inline constexpr uint64_t kCompatPreviousCheckpoint = 1ull << 0;

enum BlockKind : uint32_t {
  kBlockSuperblock = 1,
  kBlockCheckpointRoot = 3,
  kBlockInodeSection = 4,
  kBlockDirentSection = 5,
  kBlockExtentSection = 6,
  kBlockBadRangeSection = 7,
  kBlockRefcountSection = 8,
  kBlockRunList = 9,  // feature kIncompatRunLists
  kBlockDelta = 10,   // feature kIncompatDeltas
};

struct BlockHeader {
  Le32 magic;
  Le32 crc;          // crc32c of the whole 4 KiB block with this field zero
  Le64 self_block;   // where the block belongs: catches misdirected writes
  Le64 generation;   // checkpoint generation the block was written for
  Le32 kind;         // BlockKind
  Le32 used_bytes;   // bytes of the block in use, header included
};

struct Superblock {
  BlockHeader header;
  Le32 version;
  Le32 block_size;
  Le64 size_blocks;
  Le64 feature_compat;
  Le64 feature_ro_compat;
  Le64 feature_incompat;
  unsigned char uuid[16];
  Le64 sequence;  // bumped at every write; the valid copy with the highest wins
  Le64 journal_start_block;
  Le64 journal_blocks;
  Le64 checkpoint_root_block;
  Le64 created_ns;
  Le64 written_ns;
  // Version 2: the second copy of the checkpoint (its root) and of the journal
  // (journal_blocks long). Zero in version 1.
  Le64 checkpoint_copy_root_block;
  Le64 journal_copy_start_block;
  // kCompatPreviousCheckpoint: the previous checkpoint's roots (generation one
  // below the header's; zero: none kept), and where each copy of the journal
  // carried with the newest lies (one run of carry_blocks delta blocks each).
  Le64 previous_root_block;
  Le64 previous_copy_root_block;
  Le64 carry_block;
  Le64 carry_copy_block;
  Le64 carry_blocks;
};

// The checkpoint: a root block naming where its sections live.
// Inodes, directory entries, extents, bad ranges, and (version 2) reference counts.
inline constexpr uint32_t kSectionCount = 5;
inline constexpr uint32_t kSectionExtentsMax = 48;

struct SectionExtent {
  Le64 start_block;
  Le64 block_count;
};

struct SectionDescriptor {
  Le64 records;
  Le32 extent_count;
  Le32 reserved;
  SectionExtent extents[kSectionExtentsMax];
};

struct CheckpointRoot {
  BlockHeader header;
  Le64 next_ino;
  Le64 inode_count;
  Le64 dirent_count;
  Le64 extent_count;
  Le64 bad_range_count;
  Le64 refcount_count;  // version 2; zero in version 1
  SectionDescriptor sections[kSectionCount];
  // Feature kIncompatRunLists: a section whose extent_count exceeds
  // kSectionExtentsMax lists its first kSectionExtentsMax runs above and the
  // rest in a chain of RunListBlock starting here (zero: no chain).
  Le64 run_list_block[kSectionCount];
  // Feature kIncompatDeltas. base_generation: the generation the sections above
  // were written for (zero: this root's own). delta_blocks: the delta's length
  // in blocks, listed entirely in the run list at delta_list_block (section
  // kSectionDeltaId); zero when there is none.
  Le64 base_generation;
  Le64 delta_blocks;
  Le64 delta_list_block;
};
// The section number a delta's run-list links carry.
inline constexpr uint32_t kSectionDeltaId = kSectionCount;

// One link of a section's run list: the runs after those already listed (in
// the root, then in earlier links), in section order.
inline constexpr uint32_t kRunListRunsMax = (4096 - 48) / 16;
struct RunListBlock {
  BlockHeader header;  // kind kBlockRunList; the checkpoint's generation
  Le64 next_block;     // the next link, or zero for the last
  Le32 section;        // SectionId the runs belong to
  Le32 run_count;      // 1..kRunListRunsMax
  SectionExtent runs[kRunListRunsMax];
};

// Every block of a section: a header, then whole records (none crosses a block).
struct SectionBlockHeader {
  BlockHeader header;
  Le32 index;    // position of this block within its section
  Le32 records;  // records in this block
};

struct DiskInode {
  Le64 ino;
  Le32 mode;  // POSIX type and permission bits
  Le32 nlink;
  Le32 uid;
  Le32 gid;
  Le64 size_bytes;
  Le64 atime_ns;
  Le64 mtime_ns;
  Le64 ctime_ns;
  Le64 flags;  // none defined yet; must be zero
};

inline constexpr uint32_t kExtentUnwritten = 1u << 0;  // allocated, reads as zeros
// Journal records only (feature kIncompatSharingMarks): the record maps blocks
// another extent already maps (a reflink or clone), so replay takes the sharing
// it makes as meant. Never in a checkpoint's extent section, never in memory.
inline constexpr uint32_t kExtentShares = 1u << 1;
inline constexpr uint32_t kExtentFlagsKnown = kExtentUnwritten | kExtentShares;

struct DiskExtent {
  Le64 ino;
  Le64 file_block;
  Le64 dev_block;
  Le32 block_count;
  Le32 flags;
};

// The checkpoint's directory section holds named records of two kinds, told
// apart by the byte at offset 18 of each: directory entries and (feature
// kIncompatXattrs) extended attributes. Both keep name_len at offset 16.
enum NamedKind : unsigned char {
  kNamedDirent = 0,
  kNamedXattr = 1,
};

// Followed by name_len bytes of name, then zeros to a multiple of 8 bytes.
struct DiskDirent {
  Le64 dir;
  Le64 child;
  Le16 name_len;
  unsigned char kind;  // kNamedDirent
  unsigned char reserved[5];
};

// An extended attribute of inode `ino`: followed by name_len bytes of name,
// value_len bytes of value, then zeros to a multiple of 8 bytes. In the journal
// (kRecordXattrSet; kRecordXattrRemove with value_len 0) and in the checkpoint.
struct DiskXattr {
  Le64 ino;
  Le32 value_len;
  Le32 reserved0;
  Le16 name_len;
  unsigned char kind;  // kNamedXattr
  unsigned char reserved[5];
};

// The journal: a byte stream of transactions from the start of the journal
// region, each a TxHeader, its records, and zeros to a multiple of 64 bytes.
struct TxHeader {
  Le32 magic;
  Le32 crc;           // crc32c of header (this field zero) and payload
  Le64 generation;    // the checkpoint generation this transaction follows
  Le64 lsn;           // 1, 2, 3, ... within a generation
  Le64 self_offset;   // byte offset of this header within the journal
  Le32 payload_bytes;
  Le32 record_count;
};

enum RecordType : uint16_t {
  kRecordInodeSet = 1,
  kRecordInodeFree = 2,
  kRecordDirentAdd = 3,
  kRecordDirentRemove = 4,
  kRecordExtentSet = 5,
  kRecordExtentClear = 6,
  kRecordBadRange = 7,
  kRecordXattrSet = 8,     // feature kIncompatXattrs
  kRecordXattrRemove = 9,  // feature kIncompatXattrs
  kRecordWrittenBack = 10,  // feature kIncompatWrittenBackMarks
};

// Each record: this header, then `length` bytes of body, then zeros to 8 bytes.
struct RecordHeader {
  Le16 type;
  Le16 reserved;
  Le32 length;
};

struct DiskInodeFree {
  Le64 ino;
};

struct DiskWrittenBack {
  Le64 lsn;  // transactions 1..lsn of this generation were on the backing file
};

// Device blocks whose memory failed: never allocated again; reads of file data
// on them fail with EIO until the file rewrites or drops the block.
struct DiskBadRange {
  Le64 start_block;
  Le64 block_count;
};

// Device blocks that several file extents share (reflink), as XFS's refcount
// tree: a record only where the count is 2 or more. An independent record of
// sharing: two files claiming a block that no record shares is a cross-link.
struct DiskRefcount {
  Le64 start_block;
  Le64 block_count;
  Le64 refcount;
};

struct DiskExtentClear {
  Le64 ino;
  Le64 file_block;
  Le64 block_count;
};

// Limits of the format.
inline constexpr uint32_t kNameBytesMax = 255;
inline constexpr uint32_t kXattrNameBytesMax = 255;
inline constexpr uint32_t kXattrValueBytesMax = 3072;      // one record fits a section block
inline constexpr uint32_t kXattrInodeBytesMax = 64 * 1024;  // names and values of one inode
inline constexpr uint32_t kTxAlign = 64;
inline constexpr uint32_t kTxBytesMax = 256 * 1024;
inline constexpr uint64_t kJournalBlocksMin = 256;     // 1 MiB
inline constexpr uint64_t kJournalBlocksMax = 16384;   // 64 MiB

}  // namespace poise::format
