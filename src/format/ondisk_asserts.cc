// Every on-media structure's size and important offsets, in one place (as XFS's
// xfs_ondisk.h). A change here is a format change: bump kFormatVersion.
#include <cstddef>
#include <type_traits>

#include "format/ondisk.h"

namespace poise::format {

template <class T>
constexpr bool kPlainOnMedia = std::is_trivially_copyable_v<T> && std::is_standard_layout_v<T> &&
                               std::has_unique_object_representations_v<T> && alignof(T) == 1;

#define POISE_ONDISK(type, bytes)                                   \
  static_assert(sizeof(type) == (bytes), #type " size changed");    \
  static_assert(kPlainOnMedia<type>, #type " has padding or is not plain")

POISE_ONDISK(Le16, 2);
POISE_ONDISK(Le32, 4);
POISE_ONDISK(Le64, 8);
POISE_ONDISK(BlockHeader, 32);
POISE_ONDISK(Superblock, 192);
POISE_ONDISK(SectionExtent, 16);
POISE_ONDISK(SectionDescriptor, 16 + 16 * kSectionExtentsMax);
POISE_ONDISK(CheckpointRoot, 80 + kSectionCount * (16 + 16 * kSectionExtentsMax) + 8 * kSectionCount + 24);
POISE_ONDISK(RunListBlock, 48 + 16 * kRunListRunsMax);
POISE_ONDISK(DiskBadRange, 16);
POISE_ONDISK(SectionBlockHeader, 40);
POISE_ONDISK(DiskInode, 64);
POISE_ONDISK(DiskExtent, 32);
POISE_ONDISK(DiskDirent, 24);
POISE_ONDISK(DiskXattr, 24);
// The two kinds of named record tell themselves apart at the same offsets.
static_assert(offsetof(DiskDirent, name_len) == 16 && offsetof(DiskXattr, name_len) == 16);
static_assert(offsetof(DiskDirent, kind) == 18 && offsetof(DiskXattr, kind) == 18);
POISE_ONDISK(TxHeader, 40);
POISE_ONDISK(RecordHeader, 8);
POISE_ONDISK(DiskInodeFree, 8);
POISE_ONDISK(DiskWrittenBack, 8);
POISE_ONDISK(DiskExtentClear, 24);

static_assert(offsetof(BlockHeader, crc) == 4);
static_assert(offsetof(BlockHeader, self_block) == 8);
static_assert(offsetof(BlockHeader, kind) == 24);
static_assert(offsetof(Superblock, version) == 32);
static_assert(offsetof(Superblock, size_blocks) == 40);
static_assert(offsetof(Superblock, feature_incompat) == 64);
static_assert(offsetof(Superblock, uuid) == 72);
static_assert(offsetof(Superblock, sequence) == 88);
static_assert(offsetof(Superblock, checkpoint_root_block) == 112);
static_assert(offsetof(Superblock, checkpoint_copy_root_block) == 136);
static_assert(offsetof(Superblock, journal_copy_start_block) == 144);
static_assert(offsetof(Superblock, previous_root_block) == 152);
static_assert(offsetof(Superblock, carry_blocks) == 184);
static_assert(offsetof(CheckpointRoot, sections) == 80);
static_assert(offsetof(CheckpointRoot, refcount_count) == 72);
POISE_ONDISK(DiskRefcount, 24);
static_assert(offsetof(TxHeader, crc) == 4);
static_assert(offsetof(TxHeader, payload_bytes) == 32);
static_assert(sizeof(CheckpointRoot) <= 4096);
static_assert(sizeof(RunListBlock) <= 4096);
static_assert(offsetof(CheckpointRoot, run_list_block) == 4000);
static_assert(offsetof(CheckpointRoot, base_generation) == 4040);
static_assert(kTxBytesMax % kTxAlign == 0);

#undef POISE_ONDISK

}  // namespace poise::format
