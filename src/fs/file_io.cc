// File data: read, write (allocating holes, copying shared blocks first,
// converting unwritten ones), truncate, punch-hole, fallocate, fsync and sync.
#include <algorithm>
#include <cstring>

#include "fs/fs_impl.h"
#include "mapping/address_index.h"

namespace poise {

namespace {
constexpr uint64_t kFileSizeMax = 1ull << 50;  // 1 PiB
constexpr uint64_t kChunkBytes = 4ull << 20;   // one transaction's worth: <= 1024 blocks
constexpr uint64_t kChunkTxBytes = 64 * 1024;  // 1024 extent records of 40 bytes, plus the inode
constexpr uint64_t kSmallTxBytes = 8 * 1024;


// How many bytes from `pos` (inside a run of `run_blocks` starting at pos's
// block) the run covers, capped at `left`. run_blocks may be "infinite".
uint64_t run_bytes(uint64_t pos, uint64_t run_blocks, uint64_t left) {
  if (run_blocks > left / kBlockSize + 1) return left;
  return std::min(left, run_blocks * kBlockSize - pos % kBlockSize);
}
}  // namespace

Result<InodePtr> FsImpl::writable_file(InodeNumber ino) {
  InodePtr inode = TRY(get_inode(ino));
  if (inode->type() != FileType::Regular) return fail(inode->is_dir() ? EISDIR : EINVAL, describe_type(*inode));
  return inode;
}

std::string FsImpl::describe_type(const Inode& inode) {
  std::string who = "inode " + std::to_string(inode.ino.value());
  switch (inode.type()) {
    case FileType::Directory: return who + " is a directory";
    case FileType::Symlink: return who + " is a symbolic link (its target is read with readlink)";
    case FileType::Fifo: return who + " is a FIFO (it holds no data; open it through the FUSE mount)";
    case FileType::CharDevice: return who + " is a character device node (it holds no data)";
    case FileType::BlockDevice: return who + " is a block device node (it holds no data)";
    case FileType::Socket: return who + " is a socket (it holds no data)";
    case FileType::Regular: break;
  }
  return who + " is a regular file";
}

Result<void> FsImpl::refuse_own_pins(InodeNumber ino) const {
  if (!mappings_->holds_pin(ino)) return {};
  return fail(EDEADLK, "this thread holds a pin of inode " + std::to_string(ino.value()) +
                           "; release it before modifying the file");
}

Result<FsImpl::FileOp> FsImpl::begin_file_op(InodeNumber ino, uint64_t tx_bytes_max, Journal::Use use) {
  auto op = TRY(begin_op(tx_bytes_max, use));
  InodePtr inode = TRY(writable_file(ino));
  TRY(refuse_own_pins(ino));
  std::unique_lock lock(inode->lock);
  if (inode->freed) return fail(ENOENT, "file was deleted");
  return FileOp{std::move(op), std::move(inode), std::move(lock)};
}

// A caller's buffer inside a poise mapping can fault into the filesystem (a hole's
// first store, a revoked page, a copy-on-write), and resolving that fault takes
// the inode lock: copying straight into it under the lock would deadlock. Such a
// buffer is filled, or read, through a bounce buffer with no lock held, inside
// guarded() so that a failed access is an error (EFAULT/EIO), never a signal.
namespace {
constexpr size_t kBounceBytes = 1 << 20;
}

Result<size_t> FsImpl::read_through_bounce(InodeNumber ino, uint64_t offset, std::span<std::byte> out) {
  std::vector<std::byte> bounce(std::min(out.size(), kBounceBytes));
  size_t done = 0;
  while (done < out.size()) {
    size_t want = std::min(bounce.size(), out.size() - done);
    auto n = read(ino, offset + done, {bounce.data(), want});
    if (!n.has_value()) {
      if (done == 0) return n;
      break;
    }
    std::byte* to = out.data() + done;
    auto copied = guarded([&] { std::memcpy(to, bounce.data(), *n); });
    if (!copied.has_value()) {
      if (done == 0) return Unexpected<Error>(std::move(copied).error());
      break;
    }
    done += *n;
    if (*n < want) break;  // the end of file
  }
  return done;
}

Result<size_t> FsImpl::write_through_bounce(InodeNumber ino, uint64_t offset, std::span<const std::byte> in) {
  std::vector<std::byte> bounce(std::min(in.size(), kBounceBytes));
  size_t done = 0;
  while (done < in.size()) {
    size_t want = std::min(bounce.size(), in.size() - done);
    const std::byte* from = in.data() + done;
    auto copied = guarded([&] { std::memcpy(bounce.data(), from, want); });
    if (!copied.has_value()) {
      if (done == 0) return Unexpected<Error>(std::move(copied).error());
      break;
    }
    auto n = write(ino, offset + done, {bounce.data(), want});
    if (!n.has_value()) {
      if (done == 0) return n;
      break;
    }
    done += *n;
    if (*n < want) break;
  }
  return done;
}

std::optional<DevBlock> FsImpl::lost_block_at(const Inode& inode, uint64_t file_block) const {
  Lookup lk = inode.extents.lookup(FileBlock(file_block));
  if (!lk.mapped || (lk.mapping.flags & format::kExtentUnwritten) != 0 || !bad_overlap(lk.mapping.dev_block, 1)) {
    return std::nullopt;
  }
  return lk.mapping.dev_block;
}

Result<void> FsImpl::restore_lost_block(InodeNumber ino, uint64_t offset, std::span<const std::byte> copy,
                                        std::string_view source) {
  TRY(check_writable());
  if (offset % kBlockSize != 0 || copy.empty() || copy.size() > kBlockSize) {
    return fail(EINVAL, "a restored block starts on a block boundary and holds 1..4096 bytes");
  }
  TRY(refuse_own_pins(ino));
  uint64_t failed = 0;  // the failed device block under it (restore_one checks again, under the lock)
  {
    InodePtr inode = TRY(writable_file(ino));
    std::shared_lock lock(inode->lock);
    auto lost = lost_block_at(*inode, offset / kBlockSize);
    if (!lost) return fail(ESTALE, "the block is not lost (rewritten or freed meanwhile)");
    failed = lost->value();
  }
  TRY(restore_one(ino, offset, copy));
  FsEvent event;
  event.kind = FsEvent::Kind::Repaired;
  event.device_offset = failed * kBlockSize;
  event.length = kBlockSize;
  event.files.push_back({ino, offset, copy.size()});
  // Files that share the block by reflink held the same bytes there: each gets
  // them back too, on a block of its own (as a write would have given it).
  for (const auto& sharer : owners_of(failed, 1).files) {
    const uint64_t at = sharer.file_block * kBlockSize;
    auto st = stat(sharer.ino);
    if (!st.has_value() || at >= st->size_bytes) continue;
    const uint64_t length = std::min<uint64_t>(kBlockSize, st->size_bytes - at);
    if (length > copy.size()) continue;  // the copy ends before this file's bytes do
    if (restore_one(sharer.ino, at, copy.first(length)).has_value()) {
      event.files.push_back({sharer.ino, at, length});
    }
  }
  event.action = "lost file bytes rewritten to good memory from " + std::string(source);
  report(event);
  return {};
}

Result<void> FsImpl::restore_one(InodeNumber ino, uint64_t offset, std::span<const std::byte> copy) {
  const std::pair<uint64_t, uint64_t> key{ino.value(), offset / kBlockSize};
  uint64_t changes = 0;
  {
    std::lock_guard lock(lost_mutex_);
    auto it = lost_at_.find(key);
    if (it == lost_at_.end()) return fail(ESTALE, "the block was not lost in this mount, or was restored");
    changes = it->second;
  }
  TRY(write_chunk(ino, offset, copy.data(), copy.size(), &changes));  // checks under the file's lock
  std::lock_guard lock(lost_mutex_);
  lost_at_.erase(key);
  return {};
}

Result<size_t> FsImpl::read(InodeNumber ino, uint64_t offset, std::span<std::byte> out) {
  if (mapping::overlaps_mapping(out.data(), out.size())) return read_through_bounce(ino, offset, out);
  return read_data(ino, offset, out, FileType::Regular);
}

Result<size_t> FsImpl::read_data(InodeNumber ino, uint64_t offset, std::span<std::byte> out, FileType type) {
  std::optional<DevRun> consumed;  // poison this read ran into, reported once the locks are gone
  auto n = read_locked(ino, offset, out, type, &consumed);
  if (!consumed) return n;
  // The failure flow records the range for every owner; then the consumer gets
  // its error synchronously, naming the file bytes lost as everyone else's does.
  auto handled = device_.notify_failure(consumed->start.value() * kBlockSize, consumed->count * kBlockSize,
                                FailureFlags::ActionRequired);
  if (!handled.has_value()) return n;
  std::optional<DevRun> again;
  return read_locked(ino, offset, out, type, &again);
}

Result<size_t> FsImpl::read_locked(InodeNumber ino, uint64_t offset, std::span<std::byte> out, FileType type,
                                   std::optional<DevRun>* consumed) {
  InodePtr inode = TRY(get_inode(ino));
  std::shared_lock lock(inode->lock);
  if (inode->freed) return fail(ENOENT, "file was deleted");
  if (inode->type() != type) {
    return fail(inode->is_dir() && type == FileType::Regular ? EISDIR : EINVAL, describe_type(*inode));
  }
  uint64_t size = inode->core.size_bytes;
  if (offset >= size || out.empty()) return size_t{0};
  uint64_t n = std::min<uint64_t>(out.size(), size - offset);
  uint64_t pos = offset;
  std::byte* dst = out.data();
  while (pos < offset + n) {
    Lookup lk = inode->extents.lookup(FileBlock(pos / kBlockSize));
    uint64_t len = run_bytes(pos, lk.mapped ? lk.mapping.block_count : lk.hole_blocks, offset + n - pos);
    if (lk.mapped && (lk.mapping.flags & format::kExtentUnwritten) == 0) {
      uint64_t dev_offset = lk.mapping.dev_block.value() * kBlockSize + pos % kBlockSize;
      uint64_t blocks = (pos % kBlockSize + len + kBlockSize - 1) / kBlockSize;
      if (auto bad = bad_overlap(lk.mapping.dev_block, blocks)) {
        uint64_t file_block = pos / kBlockSize + (bad->start - lk.mapping.dev_block);
        uint64_t from = std::max(pos, file_block * kBlockSize);
        uint64_t to = std::min(pos + len, (file_block + bad->count) * kBlockSize);
        return fail(EIO, "inode " + std::to_string(ino.value()) + ": file bytes " + std::to_string(from) + ".." +
                             std::to_string(to) + " are lost (device block " + std::to_string(bad->start.value()) +
                             " failed)");
      }
      auto r = device_.read(dev_offset, dst, len);
      if (!r.has_value()) {
        if (r.error().code == EIO) *consumed = poisoned_blocks(dev_offset, len);
        return Unexpected<Error>(std::move(r).error());
      }
    } else {
      std::memset(dst, 0, len);
    }
    pos += len;
    dst += len;
  }
  return static_cast<size_t>(n);
}

uint64_t FsImpl::blocks_needed_for_store(const Inode& inode, FileBlock first, uint64_t count) {
  uint64_t need = 0;
  uint64_t pos = first.value();
  uint64_t end = pos + count;
  while (pos < end) {
    Lookup lk = inode.extents.lookup(FileBlock(pos));
    if (!lk.mapped) {
      uint64_t n = std::min(lk.hole_blocks, end - pos);
      need += n;
      pos += n;
      continue;
    }
    uint64_t n = std::min(lk.mapping.block_count, end - pos);
    std::lock_guard lock(space_mutex_);
    ownership_.visit(DevRun{lk.mapping.dev_block, n}, [&](DevRun r, const std::vector<Owner>& owners) {
      if (owners.size() > 1) need += r.count;
    });
    pos += n;
  }
  return need;
}

Result<void> FsImpl::store_run(DevBlock dev, FileBlock fb, uint64_t count, uint64_t offset,
                               const std::byte* src, size_t length, Fill fill, DevBlock old) {
  uint64_t run_start = fb.value() * kBlockSize;
  uint64_t run_end = run_start + count * kBlockSize;
  uint64_t a = std::max(offset, run_start);
  uint64_t b = std::min(offset + length, run_end);
  POISE_ASSERT(a < b);
  auto dev_at = [&](uint64_t file_byte) { return dev.value() * kBlockSize + (file_byte - run_start); };
  auto gap = [&](uint64_t from, uint64_t to) -> Result<void> {
    if (from >= to || fill == Fill::InPlace) return {};
    POISE_ASSERT(to - from < kBlockSize);
    if (fill == Fill::Zero) {
      device_.fill(dev_at(from), 0, to - from);
      return {};
    }
    alignas(64) std::byte buf[kBlockSize];
    // The shared block's memory may fail under this copy (a machine check): the
    // copy stops and the write fails, never filling the gap with garbage.
    TRY(device_.read(old.value() * kBlockSize + (from - run_start), buf, to - from));
    device_.write(dev_at(from), buf, to - from);
    return {};
  };
  if (fill != Fill::InPlace) device_.prepare_store(dev_at(run_start), run_end - run_start);  // new blocks
  TRY(gap(run_start, a));
  if (src != nullptr) {
    device_.write(dev_at(a), src + (a - offset), b - a);
  } else {
    device_.fill(dev_at(a), 0, b - a);
  }
  return gap(b, run_end);
}

// A failed copy's error, and the blocks a machine check says are lost (only for
// EIO: an error such as a removal under way loses nothing).
FsImpl::CopyFailure FsImpl::copy_failure(Error error, uint64_t dev_offset, uint64_t length) const {
  CopyFailure out{std::move(error), std::nullopt};
  if (out.error.code == EIO) out.lost = poisoned_blocks(dev_offset, length);
  return out;
}

// The sources of the partial first and last blocks, where they are shared and
// so copied before the store: read before anything is stored, so that memory
// failed under them fails the operation while it has changed nothing.
std::optional<FsImpl::CopyFailure> FsImpl::preflight_copies(const Inode& inode, uint64_t offset, size_t length) {
  if (length == 0) return std::nullopt;
  const uint64_t first = offset / kBlockSize, last = (offset + length - 1) / kBlockSize;
  const uint64_t edges[] = {first, last};
  for (size_t e = 0; e < (first == last ? 1u : 2u); ++e) {
    const uint64_t block = edges[e];
    const uint64_t start = block * kBlockSize, stop = start + kBlockSize;
    const uint64_t a = std::max(offset, start), b = std::min(offset + length, stop);
    if (a == start && b == stop) continue;  // covered whole: nothing is copied
    Lookup lk = inode.extents.lookup(FileBlock(block));
    if (!lk.mapped || (lk.mapping.flags & format::kExtentUnwritten) != 0) continue;
    const DevBlock dev = lk.mapping.dev_block + (block - lk.mapping.file_block.value());
    bool copied = false;
    {
      std::lock_guard lock(space_mutex_);
      ownership_.visit(DevRun{dev, 1}, [&](DevRun, const std::vector<Owner>& owners) {
        const bool bad = std::any_of(owners.begin(), owners.end(), [](const Owner& o) { return o.is_bad(); });
        copied = owners.size() > 1 && !bad;  // a lost block is rewritten whole, not copied
      });
    }
    if (!copied) continue;
    alignas(64) std::byte buf[kBlockSize];
    for (auto [from, to] : {std::pair{start, a}, std::pair{b, stop}}) {
      if (from >= to) continue;
      const uint64_t at = dev.value() * kBlockSize + (from - start);
      if (auto read = device_.read(at, buf, to - from); !read.has_value()) {
        return copy_failure(std::move(read).error(), at, to - from);
      }
    }
  }
  return std::nullopt;
}

uint64_t FsImpl::store_locked(Inode& inode, uint64_t offset, const std::byte* src, size_t length,
                              Records* records, bool* fresh, std::optional<CopyFailure>* copy_failed) {
  const uint64_t ino = inode.ino.value();
  uint64_t pos = offset / kBlockSize;
  const uint64_t end = ceil_blocks(offset + length);
  mappings_->wait_for_pins(inode.ino, pos, end - pos);  // a pinned range's bytes stay put
  if (copy_failed != nullptr) {
    *copy_failed = preflight_copies(inode, offset, length);
    if (*copy_failed) return 0;
  }
  const size_t records_before = records->size();
  std::vector<DevRun> allocated_runs;  // given back if a copy fails after all
  uint64_t allocated = 0;
  std::optional<DevBlock> hint;
  if (pos > 0) {
    Lookup before = inode.extents.lookup(FileBlock(pos - 1));
    if (before.mapped) hint = before.mapping.dev_block + 1;
  }
  bool failed = false;
  auto allocate_into = [&](uint64_t fb, uint64_t count, Fill fill, DevBlock old) {
    for (uint64_t done = 0; done < count && !failed;) {
      DevRun run = allocate_reserved(count - done, hint);
      allocated_runs.push_back(run);
      const DevBlock from = old + done;
      auto stored = store_run(run.start, FileBlock(fb + done), run.count, offset, src, length, fill, from);
      records->push_back(format::ExtentRecord{ino, fb + done, run.start.value(),
                                              static_cast<uint32_t>(run.count), 0});
      allocated += run.count;
      hint = run.end();
      done += run.count;
      if (!stored.has_value()) {
        // The source failed between the preflight and the copy: nothing of this
        // call is kept (its records go, its blocks go back). Bytes it already
        // stored in place stay, as after a write cut short.
        POISE_ASSERT(copy_failed != nullptr);  // only a partial block is copied
        failed = true;
        *copy_failed = copy_failure(std::move(stored).error(), from.value() * kBlockSize, run.count * kBlockSize);
      }
    }
    *fresh = true;
  };
  while (pos < end && !failed) {
    Lookup lk = inode.extents.lookup(FileBlock(pos));
    if (!lk.mapped) {
      uint64_t n = std::min(lk.hole_blocks, end - pos);
      allocate_into(pos, n, Fill::Zero, DevBlock(0));
      pos += n;
      continue;
    }
    const Extent m = lk.mapping;
    const uint64_t n = std::min(m.block_count, end - pos);
    const bool unwritten = (m.flags & format::kExtentUnwritten) != 0;
    struct Part {
      DevRun run;
      size_t owners;  // the bad marker counts: a lost block is never written in place
      bool bad;
    };
    std::vector<Part> parts;
    {
      std::lock_guard lock(space_mutex_);
      ownership_.visit(DevRun{m.dev_block, n}, [&](DevRun r, const std::vector<Owner>& owners) {
        bool bad = std::any_of(owners.begin(), owners.end(), [](const Owner& o) { return o.is_bad(); });
        parts.push_back(Part{r, owners.size(), bad});
      });
    }
    uint64_t covered = 0;
    for (const auto& [r, owners, bad] : parts) {
      if (failed) break;
      uint64_t fb = pos + (r.start - m.dev_block);
      covered += r.count;
      if (bad) {  // lost memory: a whole-block rewrite relocates it
        allocate_into(fb, r.count, Fill::Zero, r.start);
      } else if (owners > 1) {  // shared by reflink: copy on write
        allocate_into(fb, r.count, unwritten ? Fill::Zero : Fill::CopyFrom, r.start);
      } else if (unwritten) {
        (void)store_run(r.start, FileBlock(fb), r.count, offset, src, length, Fill::Zero, DevBlock(0));  // copies nothing
        records->push_back(format::ExtentRecord{ino, fb, r.start.value(), static_cast<uint32_t>(r.count), 0});
        *fresh = true;
      } else {
        (void)store_run(r.start, FileBlock(fb), r.count, offset, src, length, Fill::InPlace, DevBlock(0));  // nor this
      }
    }
    if (failed) break;
    POISE_ASSERT(covered == n);  // every mapped block has an owner
    hint = m.dev_block + n;
    pos += n;
  }
  if (failed) {
    for (const DevRun& run : allocated_runs) return_blocks(run);
    records->resize(records_before);
  }
  return allocated;
}

Result<size_t> FsImpl::for_each_chunk(uint64_t offset, uint64_t length,
                                      const std::function<Result<void>(uint64_t, uint64_t)>& fn) {
  uint64_t done = 0;
  while (done < length) {
    uint64_t pos = offset + done;
    uint64_t chunk = std::min(length - done, kChunkBytes - pos % kChunkBytes);
    auto r = fn(pos, chunk);
    if (!r.has_value()) {
      if (done == 0) return Unexpected<Error>(std::move(r).error());
      break;  // a short operation: what was done is committed and consistent
    }
    done += chunk;
  }
  return static_cast<size_t>(done);
}

Result<size_t> FsImpl::write(InodeNumber ino, uint64_t offset, std::span<const std::byte> in) {
  TRY(check_writable());
  if (in.empty()) return size_t{0};
  if (mapping::overlaps_mapping(in.data(), in.size())) return write_through_bounce(ino, offset, in);
  if (offset > kFileSizeMax || in.size() > kFileSizeMax - offset) {
    return fail(EFBIG, "write beyond the 1 PiB file size limit");
  }
  TRY(refuse_own_pins(ino));
  bool past_a_partial_end = false;  // the old last block's tail must read zeros first
  {  // ENOSPC before anything changes when the whole write cannot fit
    InodePtr inode = TRY(writable_file(ino));
    std::shared_lock lock(inode->lock);
    uint64_t first = offset / kBlockSize;
    TRY(expect_space(blocks_needed_for_store(*inode, FileBlock(first), ceil_blocks(offset + in.size()) - first),
                     "write"));
    past_a_partial_end = offset > inode->core.size_bytes && inode->core.size_bytes % kBlockSize != 0;
  }
  if (past_a_partial_end) TRY(zero_eof_tail(ino, offset));
  return for_each_chunk(offset, in.size(), [&](uint64_t pos, uint64_t len) -> Result<void> {
    TRY(write_chunk(ino, pos, in.data() + (pos - offset), len));
    return {};
  });
}

Result<size_t> FsImpl::write_chunk(InodeNumber ino, uint64_t offset, const std::byte* src, size_t length,
                                   const uint64_t* restore_changes) {
  std::optional<DevRun> consumed;  // memory that failed under a copy on write
  auto written = write_chunk_locked(ino, offset, src, length, restore_changes, &consumed);
  if (consumed) {  // as a read reports it: every owner is told, the block recorded bad
    (void)device_.notify_failure(consumed->start.value() * kBlockSize, consumed->count * kBlockSize,
                                 FailureFlags::ActionRequired);
  }
  return written;
}

Result<size_t> FsImpl::write_chunk_locked(InodeNumber ino, uint64_t offset, const std::byte* src, size_t length,
                                          const uint64_t* restore_changes, std::optional<DevRun>* consumed) {
  const bool restore = restore_changes != nullptr;
  auto file_op = TRY(begin_file_op(ino, kChunkTxBytes));
  FsImpl::Op& op = file_op.op;
  InodePtr& inode = file_op.inode;
  uint64_t first = offset / kBlockSize;
  if (restore) {
    // The copy must be of a block that is lost now, whole (to the end of file).
    const uint64_t size = inode->core.size_bytes;
    if (offset >= size) return fail(ESTALE, "the block is past the end of file now");
    if (length != std::min<uint64_t>(kBlockSize, size - offset)) {
      return fail(EINVAL, "a restored block must be whole (or reach the end of file)");
    }
    if (!lost_block_at(*inode, first)) return fail(ESTALE, "the block is not lost (rewritten or freed meanwhile)");
    // Any change since the failure (a punch or truncate inside the lost block
    // changes what it should hold without moving it): the copy may be stale.
    if (inode->changes.load(std::memory_order_relaxed) != *restore_changes) {
      return fail(ESTALE, "the file changed since the block failed");
    }
  } else {
    TRY(refuse_partial_lost_blocks(*inode, offset, length));
  }
  uint64_t need = blocks_needed_for_store(*inode, FileBlock(first), ceil_blocks(offset + length) - first);
  TRY(reserve_blocks(need));
  Records records;
  bool fresh = false;
  std::optional<CopyFailure> copy_failed;
  uint64_t used = store_locked(*inode, offset, src, length, &records, &fresh, &copy_failed);
  POISE_ASSERT(used <= need);
  unreserve_blocks(need - used);
  if (copy_failed) {  // nothing of this chunk is committed; its copies were given back
    *consumed = copy_failed->lost;
    return fail(copy_failed->error.code, "inode " + std::to_string(ino.value()) + ": a shared block could not be "
                                            "copied before the write: " + copy_failed->error.message);
  }
  if (!restore) {  // a restore brings back bytes the file had: its size and times stay
    format::InodeCore core = inode->core;
    core.size_bytes = std::max<uint64_t>(core.size_bytes, offset + length);
    core.mtime_ns = core.ctime_ns = now();
    records.push_back(core);
  }
  if (fresh) device_.drain();  // new blocks' data is durable before the records that map it
  commit(op, records, {inode.get()});
  report_change(FsChange{FsChange::Kind::Data, ino, offset, length, {}});  // stores in place have no record
  return length;
}

Result<void> FsImpl::refuse_partial_lost_blocks(const Inode& inode, uint64_t offset, uint64_t length) {
  // Only the first and last blocks of a write can be partly covered.
  for (uint64_t at : {offset, offset + length - 1}) {
    uint64_t block = at / kBlockSize;
    bool whole = offset <= block * kBlockSize && offset + length >= (block + 1) * kBlockSize;
    if (whole) continue;
    if (lost_block_at(inode, block)) {
      return fail(EIO, "inode " + std::to_string(inode.ino.value()) + ": file bytes " +
                           std::to_string(block * kBlockSize) + ".." + std::to_string((block + 1) * kBlockSize) +
                           " are lost; rewrite the whole 4 KiB block to replace them");
    }
  }
  return {};
}

void FsImpl::give_back_fresh_blocks(const Records& records) {
  for (const auto& r : records) {
    if (const auto* e = std::get_if<format::ExtentRecord>(&r)) return_blocks(DevRun{DevBlock(e->dev_block), e->block_count});
  }
}

Result<void> FsImpl::zero_partial_block(Inode& inode, uint64_t offset, uint64_t length,
                                        Records* records, bool* fresh) {
  POISE_ASSERT(offset / kBlockSize == (offset + length - 1) / kBlockSize);
  Lookup lk = inode.extents.lookup(FileBlock(offset / kBlockSize));
  if (!lk.mapped || (lk.mapping.flags & format::kExtentUnwritten) != 0) return {};  // reads as zeros
  if (bad_overlap(lk.mapping.dev_block, 1)) return {};  // lost already: nothing to zero
  uint64_t need = blocks_needed_for_store(inode, FileBlock(offset / kBlockSize), 1);
  TRY(reserve_blocks(need));
  std::optional<CopyFailure> copy_failed;
  uint64_t used = store_locked(inode, offset, nullptr, length, records, fresh, &copy_failed);
  unreserve_blocks(need - used);
  if (copy_failed) {
    // Nothing of this block is kept (its copy went back). The failure itself is
    // recorded when the block is next read (the read takes the machine check
    // again and reports it): the caller holds the file's lock here.
    return fail(copy_failed->error.code, "inode " + std::to_string(inode.ino.value()) +
                                             ": a shared block could not be copied to zero part of it: " +
                                             copy_failed->error.message);
  }
  return {};
}

Result<void> FsImpl::zero_eof_tail(InodeNumber ino, uint64_t new_size) {
  {  // the common case (an append, a block-aligned end) costs one shared lock
    InodePtr inode = TRY(writable_file(ino));
    std::shared_lock lock(inode->lock);
    if (new_size <= inode->core.size_bytes || inode->core.size_bytes % kBlockSize == 0) return {};
  }
  auto file_op = TRY(begin_file_op(ino, kSmallTxBytes));
  Inode& inode = *file_op.inode;
  const uint64_t old = inode.core.size_bytes;
  if (new_size <= old || old % kBlockSize == 0) return {};
  const uint64_t end = std::min(new_size, (old / kBlockSize + 1) * kBlockSize);
  Records records;
  bool fresh = false;
  TRY(zero_partial_block(inode, old, end - old, &records, &fresh));  // in place, or a copy
  if (records.empty()) {
    // Stored in place: fenced now, before the transaction that grows the file
    // (a fence shared with it would let a crash keep the size without the zeros).
    device_.drain();
    return {};
  }
  if (fresh) device_.drain();
  commit(file_op.op, records, {&inode});
  return {};
}

Result<void> FsImpl::truncate(InodeNumber ino, uint64_t size_bytes) {
  TRY(check_writable());
  if (size_bytes > kFileSizeMax) return fail(EFBIG, "size beyond the 1 PiB file size limit");
  TRY(zero_eof_tail(ino, size_bytes));
  auto file_op = TRY(begin_file_op(ino, kSmallTxBytes, Journal::Use::Freeing));
  FsImpl::Op& op = file_op.op;
  InodePtr& inode = file_op.inode;
  Records records;
  bool fresh = false;
  TRY(must_free(op, inode->extents.end().value() > ceil_blocks(size_bytes)));
  if (size_bytes < inode->core.size_bytes) {
    // Bytes past the end stay zero, so a later extension reads zeros.
    if (size_bytes % kBlockSize != 0) {
      TRY(zero_partial_block(*inode, size_bytes, kBlockSize - size_bytes % kBlockSize, &records, &fresh));
    }
    uint64_t keep = ceil_blocks(size_bytes);
    uint64_t end = inode->extents.end().value();
    if (end > keep) records.push_back(format::ExtentClearRecord{ino.value(), keep, end - keep});
  }
  const uint64_t old_size = inode->core.size_bytes;
  format::InodeCore core = inode->core;
  core.size_bytes = size_bytes;
  core.mtime_ns = core.ctime_ns = now();
  records.push_back(core);
  if (fresh) device_.drain();
  commit(op, records, {inode.get()});
  const uint64_t from = std::min(size_bytes, old_size) / kBlockSize * kBlockSize;
  report_change(FsChange{FsChange::Kind::Data, ino, from, 0, {}});  // the zeroed tail has no record
  if (size_bytes < old_size) {  // mapped pages past the new end fault from now on (holes included)
    uint64_t keep = ceil_blocks(size_bytes);
    mappings_->invalidate(ino, keep, ceil_blocks(old_size) - keep);
  }
  return {};
}

Result<uint64_t> FsImpl::seek(InodeNumber ino, uint64_t offset, SeekTarget target) {
  InodePtr inode = TRY(writable_file(ino));
  std::shared_lock lock(inode->lock);
  if (inode->freed) return fail(ENOENT, "file was deleted");
  const uint64_t size = inode->core.size_bytes;
  if (offset >= size) return fail(ENXIO, "offset " + std::to_string(offset) + " is at or past the end of file");
  for (uint64_t pos = offset; pos < size;) {
    Lookup lk = inode->extents.lookup(FileBlock(pos / kBlockSize));
    const bool data = lk.mapped && (lk.mapping.flags & format::kExtentUnwritten) == 0;
    if (data == (target == SeekTarget::Data)) return pos;
    const uint64_t run = lk.mapped ? lk.mapping.block_count : lk.hole_blocks;  // may be "infinite"
    const uint64_t left = ceil_blocks(size) - pos / kBlockSize;
    pos = run >= left ? size : (pos / kBlockSize + run) * kBlockSize;
  }
  if (target == SeekTarget::Hole) return size;
  return fail(ENXIO, "no data after offset " + std::to_string(offset));
}

Result<void> FsImpl::punch_hole(InodeNumber ino, uint64_t offset, uint64_t length) {
  TRY(check_writable());
  if (length == 0) return fail(EINVAL, "punch of zero bytes");
  if (offset > kFileSizeMax || length > kFileSizeMax - offset) return fail(EFBIG, "range beyond 1 PiB");
  auto file_op = TRY(begin_file_op(ino, kSmallTxBytes, Journal::Use::Freeing));
  FsImpl::Op& op = file_op.op;
  InodePtr& inode = file_op.inode;
  Records records;
  bool fresh = false;
  uint64_t end = offset + length;
  uint64_t first_full = ceil_blocks(offset);
  uint64_t last_full = end / kBlockSize;  // one past
  if (first_full < last_full) {
    records.push_back(format::ExtentClearRecord{ino.value(), first_full, last_full - first_full});
  }
  const Lookup first = inode->extents.lookup(FileBlock(first_full));
  TRY(must_free(op, first_full < last_full && (first.mapped || first.hole_blocks < last_full - first_full)));
  // Room for both partial blocks first: the first must not be zeroed in place
  // when the second then cannot be copied.
  if (offset % kBlockSize != 0 && end % kBlockSize != 0 && offset / kBlockSize != (end - 1) / kBlockSize) {
    TRY(expect_space(blocks_needed_for_store(*inode, FileBlock(offset / kBlockSize), 1) +
                         blocks_needed_for_store(*inode, FileBlock(end / kBlockSize), 1),
                     "punch-hole"));
  }
  auto zeroed = [&]() -> Result<void> {
    if (offset / kBlockSize == (end - 1) / kBlockSize && (offset % kBlockSize != 0 || end % kBlockSize != 0)) {
      return zero_partial_block(*inode, offset, length, &records, &fresh);  // within one block
    }
    if (offset % kBlockSize != 0) {
      TRY(zero_partial_block(*inode, offset, kBlockSize - offset % kBlockSize, &records, &fresh));
    }
    if (end % kBlockSize != 0) {
      TRY(zero_partial_block(*inode, end - end % kBlockSize, end % kBlockSize, &records, &fresh));
    }
    return {};
  }();
  if (!zeroed.has_value()) {
    give_back_fresh_blocks(records);  // a copy of the first partial block, never committed
    return zeroed;
  }
  format::InodeCore core = inode->core;
  core.mtime_ns = core.ctime_ns = now();
  records.push_back(core);
  if (fresh) device_.drain();
  commit(op, records, {inode.get()});
  report_change(FsChange{FsChange::Kind::Data, ino, offset, length, {}});  // partial blocks zeroed in place
  return {};
}

Result<void> FsImpl::fallocate(InodeNumber ino, uint64_t offset, uint64_t length, FallocateMode mode) {
  TRY(check_writable());
  if (length == 0) return fail(EINVAL, "fallocate of zero bytes");
  if (offset > kFileSizeMax || length > kFileSizeMax - offset) return fail(EFBIG, "range beyond 1 PiB");
  {
    InodePtr inode = TRY(writable_file(ino));
    std::shared_lock lock(inode->lock);
    uint64_t first = offset / kBlockSize;
    uint64_t holes = 0;
    for (uint64_t pos = first, end = ceil_blocks(offset + length); pos < end;) {
      Lookup lk = inode->extents.lookup(FileBlock(pos));
      uint64_t n = std::min(lk.mapped ? lk.mapping.block_count : lk.hole_blocks, end - pos);
      if (!lk.mapped) holes += n;
      pos += n;
    }
    TRY(expect_space(holes, "fallocate"));
  }
  if (mode != FallocateMode::KeepSize) TRY(zero_eof_tail(ino, offset + length));
  TRY(for_each_chunk(offset, length, [&](uint64_t pos, uint64_t len) {
    return fallocate_chunk(ino, pos, len, mode);
  }));
  return {};
}

Result<void> FsImpl::fallocate_chunk(InodeNumber ino, uint64_t offset, uint64_t length, FallocateMode mode) {
  auto file_op = TRY(begin_file_op(ino, kChunkTxBytes));
  FsImpl::Op& op = file_op.op;
  InodePtr& inode = file_op.inode;
  Records records;
  std::optional<DevBlock> hint;
  for (uint64_t pos = offset / kBlockSize, end = ceil_blocks(offset + length); pos < end;) {
    Lookup lk = inode->extents.lookup(FileBlock(pos));
    if (lk.mapped) {
      uint64_t n = std::min(lk.mapping.block_count, end - pos);
      hint = lk.mapping.dev_block + n;
      pos += n;
      continue;
    }
    uint64_t n = std::min(lk.hole_blocks, end - pos);
    if (auto reserved = reserve_blocks(n); !reserved.has_value()) {
      give_back_fresh_blocks(records);  // allocated for earlier holes, never committed
      return reserved;
    }
    for (uint64_t done = 0; done < n;) {
      DevRun run = allocate_reserved(n - done, hint);
      records.push_back(format::ExtentRecord{ino.value(), pos + done, run.start.value(),
                                             static_cast<uint32_t>(run.count), format::kExtentUnwritten});
      hint = run.end();
      done += run.count;
    }
    pos += n;
  }
  format::InodeCore core = inode->core;
  if (mode == FallocateMode::ExtendSize) core.size_bytes = std::max(core.size_bytes, offset + length);
  core.ctime_ns = now();
  records.push_back(core);
  commit(op, records, {inode.get()});
  return {};
}

Result<void> FsImpl::fsync(InodeNumber ino) {
  InodePtr inode = TRY(get_inode(ino));
  mappings_->flush_writable(ino);  // stores made through mappings of the file
  if (options_.mode != MountMode::ReadWrite) return {};
  journal_->make_durable();
  if (device_.domain() != PersistenceDomain::PageCache) return {};
  // On an emulated device the page cache stands between the stores and the
  // backing file: for a machine crash, the file's blocks (overwrites in place)
  // and the journal (its metadata) must be written back before fsync returns.
  // The checkpoint and superblocks are written back when they are written.
  std::vector<DevRun> runs;
  {
    std::shared_lock lock(inode->lock);
    inode->extents.for_each([&](const Extent& m) {
      if (!runs.empty() && runs.back().end() == m.dev_block) {
        runs.back().count += m.block_count;
      } else {
        runs.push_back(DevRun{m.dev_block, m.block_count});
      }
    });
  }
  for (const DevRun& run : runs) TRY(device_.sync_range(run.start.value() * kBlockSize, run.count * kBlockSize));
  return journal_->write_back();
}

Result<void> FsImpl::sync() {
  TRY(check_writable());
  mappings_->flush_writable(std::nullopt);
  journal_->make_durable();
  return sync_device();
}

Result<void> FsImpl::sync_device() {
  const uint64_t generation = journal_->generation();
  const uint64_t through = journal_->committed_lsn();
  TRY(device_.sync());
  TRY(journal_->write_back_error());  // an earlier write-back the host failed is reported here too
  journal_->written_back_through(generation, through);
  return {};
}

}  // namespace poise
