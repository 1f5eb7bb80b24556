#include "poise/filesystem.h"
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
    case MetadataKind::CheckpointDelta: return "checkpoint_delta";
    case MetadataKind::PreviousCheckpoint: return "previous_checkpoint";
    case MetadataKind::CarriedJournal: return "carried_journal";
  }
  return "unknown";
}

const char* to_string(FsEvent::Kind kind) {
  switch (kind) {
    case FsEvent::Kind::MemoryFailure: return "memory_failure";
    case FsEvent::Kind::PreRemove: return "pre_remove";
    case FsEvent::Kind::RemovalCancelled: return "removal_cancelled";
    case FsEvent::Kind::Removed: return "removed";
    case FsEvent::Kind::Repaired: return "repaired";
  }
  return "unknown";
}

}  // namespace poise
