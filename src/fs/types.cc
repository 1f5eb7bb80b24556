#include "poise/types.h"

namespace poise {

const char* to_string(OwnerKind kind) {
  switch (kind) {
    case OwnerKind::File: return "file";
    case OwnerKind::Metadata: return "metadata";
    case OwnerKind::Free: return "free";
    case OwnerKind::Bad: return "bad";
  }
  return "unknown";
}

const char* to_string(MetadataKind kind) {
  switch (kind) {
    case MetadataKind::Superblock: return "superblock";
    case MetadataKind::Journal: return "journal";
    case MetadataKind::CheckpointRoot: return "checkpoint_root";
    case MetadataKind::InodeTable: return "inode_table";
    case MetadataKind::Directory: return "directory";
    case MetadataKind::ExtentMap: return "extent_map";
    case MetadataKind::BadRangeList: return "bad_range_list";
    case MetadataKind::RefcountList: return "refcount_list";
  }
  return "unknown";
}

}  // namespace poise
