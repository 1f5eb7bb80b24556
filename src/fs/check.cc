// The checker: every invariant of the metadata, verified on a quiet filesystem.
// Offline (check_device) it runs the full mount verification read-only first:
// superblocks, checkpoint checksums and structure, journal replay, and that no
// file claims metadata blocks; then the same invariant walk as online.
#include <algorithm>
#include <unordered_set>

#include "fs/fs_impl.h"

namespace poise {

namespace {
constexpr size_t kProblemsMax = 1000;  // a badly damaged image still gives a readable report
}

CheckReport FsImpl::check() {
  std::unique_lock quiet(gate_);
  CheckReport report = check_locked(true);
  // I1: every page a direct mapping shows is the file's own block there now.
  std::shared_lock ns(ns_mutex_);
  for (const auto& run : mappings_->shown_runs()) {
    if (run.state != mapping::PageState::ReadOnly && run.state != mapping::PageState::Writable) continue;
    InodePtr inode = find_inode(run.ino);
    bool own = false;
    if (inode != nullptr) {
      std::shared_lock lock(inode->lock);
      Lookup lk = inode->extents.lookup(FileBlock(run.file_page));
      own = lk.mapped && lk.mapping.dev_block.value() == run.dev_block && lk.mapping.block_count >= run.count;
    }
    if (!own && report.problems.size() < kProblemsMax) {
      report.problems.push_back("mapping " + std::to_string(run.mapping_id) + " shows device block " +
                                std::to_string(run.dev_block) + " at page " + std::to_string(run.file_page) +
                                " of inode " + std::to_string(run.ino.value()) + ", which the file does not own");
    }
    // A store through a writable page of a shared block would write into every sharer.
    if (run.state == mapping::PageState::Writable) {
      std::lock_guard space(space_mutex_);
      ownership_.visit(DevRun{DevBlock(run.dev_block), run.count}, [&](DevRun r, const std::vector<Owner>& owners) {
        const auto sharers = std::count_if(owners.begin(), owners.end(), [](const Owner& o) { return !o.is_bad(); });
        if (sharers > 1 && report.problems.size() < kProblemsMax) {
          report.problems.push_back("mapping " + std::to_string(run.mapping_id) + " shows device block " +
                                    std::to_string(r.start.value()) + " writable, but " + std::to_string(sharers) +
                                    " owners share it");
        }
      });
    }
  }
  return report;
}

CheckReport FsImpl::check_locked(bool compare_incremental) {
  std::shared_lock ns(ns_mutex_);
  CheckReport report;
  report.notes = superblock_notes_;
  report.notes.insert(report.notes.end(), mount_notes_.begin(), mount_notes_.end());
  report.notes.insert(report.notes.end(), copy_notes_.begin(), copy_notes_.end());
  report.problems = sharing_problems_;
  auto problem = [&](std::string text) {
    if (report.problems.size() < kProblemsMax) report.problems.push_back(std::move(text));
  };

  // The directory tree: every entry names a live inode, every directory has one
  // parent entry, and everything with a link is reachable from the root.
  std::unordered_map<uint64_t, uint32_t> references;
  std::unordered_map<uint64_t, uint32_t> subdirs;
  std::unordered_set<uint64_t> reached{kRootInode.value()};
  std::vector<InodePtr> queue{find_inode(kRootInode)};
  while (!queue.empty()) {
    InodePtr dir = queue.back();
    queue.pop_back();
    for (const auto& [name, child_inode] : *dir->entries) {
      InodeNumber child_ino = child_inode->ino;
      InodePtr child = find_inode(child_ino);
      if (child == nullptr) {
        problem("directory " + std::to_string(dir->ino.value()) + " entry '" + name + "' names missing inode " +
                std::to_string(child_ino.value()));
        continue;
      }
      ++references[child_ino.value()];
      if (!child->is_dir()) continue;
      ++subdirs[dir->ino.value()];
      if (!reached.insert(child_ino.value()).second) {
        problem("directory " + std::to_string(child_ino.value()) + " is linked more than once (or in a cycle)");
        continue;
      }
      if (child->parent != dir->ino) {
        problem("directory " + std::to_string(child_ino.value()) + " records the wrong parent");
      }
      queue.push_back(child);
    }
  }
  for (const auto& [ino, inode] : inodes_) {
    ++report.inodes;
    report.extents += inode->extents.extent_count();
    std::string who = "inode " + std::to_string(ino);
    check_xattrs(*inode, (sb_.feature_incompat & format::kIncompatXattrs) != 0, who, problem);
    if (!inode->name.empty()) {  // the name path_of starts from
      InodePtr parent = find_inode(inode->parent);
      auto it = parent != nullptr && parent->is_dir() ? parent->entries->find(inode->name) : DirEntries::iterator();
      if (parent == nullptr || !parent->is_dir() || it == parent->entries->end() || it->second != inode.get()) {
        problem(who + ": its recorded latest name '" + inode->name + "' does not name it");
      }
    }
    if (inode->is_dir()) {
      ++report.directories;
      if (reached.count(ino) == 0) problem(who + ": directory not reachable from the root");
      uint32_t expected = 2 + subdirs[ino];
      if (inode->core.nlink != expected) {
        problem(who + ": directory link count " + std::to_string(inode->core.nlink) + ", expected " +
                std::to_string(expected));
      }
      if (!inode->extents.empty()) problem(who + ": directory maps data blocks");
      continue;
    }
    uint32_t refs = references[ino];
    if (inode->core.nlink == 0 && refs == 0) {
      report.notes.push_back(who + ": unlinked but still open (freed at last close or next mount)");
    } else if (inode->core.nlink != refs) {
      problem(who + ": link count " + std::to_string(inode->core.nlink) + ", but " + std::to_string(refs) +
              " directory entries name it");
    }
    if (is_special(inode->kind)) {
      if (inode->extents.mapped_blocks() != 0) problem(who + ": a special file with data blocks");
      if (inode->kind != FileType::CharDevice && inode->kind != FileType::BlockDevice && inode->core.size_bytes != 0) {
        problem(who + ": a FIFO or socket of nonzero size");
      }
      if ((sb_.feature_incompat & format::kIncompatSpecialFiles) == 0) {
        problem(who + ": a special file on an image without the special-file feature bit");
      }
    }
    if (inode->kind == FileType::Symlink) {
      if (inode->core.size_bytes == 0 || inode->core.size_bytes >= kBlockSize) {
        problem(who + ": symbolic link of " + std::to_string(inode->core.size_bytes) +
                " bytes (a target is 1..4095 bytes)");
      } else if (Lookup lk = inode->extents.lookup(FileBlock(0));
                 inode->extents.mapped_blocks() != 1 || !lk.mapped || (lk.mapping.flags & format::kExtentUnwritten) != 0) {
        problem(who + ": symbolic link without its target block");
      }
      if ((sb_.feature_incompat & format::kIncompatSymlinks) == 0) {
        problem(who + ": a symbolic link on an image without the symbolic-link feature bit");
      }
    }
    // A device node's size field is its number, not a length.
    uint64_t size_blocks = is_special(inode->kind) ? 0 : (inode->core.size_bytes + kBlockSize - 1) / kBlockSize;
    inode->extents.for_each([&](const Extent& m) {
      if (m.dev_block.value() < data_start_ || m.dev_block.value() + m.block_count > data_end_) {
        problem(who + ": extent at file block " + std::to_string(m.file_block.value()) + " lies outside the data area");
      }
      bool past_end = m.file_block.value() + m.block_count > size_blocks;
      if (past_end && (m.flags & format::kExtentUnwritten) == 0) {
        problem(who + ": written extent past the end of the file at file block " +
                std::to_string(m.file_block.value()));
      }
    });
  }
  if (next_ino_ <= inodes_.max_ino()) {
    problem("next inode number is not above every inode in use");
  }

  // Refcounts, reverse map and free space, rebuilt from the extent maps.
  OwnershipMap rebuilt;
  FreeSpace rebuilt_free;
  auto built = rebuild_space(&rebuilt, &rebuilt_free);
  if (!built.has_value()) {
    problem(built.error().message);
    return report;
  }
  uint32_t failed_journal_copies = 0;  // bit per copy
  rebuilt.visit(DevRun{DevBlock(0), sb_.size_blocks}, [&](DevRun r, const std::vector<Owner>& owners) {
    report.used_blocks += r.count;
    bool bad = std::any_of(owners.begin(), owners.end(), [](const Owner& o) { return o.is_bad(); });
    size_t real = owners.size() - (bad ? 1 : 0);
    if (real > 1) report.shared_blocks += r.count;
    if (!bad) return;
    report.bad_blocks += r.count;
    std::string where = "device blocks " + std::to_string(r.start.value()) + ".." + std::to_string(r.end().value());
    for (const Owner& o : owners) {
      if (o.is_bad()) continue;
      if (o.is_file()) {
        report.notes.push_back(where + " failed: inode " + std::to_string(o.id) + " loses file bytes " +
                               std::to_string(o.offset_blocks * kBlockSize) + ".." +
                               std::to_string((o.offset_blocks + r.count) * kBlockSize));
        continue;
      }
      auto kind = static_cast<MetadataKind>(o.id & 0xFF);
      const uint32_t copy = o.offset_blocks >= kSecondCopyOffset ? 2 : 1;
      if (kind == MetadataKind::Superblock) {
        report.notes.push_back(where + " failed under one superblock copy; the other copy is in use");
      } else if (kind == MetadataKind::PreviousCheckpoint || kind == MetadataKind::CarriedJournal) {
        report.notes.push_back(where + " failed under the " + std::string(to_string(kind)) +
                               ", kept for a fallback; the next checkpoint lets it go");
      } else if (metadata_copies() == 1) {
        problem(where + " failed under the " + std::string(to_string(kind)));
      } else if (kind == MetadataKind::Journal) {
        failed_journal_copies |= copy;
        report.notes.push_back(where + " failed under journal copy " + std::to_string(copy) +
                               "; the other copy stands in there");
      } else {
        report.notes.push_back(where + " failed under checkpoint copy " + std::to_string(copy) + " (" +
                               std::string(to_string(kind)) + "); the other copy stands in until the next checkpoint");
      }
    }
  });
  if (failed_journal_copies == 3) problem("both copies of the journal have failed memory");
  report.free_blocks = rebuilt_free.free_blocks();
  if (report.used_blocks + report.free_blocks != sb_.size_blocks) {
    problem("used (" + std::to_string(report.used_blocks) + ") and free (" + std::to_string(report.free_blocks) +
            ") blocks do not add up to the device's " + std::to_string(sb_.size_blocks));
  }
  if (compare_incremental) {
    std::lock_guard lock(space_mutex_);
    std::string diff = ownership_.first_difference(rebuilt);
    if (!diff.empty()) problem("reverse map out of step with the extent maps: " + diff);
    if (!(free_ == rebuilt_free)) {
      problem("free space out of step with the extent maps: " + std::to_string(free_.free_blocks()) +
              " free blocks tracked, " + std::to_string(rebuilt_free.free_blocks()) + " derived");
    }
    if (reserved_blocks_ != 0) problem("blocks still reserved with no operation in flight");
  }
  return report;
}

Result<CheckReport> Filesystem::check_device(Device& device) {
  MountOptions options;
  options.mode = MountMode::ReadOnly;
  auto fs = FsImpl::open(device, options);
  if (!fs.has_value()) {
    const Error& e = fs.error();
    // Damage, or failed memory under metadata that both copies (and the
    // previous checkpoint) needed: a problem, reported like any other.
    if (e.code != EUCLEAN && e.code != EBADMSG && e.code != EIO) return Unexpected<Error>(e);
    CheckReport report;
    report.problems.push_back(e.message);
    return report;
  }
  CheckReport report = (*fs)->check_locked(false);
  FsImpl::check_previous_stands_in(std::move(*fs), &report);
  return report;
}

}  // namespace poise
