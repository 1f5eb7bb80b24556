// The filesystem's side of direct mappings and pins: the layout the mapping
// layer shows (src/mapping/), and the one-page store a write fault needs.
#include <algorithm>

#include "failure/fault_handler.h"
#include "fs/fs_impl.h"

namespace poise {

namespace {
constexpr uint64_t kPageTxBytes = 8 * 1024;
}  // namespace

Result<Mapping> FsImpl::map(InodeNumber ino, uint64_t offset, uint64_t length, MapAccess access,
                            std::shared_ptr<MapOwner> owner) {
  if (!mounted_) return fail(EIO, "filesystem is not mounted");
  if (access == MapAccess::ReadWrite) TRY(check_writable());
  InodePtr inode = TRY(writable_file(ino));
  failure::start_machine_check_thread();
  return mappings_->map(ino, offset, length, access, std::move(owner));
}

Result<Pin> FsImpl::pin(InodeNumber ino, uint64_t offset, uint64_t length) {
  if (!mounted_) return fail(EIO, "filesystem is not mounted");
  TRY(writable_file(ino));
  return mappings_->pin(ino, offset, length);
}

std::string FsImpl::describe(InodeNumber ino) {
  auto path = path_of(ino);
  return path.has_value() ? *path : "inode " + std::to_string(ino.value());
}

Result<void> FsImpl::with_layout(InodeNumber ino, uint64_t first, uint64_t count, bool writable,
                                 const std::function<void(uint64_t, std::span<const mapping::PageExtent>)>& fn) {
  using mapping::PageExtent;
  using mapping::PageState;
  InodePtr inode = TRY(writable_file(ino));
  std::shared_lock lock(inode->lock);
  if (inode->freed) return fail(ENOENT, "file was deleted");
  if (writable) {  // stores follow that no record will show: caches of these pages are stale from now
    inode->mapped_writable.store(true, std::memory_order_relaxed);
    report_change(FsChange{FsChange::Kind::Data, ino, first * kBlockSize, count * kBlockSize, {}});
  }
  const uint64_t eof = ceil_blocks(inode->core.size_bytes);
  const uint64_t end = std::min(eof, first + count);
  std::vector<PageExtent> layout;
  for (uint64_t pos = first; pos < end;) {
    Lookup lk = inode->extents.lookup(FileBlock(pos));
    if (!lk.mapped) {
      uint64_t n = std::min(lk.hole_blocks, end - pos);
      layout.push_back(PageExtent{pos, n, PageState::Zero, 0});
      pos += n;
      continue;
    }
    const Extent m = lk.mapping;
    uint64_t n = std::min(m.block_count, end - pos);
    if ((m.flags & format::kExtentUnwritten) != 0) {
      layout.push_back(PageExtent{pos, n, PageState::Zero, 0});
      pos += n;
      continue;
    }
    std::lock_guard space(space_mutex_);
    ownership_.visit(DevRun{m.dev_block, n}, [&](DevRun r, const std::vector<Owner>& owners) {
      bool bad = std::any_of(owners.begin(), owners.end(), [](const Owner& o) { return o.is_bad(); });
      PageState state = bad                                ? PageState::Lost
                        : owners.size() > 1 || !writable ? PageState::ReadOnly
                                                           : PageState::Writable;
      layout.push_back(PageExtent{pos + (r.start - m.dev_block), r.count, state, r.start.value()});
    });
    pos += n;
  }
  // Emulated poison not yet consumed: those pages fault as a machine check would.
  // One ranged lookup per poisoned stretch of the layout, never a copy of the list.
  std::vector<PageExtent> split;
  for (const PageExtent& e : layout) {
    if (e.state != PageState::ReadOnly && e.state != PageState::Writable) {
      split.push_back(e);
      continue;
    }
    uint64_t at = e.dev_block;
    const uint64_t stop = e.dev_block + e.count;
    while (at < stop) {
      auto b = device_.first_poisoned(at * kBlockSize, (stop - at) * kBlockSize);
      if (!b) break;
      const uint64_t s = b->offset_bytes / kBlockSize;
      const uint64_t t = std::min(stop, ceil_blocks(b->offset_bytes + b->length_bytes));
      if (s > at) split.push_back(PageExtent{e.first_page + (at - e.dev_block), s - at, e.state, at});
      split.push_back(PageExtent{e.first_page + (s - e.dev_block), t - s, PageState::Poisoned, s});
      at = t;
    }
    if (at < stop) split.push_back(PageExtent{e.first_page + (at - e.dev_block), stop - at, e.state, at});
  }
  layout = std::move(split);
  fn(eof, layout);
  return {};
}

Result<void> FsImpl::prepare_write(InodeNumber ino, uint64_t page) {
  auto file_op = TRY(begin_file_op(ino, kPageTxBytes));  // waits while frozen
  Inode& inode = *file_op.inode;
  if (page >= ceil_blocks(inode.core.size_bytes)) {
    return fail(EFAULT, "file byte " + std::to_string(page * kBlockSize) + " is past the end of the file");
  }
  // The page's current content, stored again: a hole or unwritten block gets a
  // zeroed block of its own, a shared block a private copy.
  alignas(64) std::byte content[kBlockSize] = {};
  const uint64_t need = blocks_needed_for_store(inode, FileBlock(page), 1);
  Lookup lk = inode.extents.lookup(FileBlock(page));
  if (lk.mapped && (lk.mapping.flags & format::kExtentUnwritten) == 0) {
    if (bad_overlap(lk.mapping.dev_block, 1)) {
      return fail(EIO, "file bytes " + std::to_string(page * kBlockSize) + ".." +
                           std::to_string((page + 1) * kBlockSize) + " are lost");
    }
    if (need == 0) return {};  // writable in place already
    TRY(device_.read(lk.mapping.dev_block.value() * kBlockSize, content, kBlockSize));
  }
  TRY(reserve_blocks(need));
  Records records;
  bool fresh = false;
  uint64_t used = store_locked(inode, page * kBlockSize, content, kBlockSize, &records, &fresh);
  unreserve_blocks(need - used);
  format::InodeCore core = inode.core;
  core.mtime_ns = core.ctime_ns = now();
  records.push_back(core);
  if (fresh) device_.drain();
  commit(file_op.op, records, {&inode});
  return {};
}

Result<void> FsImpl::consume_poison(uint64_t dev_offset, uint64_t length) {
  return device_.notify_failure(dev_offset, length, FailureFlags::ActionRequired);
}

}  // namespace poise
