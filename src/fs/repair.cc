// Offline repair (poise repair): a read-write load that notes, instead of
// refusing, what it cannot apply, then fixes in journaled transactions what the
// checker would call a problem, and ends with a new checkpoint (both copies).
#include <algorithm>
#include <map>
#include <set>

#include "device/memory_device.h"
#include "fs/fs_impl.h"

namespace poise {

namespace {
std::string describe_lost(const format::DecodedTx& tx) {
  std::set<uint64_t> inodes;
  for (const auto& record : tx.records) {
    std::visit(
        [&](const auto& r) {
          using T = std::decay_t<decltype(r)>;
          if constexpr (std::is_same_v<T, format::DirentRecord> || std::is_same_v<T, format::DirentRemoveRecord>) {
            inodes.insert(r.dir);
            if constexpr (std::is_same_v<T, format::DirentRecord>) inodes.insert(r.child);
          } else if constexpr (!std::is_same_v<T, format::BadRangeRecord> &&
                               !std::is_same_v<T, format::WrittenBackRecord>) {
            inodes.insert(r.ino);
          }
        },
        record);
  }
  std::string who;
  for (uint64_t ino : inodes) who += (who.empty() ? "" : ", ") + std::to_string(ino);
  return "journal transaction " + std::to_string(tx.lsn) + " lies past the damage and was not applied; it touched " +
         (who.empty() ? std::string("no inode (a bad-range record)") : "inodes " + who);
}
}  // namespace

Result<RepairReport> Filesystem::repair(Device& device, const RepairOptions& options) {
  // A dry run repairs a private copy-on-write view: the device is never written.
  std::unique_ptr<MemoryDevice> view;
  if (options.dry_run) view = TRY(MemoryDevice::private_view_of(device));
  MountOptions mount_options;  // read-write, so that the load may rewrite; the view absorbs it
  // What check would say of the kept previous checkpoint (unreadable, let go
  // for space, or one that would not give the newest state): the repair's
  // checkpoint keeps none, so each is a change it makes.
  std::vector<std::string> previous;
  {
    MountOptions read_only;
    read_only.mode = MountMode::ReadOnly;
    if (auto ro = FsImpl::open(device, read_only); ro.has_value()) {
      previous = (*ro)->previous_notes();
      CheckReport found;
      FsImpl::check_previous_stands_in(std::move(*ro), &found);
      previous.insert(previous.end(), found.problems.begin(), found.problems.end());
      previous.insert(previous.end(), found.notes.begin(), found.notes.end());
    }
  }
  auto fs = TRY(FsImpl::open(view != nullptr ? *view : device, mount_options, /*repairing=*/true));
  RepairReport report = TRY(fs->repair_loaded());
  for (const std::string& p : previous) {
    auto said = [&](const std::string& c) { return c.rfind(p, 0) == 0; };  // the repair's own load met it too
    if (std::none_of(report.changes.begin(), report.changes.end(), said)) {
      report.changes.push_back(p + "; the previous checkpoint is let go (the next checkpoint keeps one again)");
    }
  }
  return report;
}

Result<void> FsImpl::commit_repair(const Records& records) {
  // At most 256 records (a name is under 300 bytes) a transaction.
  constexpr size_t kRecordsPerTx = 256;
  for (size_t i = 0; i < records.size(); i += kRecordsPerTx) {
    Op op = TRY(begin_op(format::kTxBytesMax));
    std::unique_lock ns(ns_mutex_);
    commit(op, Records(records.begin() + i, records.begin() + std::min(records.size(), i + kRecordsPerTx)), {});
  }
  return {};
}

Result<RepairReport> FsImpl::repair_loaded() {
  RepairReport report;
  auto& changes = report.changes;
  report.lost = repair_log_;  // records that could not be applied, file blocks that lay on metadata
  for (const std::string& note : mount_notes_) {  // a journal gap (a loss), rewritten copies (a change)
    (note.find("were not applied") != std::string::npos ? report.lost : changes).push_back(note);
  }
  for (const format::DecodedTx& tx : lost_transactions_) report.lost.push_back(describe_lost(tx));
  for (const std::string& p : sharing_problems_) {
    changes.push_back(p + "; kept as copy-on-write sharing (a write to either file now copies the block first)");
  }
  sharing_problems_.clear();  // the checkpoint below records the sharing
  TRY(repair_tree(&changes));
  TRY(repair_extents_past_end(&changes));
  {
    std::unique_lock quiet(gate_);
    full_checkpoint_due_.store(true, std::memory_order_relaxed);  // what was repaired in memory only (and the sharing) is in no journal
    TRY(write_checkpoint());
  }
  CheckReport after = check();
  report.problems = after.problems;
  TRY(unmount());
  return report;
}

Result<void> FsImpl::repair_tree(std::vector<std::string>* changes) {
  struct Name {
    uint64_t dir;
    std::string name;
  };
  // Every name of every inode, and what the root reaches through first names.
  auto names_of = [&] {
    std::map<uint64_t, std::vector<Name>> names;
    std::shared_lock ns(ns_mutex_);
    for (const auto& [ino, inode] : inodes_) {
      if (!inode->is_dir()) continue;
      for (const auto& [name, child] : *inode->entries) names[child->ino.value()].push_back({ino, name});
    }
    return names;
  };
  auto reached_from_root = [&] {
    std::set<uint64_t> reached{kRootInode.value()};
    std::shared_lock ns(ns_mutex_);
    std::vector<Inode*> queue{root_};
    while (!queue.empty()) {
      Inode* dir = queue.back();
      queue.pop_back();
      for (const auto& [name, child] : *dir->entries) {
        if (child->is_dir() && reached.insert(child->ino.value()).second) queue.push_back(child);
      }
    }
    return reached;
  };
  uint64_t lost_found = 0;
  auto lost_and_found = [&]() -> Result<uint64_t> {
    if (lost_found != 0) return lost_found;
    {
      std::shared_lock ns(ns_mutex_);
      auto it = root_->entries->find("lost+found");
      if (it != root_->entries->end() && it->second->is_dir()) return lost_found = it->second->ino.value();
    }
    std::string name = "lost+found";
    for (int i = 1; lookup("/" + name).has_value(); ++i) name = "lost+found." + std::to_string(i);
    lost_found = TRY(mkdir("/" + name, 0700)).value();
    changes->push_back("created /" + name);
    return lost_found;
  };
  // Moves `ino` to /lost+found as "#ino" (or "#ino.N" if taken), dropping every
  // other name it has.
  auto adopt = [&](uint64_t ino, const std::vector<Name>& old_names, const char* why) -> Result<void> {
    const uint64_t lf = TRY(lost_and_found());
    std::string name = "#" + std::to_string(ino);
    {
      std::shared_lock ns(ns_mutex_);
      const DirEntries& in_lf = *find_inode(InodeNumber(lf))->entries;
      for (int i = 1; in_lf.contains(name); ++i) name = "#" + std::to_string(ino) + "." + std::to_string(i);
    }
    Records records;
    for (const Name& n : old_names) records.push_back(format::DirentRemoveRecord{n.dir, n.name});
    TRY(commit_repair(records));
    TRY(commit_repair({format::DirentRecord{lf, ino, name}}));
    changes->push_back("moved inode " + std::to_string(ino) + " (" + why + ") to /lost+found/" + name);
    return {};
  };

  // Directories the root cannot reach (a cycle, or a lost parent), one at a
  // time: moving one may bring others back. Bounded by the directories.
  for (;;) {
    std::set<uint64_t> reached = reached_from_root();
    uint64_t cut_off = 0;
    {
      std::shared_lock ns(ns_mutex_);
      for (const auto& [ino, inode] : inodes_) {
        if (inode->is_dir() && !reached.contains(ino)) {
          cut_off = ino;
          break;
        }
      }
    }
    if (cut_off == 0) break;
    TRY(adopt(cut_off, names_of()[cut_off], "a directory the root cannot reach"));
  }
  // A directory has one name (the root none): the one in its recorded parent
  // stays, or else the first in a directory the root reaches.
  {
    auto names = names_of();
    std::set<uint64_t> reached = reached_from_root();
    for (auto& [ino, list] : names) {
      InodePtr inode = find_inode(InodeNumber(ino));
      const bool root = ino == kRootInode.value();
      if (inode == nullptr || !inode->is_dir() || (list.size() < 2 && !root)) continue;
      size_t keep = list.size();
      for (size_t i = 0; i < list.size() && !root && keep == list.size(); ++i) {
        if (list[i].dir == inode->parent.value() && reached.contains(list[i].dir)) keep = i;
      }
      for (size_t i = 0; i < list.size() && !root && keep == list.size(); ++i) {
        if (reached.contains(list[i].dir)) keep = i;
      }
      Records records;
      for (size_t i = 0; i < list.size(); ++i) {
        if (i != keep) records.push_back(format::DirentRemoveRecord{list[i].dir, list[i].name});
      }
      TRY(commit_repair(records));
      changes->push_back("directory " + std::to_string(ino) + " had " + std::to_string(list.size()) +
                         (root ? " names; the root has none: removed them" : " names; removed all but one"));
    }
  }
  // Files with links but no name.
  {
    std::vector<uint64_t> nameless;
    {
      std::shared_lock ns(ns_mutex_);
      for (const auto& [ino, inode] : inodes_) {
        if (!inode->is_dir() && inode->entry_count == 0 && inode->core.nlink > 0) nameless.push_back(ino);
      }
    }
    for (uint64_t ino : nameless) TRY(adopt(ino, {}, "a file with no name"));
  }
  // Link counts: a file's names; a directory's 2 + its subdirectories. And each
  // directory's parent is the directory naming it.
  Records fixes;
  std::vector<std::string> fixed;
  {
    std::unique_lock ns(ns_mutex_);
    std::map<uint64_t, uint32_t> subdirs;
    for (const auto& [ino, inode] : inodes_) {
      if (!inode->is_dir()) continue;
      for (const auto& [name, child] : *inode->entries) {
        if (child->is_dir()) {
          ++subdirs[ino];
          child->parent = inode->ino;
          child->name = name;
        }
      }
    }
    for (const auto& [ino, inode] : inodes_) {
      const uint32_t want = inode->is_dir() ? 2 + subdirs[ino] : inode->entry_count;
      if (inode->core.nlink == want || (!inode->is_dir() && want == 0)) continue;
      format::InodeCore core = inode->core;
      fixed.push_back("inode " + std::to_string(ino) + ": link count " + std::to_string(core.nlink) + " set to " +
                      std::to_string(want));
      core.nlink = want;
      fixes.push_back(core);
    }
  }
  for (size_t i = 0; i < fixes.size(); i += 1000) {
    TRY(commit_repair(Records(fixes.begin() + i, fixes.begin() + std::min(fixes.size(), i + 1000))));
  }
  changes->insert(changes->end(), fixed.begin(), fixed.end());
  return {};
}

Result<void> FsImpl::repair_extents_past_end(std::vector<std::string>* changes) {
  Records clears;
  {
    std::shared_lock ns(ns_mutex_);
    for (const auto& [ino, inode] : inodes_) {
      const uint64_t end = ceil_blocks(inode->core.size_bytes);
      const InodeNumber owner = inode->ino;
      inode->extents.for_each([&](const Extent& m) {
        const uint64_t last = m.file_block.value() + m.block_count;
        if ((m.flags & format::kExtentUnwritten) != 0 || last <= end) return;
        const uint64_t first = std::max(end, m.file_block.value());
        clears.push_back(format::ExtentClearRecord{owner.value(), first, last - first});
        changes->push_back("inode " + std::to_string(owner.value()) + ": unmapped written blocks " +
                           std::to_string(first) + ".." + std::to_string(last) + " past the end of the file");
      });
    }
  }
  for (size_t i = 0; i < clears.size(); i += 1000) {
    TRY(commit_repair(Records(clears.begin() + i, clears.begin() + std::min(clears.size(), i + 1000))));
  }
  return {};
}

}  // namespace poise
