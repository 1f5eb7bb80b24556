// Reflink and clone-range: the destination's extents point at the source's
// device blocks, and the ownership map gains the destination as an owner of
// each; no data moves. A later write to either copy goes through
// store_locked(), which copies a shared block before writing it.
#include <algorithm>

#include "fs/fs_impl.h"

namespace poise {

std::pair<std::unique_lock<std::shared_mutex>, std::unique_lock<std::shared_mutex>> FsImpl::lock_in_order(
    Inode& a, Inode& b) {
  Inode& low = a.ino < b.ino ? a : b;
  Inode& high = a.ino < b.ino ? b : a;
  std::unique_lock first(low.lock);
  if (&low == &high) return {std::move(first), std::unique_lock<std::shared_mutex>()};
  return {std::move(first), std::unique_lock(high.lock)};
}

namespace {
// Per extent: a record header and a DiskExtent; plus the inode and a clear.
constexpr uint64_t kExtentTxBytes = 48;
constexpr uint64_t kCloneFixedTxBytes = 512;
}  // namespace

Result<void> FsImpl::reflink(InodeNumber src, InodeNumber dst) {
  TRY(check_writable());
  if (src == dst) return fail(EINVAL, "reflink of a file onto itself");
  InodePtr s = TRY(writable_file(src));
  InodePtr d = TRY(writable_file(dst));
  TRY(refuse_own_pins(dst));  // its old blocks go: a pin of this thread would wait for itself
  auto op = TRY(begin_op(format::kTxBytesMax));
  auto locks = lock_in_order(*s, *d);
  if (s->freed || d->freed) return fail(ENOENT, "file was deleted");
  uint64_t extents = s->extents.extent_count();
  if (extents * kExtentTxBytes + kCloneFixedTxBytes > format::kTxBytesMax) {
    return fail(E2BIG, "source has " + std::to_string(extents) +
                           " extents; one reflink transaction holds at most " +
                           std::to_string((format::kTxBytesMax - kCloneFixedTxBytes) / kExtentTxBytes));
  }
  TRY(expect_space(checkpoint_blocks_for_extents(extents), "reflink"));  // the new extents in the next checkpoint
  // Every block of src becomes shared: no mapping of src may keep storing into one.
  mappings_->write_protect(src, 0, s->extents.end().value());
  Records records;
  if (!d->extents.empty()) {
    records.push_back(format::ExtentClearRecord{dst.value(), 0, d->extents.end().value()});
  }
  const uint32_t mark = sharing_mark();
  s->extents.for_each([&](const Extent& m) { append_extent_records(dst, m, &records, mark); });
  format::InodeCore core = d->core;
  core.size_bytes = s->core.size_bytes;
  core.mtime_ns = core.ctime_ns = now();
  records.push_back(core);
  commit(op, records, {s.get(), d.get()});
  return {};
}

Result<void> FsImpl::clone_range(InodeNumber src, uint64_t src_offset, InodeNumber dst,
                                 uint64_t dst_offset, uint64_t length) {
  TRY(check_writable());
  if (length == 0) return {};
  if (src_offset % kBlockSize != 0 || dst_offset % kBlockSize != 0) {
    return fail(EINVAL, "clone offsets must be multiples of 4096");
  }
  InodePtr s = TRY(writable_file(src));
  InodePtr d = TRY(writable_file(dst));
  TRY(refuse_own_pins(dst));
  if (length < (1ull << 60) && dst_offset < (1ull << 60)) {
    TRY(zero_eof_tail(dst, dst_offset + length));  // dst may grow: its old tail reads zeros
  }
  auto op = TRY(begin_op(format::kTxBytesMax));
  auto locks = lock_in_order(*s, *d);
  if (s->freed || d->freed) return fail(ENOENT, "file was deleted");
  uint64_t src_size = s->core.size_bytes;
  if (src_offset >= src_size) return fail(EINVAL, "clone source range starts past the end of the file");
  if (length > src_size - src_offset) length = src_size - src_offset;
  else if (length % kBlockSize != 0) {
    return fail(EINVAL, "clone length must be a multiple of 4096 unless it reaches the source's end");
  }
  if (dst_offset > (1ull << 50) - length) return fail(EFBIG, "clone beyond the 1 PiB file size limit");
  // A partial last block is shared whole: it may only land where nothing of
  // the destination follows it (as Linux's remap checks require), or the
  // destination's bytes after the range would be replaced by the source's
  // zeros past its end.
  if (length % kBlockSize != 0 && dst_offset + length < d->core.size_bytes) {
    return fail(EINVAL, "clone of a partial last block must reach the destination's end too");
  }
  if (s == d && src_offset < dst_offset + length && dst_offset < src_offset + length) {
    return fail(EINVAL, "clone source and destination ranges overlap");
  }
  uint64_t blocks = (length + kBlockSize - 1) / kBlockSize;
  std::vector<Extent> pieces = s->extents.range(FileBlock(src_offset / kBlockSize), blocks);
  if (pieces.size() * kExtentTxBytes + kCloneFixedTxBytes > format::kTxBytesMax) {
    return fail(E2BIG, "source range has too many extents for one clone transaction");
  }
  TRY(expect_space(checkpoint_blocks_for_extents(pieces.size()), "clone"));
  mappings_->write_protect(src, src_offset / kBlockSize, blocks);  // these blocks become shared
  Records records{format::ExtentClearRecord{dst.value(), dst_offset / kBlockSize, blocks}};
  const uint32_t mark = sharing_mark();
  for (Extent m : pieces) {
    m.file_block = FileBlock(dst_offset / kBlockSize + (m.file_block.value() - src_offset / kBlockSize));
    append_extent_records(dst, m, &records, mark);
  }
  format::InodeCore core = d->core;
  core.size_bytes = std::max(core.size_bytes, dst_offset + length);
  core.mtime_ns = core.ctime_ns = now();
  records.push_back(core);
  if (s == d) {
    commit(op, records, {s.get()});
  } else {
    commit(op, records, {s.get(), d.get()});
  }
  return {};
}

Result<std::vector<FsmapRecord>> FsImpl::fsmap(uint64_t offset, uint64_t length) {
  if (!mounted_) return fail(EIO, "filesystem is not mounted");
  uint64_t device_bytes = sb_.size_blocks * kBlockSize;
  std::vector<FsmapRecord> out;
  if (offset >= device_bytes || length == 0) return out;
  length = std::min(length, device_bytes - offset);
  DevRun range = blocks_covering(offset, length, sb_.size_blocks);
  std::vector<FsmapRecord> free_records;
  std::lock_guard lock(space_mutex_);
  ownership_.visit(range, [&](DevRun r, const std::vector<Owner>& owners) {
    // The bad marker beside a lost block's files is no reference to the data.
    const auto references = static_cast<uint32_t>(
        std::count_if(owners.begin(), owners.end(), [](const Owner& o) { return !o.is_bad(); }));
    for (const Owner& o : owners) {
      FsmapRecord rec;
      rec.device_offset_bytes = r.start.value() * kBlockSize;
      rec.length_bytes = r.count * kBlockSize;
      rec.refcount = o.is_bad() ? 0 : references;
      if (o.is_bad()) {
        rec.owner = OwnerKind::Bad;
      } else if (o.is_metadata()) {
        rec.owner = OwnerKind::Metadata;
        rec.metadata_kind = static_cast<MetadataKind>(o.id & 0xFF);
      } else {
        rec.owner = OwnerKind::File;
        rec.ino = InodeNumber(o.id);
        rec.file_offset_bytes = o.offset_blocks * kBlockSize;
      }
      out.push_back(rec);
    }
  });
  free_.visit(range, [&](DevRun r) {
    FsmapRecord rec;
    rec.device_offset_bytes = r.start.value() * kBlockSize;
    rec.length_bytes = r.count * kBlockSize;
    rec.owner = OwnerKind::Free;
    free_records.push_back(rec);
  });
  std::vector<FsmapRecord> merged;
  merged.reserve(out.size() + free_records.size());
  std::merge(out.begin(), out.end(), free_records.begin(), free_records.end(), std::back_inserter(merged),
             [](const FsmapRecord& a, const FsmapRecord& b) {
               return a.device_offset_bytes < b.device_offset_bytes;
             });
  return merged;
}

FsInfo FsImpl::info() {
  FsInfo i;
  i.size_bytes = sb_.size_blocks * kBlockSize;
  {
    std::lock_guard lock(space_mutex_);
    i.free_bytes = (free_.free_blocks() + previous_blocks_) * kBlockSize;  // a kept checkpoint goes when space is needed
    i.previous_bytes = previous_blocks_ * kBlockSize;
    i.previous_generation = previous_ ? generation_shown_.load(std::memory_order_relaxed) - 1 : 0;
  }
  i.used_bytes = i.size_bytes - i.free_bytes;
  i.files = inode_count_.load();
  i.journal_bytes = sb_.journal_blocks * kBlockSize;
  i.checkpoint_generation = generation_shown_.load(std::memory_order_relaxed);  // checkpoint_ is the gate's
  return i;
}

}  // namespace poise
