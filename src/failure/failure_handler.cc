#include "failure/failure_handler.h"

namespace poise::failure {

namespace {
constexpr uint64_t kBlockSize = 4096;
}  // namespace

Result<void> FailureHandler::notify_failure(uint64_t offset, uint64_t length, FailureFlags flags) {
  if (has(flags, FailureFlags::Remove)) {
    // Pins read device memory directly, so removal waits for them to be released;
    // a pin of this very thread would never be.
    if (mappings_.holds_any_pin()) {
      return fail(EDEADLK, "this thread holds a pin of the filesystem: release it before removing the device");
    }
    fs_.shutdown();  // the memory is gone: every call and every mapped access fails from now on
    mappings_.wait_for_all_pins();
    FsEvent removed;
    removed.kind = FsEvent::Kind::Removed;
    removed.length = offset + length;
    removed.action = "shut down: waiting writers failed, every mapping is dead, every later access fails";
    fs_.report(removed);
    return {};
  }
  if (has(flags, FailureFlags::PreRemove)) return pre_remove();
  if (!fs_.is_mounted()) return fail(EIO, "filesystem is not mounted");
  if (length == 0 || offset / kBlockSize >= fs_.size_blocks()) {
    return fail(EINVAL, "failure range outside the filesystem");
  }
  const uint64_t first = offset / kBlockSize;
  const uint64_t end = std::min(fs_.size_blocks(), (offset + length + kBlockSize - 1) / kBlockSize);

  // Who owned it, through the reverse map; then record it, so that from here on
  // every layout the mapping layer asks for shows these pages as lost.
  FailedOwners owners = fs_.owners_of(first, end - first);
  // Told before, all of it: recorded, revoked and reported already.
  if (owners.already_recorded) return {};
  // Revoked and told even if the record cannot be made (the filesystem shut
  // down meanwhile, say): nobody may keep reading the lost memory.
  auto recorded = fs_.record_bad(first, end - first);

  std::vector<mapping::Notice> notices;
  for (const auto& f : owners.files) {
    // A file nobody maps has nothing to revoke, and a mapping made from here on
    // reads its layout after the record above: skip the file's (cold) inode.
    if (!mappings_.maps_file(f.ino)) continue;
    fs_.with_file_locked(f.ino, [&] { mappings_.mark_lost(f.ino, f.file_block, f.count, f.dev_block, &notices); });
  }
  mapping::MappingRegistry::deliver(notices);
  FsEvent event;
  event.kind = FsEvent::Kind::MemoryFailure;
  event.device_offset = first * kBlockSize;
  event.length = (end - first) * kBlockSize;
  for (const auto& f : owners.files) {
    event.files.push_back({f.ino, f.file_block * kBlockSize, f.count * kBlockSize});
  }
  if (owners.journal) event.metadata.push_back("journal");
  if (owners.superblocks > 0) event.metadata.push_back("superblock");
  if (owners.checkpoint) event.metadata.push_back("checkpoint");
  auto told = [&](Result<void> r, std::string action) {
    event.action = std::move(action);
    if (!r.has_value()) event.action += "; failed: " + r.error().message;
    fs_.report(event);
    return r;
  };
  if (!recorded.has_value()) return told(std::move(recorded), "pages revoked, owners told");
  const std::string done = "recorded bad (never allocated again), pages revoked in every mapping, owners told";
  if (fs_.is_read_only()) return told({}, done + " (read-only mount: the record is kept in memory)");
  if (owners.journal || owners.superblocks == 2) {
    fs_.checkpoint_and_shutdown();
    return told(fail(EIO, owners.journal
                              ? "the journal's memory failed: filesystem shut down (mount read-only to copy data out)"
                              : "both superblocks failed: filesystem shut down"),
                done + "; filesystem shut down");
  }
  if (owners.checkpoint) return told(fs_.rewrite_checkpoint(), done + "; checkpoint metadata rewritten elsewhere");
  return told({}, done);
}

Result<void> FailureHandler::pre_remove() {
  if (!fs_.is_mounted()) return fail(EIO, "filesystem is not mounted");
  fs_.freeze();  // from here on nothing new is written: API writers and transactions wait
  std::vector<mapping::Notice> notices;
  mappings_.suspend_all(&notices);  // mapped stores stop; what they left is written back
  auto synced = fs_.sync_frozen();
  const size_t revoked = notices.size();
  mapping::MappingRegistry::deliver(notices);
  FsEvent event;
  event.kind = FsEvent::Kind::PreRemove;
  event.action = "frozen, synced, " + std::to_string(revoked) + " mapping(s) revoked and their owners told";
  if (!synced.has_value()) event.action += "; sync failed: " + synced.error().message;
  fs_.report(event);
  return synced;
}

void FailureHandler::removal_cancelled() {
  mappings_.resume_all();
  fs_.thaw();
  FsEvent event;
  event.kind = FsEvent::Kind::RemovalCancelled;
  event.action = "thawed: writers and mappings resume";
  fs_.report(event);
}

}  // namespace poise::failure
