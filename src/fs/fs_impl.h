// FsImpl: the mounted filesystem. All metadata lives in memory (inodes, directory
// entries, extent maps) together with two derived indexes, the ownership map
// (refcounts + reverse map) and the free space. Every change is first expressed
// as journal records, committed durably, then applied to memory through the same
// functions that replay uses at mount — so the running state and the replayed
// state cannot drift apart.
//
// Locks, always taken in this order:
//   gate_        shared by every modifying operation; exclusive for checkpoint
//                and check() (which need a quiet filesystem);
//   ns_mutex_    the namespace: the inode table and every directory's entries;
//   Inode::lock  one file's attributes and extent map (ascending inode order
//                when two are needed);
//   space_mutex_ ownership map and free space;
//   the journal's own mutex.
// Reads take ns_mutex_ shared only to resolve a path, then the inode's lock.
#pragma once

#include <atomic>
#include <functional>
#include <optional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <absl/container/flat_hash_map.h>
#include <vector>

#include <condition_variable>

#include "base/clock.h"
#include "base/huge_pages.h"
#include "failure/failure_handler.h"
#include "mapping/registry.h"
#include "base/range_set.h"
#include "format/checkpoint_format.h"
#include "format/records.h"
#include "format/superblock.h"
#include "fs/extent_map.h"
#include "fs/free_space.h"
#include "fs/inode_table.h"
#include "fs/journal.h"
#include "fs/ownership.h"
#include "poise/filesystem.h"

namespace poise {

struct Inode;
// A directory's names, each pointing at its inode (which the inode table owns;
// ns_mutex_ guards both). Swiss-table storage keeps short names inline: one
// lookup per path component, few cache misses, little memory. Large tables and
// the inodes themselves live on huge pages (base/huge_pages.h).
struct NameHash {
  using is_transparent = void;
  size_t operator()(std::string_view name) const { return absl::Hash<std::string_view>{}(name); }
};
struct NameEq {
  using is_transparent = void;
  bool operator()(std::string_view a, std::string_view b) const { return a == b; }
};
// An inode's extended attributes, by name (made with its first one).
using Xattrs = std::map<std::string, std::string, std::less<>>;
using DirEntries = absl::flat_hash_map<std::string, Inode*, NameHash, NameEq,
                                       IndexAllocator<std::pair<const std::string, Inode*>>>;

struct Inode {
  explicit Inode(InodeNumber n) : ino(n) {}
  const InodeNumber ino;
  mutable std::shared_mutex lock;
  format::InodeCore core;  // guarded by `lock` (directories: by ns_mutex_)
  ExtentMap extents;       // guarded by `lock`
  // Guarded by ns_mutex_: its latest name, `name` in directory `parent`, so that
  // path_of walks up in O(depth). `name` is empty for the root, and for a file
  // whose latest name went while another remains (path_of then searches).
  InodeNumber parent;
  std::string name;
  // Directories only, guarded by ns_mutex_.
  std::unique_ptr<DirEntries> entries;
  uint32_t entry_count = 0;  // directory entries naming it; guarded by ns_mutex_
  // Extended attributes, guarded as `core` is (their changes take ns_mutex_ too).
  std::unique_ptr<Xattrs> xattrs;
  std::atomic<uint32_t> open_count{0};
  bool freed = false;  // guarded by `lock`
  // Made by open_tmpfile and not linked yet: the one file with no link that may
  // get a name. Guarded by `lock` and ns_mutex_ (both held to change it).
  bool linkable = false;
  FileType kind = FileType::Regular;  // set when the inode is made, never changed
  // Bumped by every record applied to the inode (its attributes, its extents):
  // what a restore compares with the count when the block failed.
  std::atomic<uint64_t> changes{0};
  // A direct mapping was given writable pages of it: stores then change its
  // data with no record, so each release reports the whole file changed.
  std::atomic<bool> mapped_writable{false};

  // Directories get their entry table when created and keep it: the type is
  // known without the lock (core.mode may be rewritten under it meanwhile).
  bool is_dir() const { return entries != nullptr; }
  FileType type() const { return is_dir() ? FileType::Directory : kind; }
};
using InodePtr = std::shared_ptr<Inode>;
// A new in-memory inode, in the inode slab.
inline InodePtr new_inode(InodeNumber ino) { return std::allocate_shared<Inode>(IndexAllocator<Inode>{}, ino); }
using Records = std::vector<format::JournalRecord>;

// Journal bytes reserved for a namespace operation's transaction, and for the
// largest ACL record one may add (fs/xattr.cc).
inline constexpr uint64_t kNamespaceTxBytes = 4096;
inline constexpr uint64_t kAclRecordBytesMax = 8 + 24 + 32 + format::kXattrValueBytesMax;

// Blocks needed to hold `bytes` bytes.
inline uint64_t ceil_blocks(uint64_t bytes) { return (bytes + kBlockSize - 1) / kBlockSize; }

// The checker's rules for an inode's extended attributes (fs/xattr.cc): the
// feature bit, the per-inode bound, and well-formed ACLs where they may be.
void check_xattrs(const Inode& inode, bool feature_bit, const std::string& who,
                  const std::function<void(std::string)>& problem);

// The file type that mode's S_IFMT bits name (decoders accept only known ones).
FileType file_type_of(uint32_t mode);

// Appends extent records for a mapping, split to fit the 32-bit on-media count.
// `mark`: format::kExtentShares where the records map blocks that stay mapped
// by another extent too (reflink, clone), else 0.
void append_extent_records(InodeNumber ino, const Extent& m, Records* out, uint32_t mark = 0);
// The claims of one copy (0 or 1) of a checkpoint: its root, run lists,
// sections and delta (checkpoint.cc).
void claims_of_copy(const format::CheckpointRootInfo& root, uint64_t root_block, uint32_t copy,
                    std::vector<Claim>* claims);

// The checkpoint kept one more generation for a fallback (previous_checkpoint.cc).
struct KeptCheckpoint {
  format::CheckpointRootInfo roots[2];
  uint64_t root_blocks[2] = {0, 0};
  bool read[2] = {false, false};  // a copy whose root could not be read is not held
};
// The journal written between it and the newest, one run of delta blocks per copy.
struct CarriedJournal {
  uint64_t start[2] = {0, 0};
  uint64_t blocks = 0;
};

class FsImpl final : public Filesystem, public mapping::MappingBackend, public failure::FailureTarget {
 public:
  FsImpl(Device& device, MountOptions options);
  ~FsImpl() override;

  // Mount steps (mount.cc).
  Result<void> load();
  // A filesystem loaded from `device`; where the newest checkpoint cannot be
  // read in either copy and the superblocks name the one before it, loaded from
  // that one and the journal carried with the newest (previous_checkpoint.cc).
  static Result<std::unique_ptr<FsImpl>> open(Device& device, const MountOptions& options, bool repairing = false);
  // check_device(): where `fs` (loaded from its newest checkpoint) keeps a
  // previous one, loads that one with the carried journal in its place and
  // compares the two states. One that cannot be loaded is a note (the fallback
  // is lost); a different state is a problem. `fs` is let go first.
  static void check_previous_stands_in(std::unique_ptr<FsImpl> fs, CheckReport* report);
  const std::vector<std::string>& previous_notes() const { return previous_notes_; }
  Result<void> format_new(const FormatOptions& options);
  // repair.cc: a read-write load that records, instead of refusing, what it
  // cannot apply (see Filesystem::repair), and the repair after it.
  void set_repairing() {
    repairing_ = true;
    full_checkpoint_due_.store(true, std::memory_order_relaxed);  // a repair's checkpoints are built from memory
  }
  Result<RepairReport> repair_loaded();
  CheckReport check_locked(bool compare_incremental);

  Result<void> unmount() override;
  Result<void> checkpoint(CheckpointMode mode = CheckpointMode::Auto) override;
  void shutdown() override;
  Result<InodeNumber> lookup(std::string_view path) override;
  Result<InodeNumber> create(std::string_view path, uint32_t mode = 0644,
                             std::optional<Credentials> owner = std::nullopt) override;
  Result<InodeNumber> mkdir(std::string_view path, uint32_t mode = 0755,
                            std::optional<Credentials> owner = std::nullopt) override;
  Result<void> unlink(std::string_view path) override;
  Result<void> rmdir(std::string_view path) override;
  Result<void> rename(std::string_view from, std::string_view to) override;
  Result<void> link(std::string_view existing, std::string_view new_path) override;
  Result<InodeNumber> lookup_at(InodeNumber dir, std::string_view name) override;
  Result<InodeNumber> create_at(InodeNumber dir, std::string_view name, uint32_t mode,
                                std::optional<Credentials> owner) override;
  Result<InodeNumber> mkdir_at(InodeNumber dir, std::string_view name, uint32_t mode,
                               std::optional<Credentials> owner) override;
  Result<void> unlink_at(InodeNumber dir, std::string_view name) override;
  Result<void> rmdir_at(InodeNumber dir, std::string_view name) override;
  Result<std::vector<DirEntry>> readdir_at(InodeNumber dir) override;
  Result<void> rename_at(InodeNumber from_dir, std::string_view from_name, InodeNumber to_dir,
                         std::string_view to_name, RenameFlags flags) override;
  Result<void> link_at(InodeNumber ino, InodeNumber dir, std::string_view name) override;
  Result<File> open_tmpfile(std::string_view dir, uint32_t mode, std::optional<Credentials> owner) override;
  Result<InodeNumber> create_unnamed_at(InodeNumber dir, uint32_t mode, std::optional<Credentials> owner) override;
  Result<void> link_tmpfile(const File& file, std::string_view new_path, bool replace) override;
  Result<Stat> set_attributes(InodeNumber ino, const SetAttributes& attrs) override;
  void note_access(InodeNumber ino) override;
  Result<InodeNumber> symlink(std::string_view target, std::string_view link_path,
                              std::optional<Credentials> owner) override;
  Result<InodeNumber> symlink_at(InodeNumber dir, std::string_view name, std::string_view target,
                                 std::optional<Credentials> owner) override;
  Result<std::string> readlink(InodeNumber ino) override;
  Result<InodeNumber> mknod(std::string_view path, FileType type, uint32_t mode, uint64_t rdev,
                            std::optional<Credentials> owner) override;
  Result<InodeNumber> mknod_at(InodeNumber dir, std::string_view name, FileType type, uint32_t mode, uint64_t rdev,
                               std::optional<Credentials> owner) override;
  Result<void> set_xattr(InodeNumber ino, std::string_view name, std::string_view value, XattrMode mode) override;
  Result<std::string> get_xattr(InodeNumber ino, std::string_view name) override;
  Result<std::vector<std::string>> list_xattrs(InodeNumber ino) override;
  Result<void> remove_xattr(InodeNumber ino, std::string_view name) override;
  Result<std::vector<DirEntry>> readdir(std::string_view path) override;
  Result<Stat> stat(std::string_view path) override;
  Result<Stat> stat(InodeNumber ino) override;
  Result<File> open(std::string_view path, OpenFlags flags, uint32_t mode) override;
  Result<std::string> path_of(InodeNumber ino) override;
  Result<size_t> read(InodeNumber ino, uint64_t offset, std::span<std::byte> out) override;
  Result<size_t> write(InodeNumber ino, uint64_t offset, std::span<const std::byte> in) override;
  Result<void> truncate(InodeNumber ino, uint64_t size_bytes) override;
  Result<void> fallocate(InodeNumber ino, uint64_t offset, uint64_t length,
                         FallocateMode mode) override;
  Result<void> punch_hole(InodeNumber ino, uint64_t offset, uint64_t length) override;
  Result<uint64_t> seek(InodeNumber ino, uint64_t offset, SeekTarget target) override;
  Result<void> restore_lost_block(InodeNumber ino, uint64_t offset, std::span<const std::byte> copy,
                                  std::string_view source) override;
  Result<void> fsync(InodeNumber ino) override;
  Result<void> sync() override;
  Result<void> reflink(InodeNumber src, InodeNumber dst) override;
  Result<void> clone_range(InodeNumber src, uint64_t src_offset, InodeNumber dst,
                           uint64_t dst_offset, uint64_t length) override;
  Result<std::vector<FsmapRecord>> fsmap(uint64_t offset, uint64_t length) override;
  FsInfo info() override;
  CheckReport check() override;
  std::vector<std::string> mount_warnings() const override { return mount_warnings_; }
  bool frozen() const override { return frozen_flag_.load(); }
  void set_event_listener(std::function<void(const FsEvent&)> listener) override {
    std::lock_guard lock(event_mutex_);
    event_listener_ = std::move(listener);
  }
  void report(const FsEvent& event) override {
    std::function<void(const FsEvent&)> listener;
    {
      std::lock_guard lock(event_mutex_);
      listener = event_listener_;
    }
    if (listener) listener(event);
  }
  void set_change_listener(std::function<void(const FsChange&)> listener) override {
    std::lock_guard lock(change_mutex_);
    change_listener_ = std::move(listener);
    change_listening_.store(static_cast<bool>(change_listener_));
  }
  void release(InodeNumber ino) override;
  // Frees an inode no name and no open file holds any more (a transaction).
  void free_if_unreferenced(const InodePtr& inode);
  Result<void> retain(InodeNumber ino) override;

  Result<Mapping> map(InodeNumber ino, uint64_t offset, uint64_t length, MapAccess access,
                      std::shared_ptr<MapOwner> owner) override;
  Result<Pin> pin(InodeNumber ino, uint64_t offset, uint64_t length) override;
  size_t mapping_count() override { return mappings_->mapping_count(); }
  size_t pin_count() override { return mappings_->pin_count(); }

  // mapping_backend.cc: what the mapping layer asks of the filesystem.
  Result<void> with_layout(InodeNumber ino, uint64_t first, uint64_t count, bool writable,
                           const std::function<void(uint64_t, std::span<const mapping::PageExtent>)>& fn) override;
  Result<void> prepare_write(InodeNumber ino, uint64_t page) override;
  Result<void> consume_poison(uint64_t dev_offset, uint64_t length) override;
  Result<void> wait_until_thawed() override;
  std::string describe(InodeNumber ino) override;

  // failure.cc: what the failure handler (src/failure/) asks of the filesystem.
  bool is_mounted() const override { return mounted_; }
  bool is_read_only() const override { return options_.mode == MountMode::ReadOnly; }
  uint64_t size_blocks() const override { return sb_.size_blocks; }
  failure::FailedOwners owners_of(uint64_t first_block, uint64_t count) override;
  Result<void> record_bad(uint64_t first_block, uint64_t count) override;
  // lost_at_ for the file owners of a range that just failed.
  void remember_lost(uint64_t first_block, uint64_t count);
  Result<void> rewrite_checkpoint() override;
  void checkpoint_and_shutdown() override;
  void freeze() override;
  void thaw() override;
  Result<void> sync_frozen() override;
  void with_file_locked(InodeNumber ino, const std::function<void()>& fn) override;

 private:
  // An operation in flight: holds the gate shared and a journal reservation.
  class Op {
   public:
    Op(FsImpl* fs, uint64_t reserved, bool in_reserve = false)
        : fs_(fs), reserved_(reserved), in_reserve_(in_reserve) {}
    Op(Op&& o) noexcept : fs_(o.fs_), reserved_(o.reserved_), in_reserve_(o.in_reserve_) { o.fs_ = nullptr; }
    Op(const Op&) = delete;
    ~Op();
    uint64_t reserved() const { return reserved_; }
    void consumed() { reserved_ = 0; }
    // The journal room came out of the reserve kept for freeing space.
    bool in_reserve() const { return in_reserve_; }

   private:
    FsImpl* fs_;
    uint64_t reserved_;
    bool in_reserve_;
  };

  // transaction.cc: begin, commit and apply.
  // Freeing operations may use the journal's reserve (see Journal::reserve),
  // only once a checkpoint has failed for lack of space, and then only if they
  // turn out to free space (must_free).
  Result<Op> begin_op(uint64_t tx_bytes_max, Journal::Use use = Journal::Use::Any);
  // ENOSPC if `op` took the journal's reserve but frees nothing (unlinking one
  // of several names or an open file, truncating or punching nothing mapped):
  // the reserve is kept for what makes room.
  Result<void> must_free(const Op& op, bool frees) const;
  // An Op for work that may be skipped (an access time): nullopt instead of
  // waiting for a freeze, a checkpoint or journal space.
  std::optional<Op> try_begin_op(uint64_t tx_bytes);
  Result<void> check_writable() const;
  // Commits the records durably and applies them. `locked` are inodes the caller
  // holds exclusively; any other inode touched needs ns_mutex_ held exclusively.
  void commit(Op& op, const Records& records, std::initializer_list<Inode*> locked);
  // Tells the change listener, if any, what the records changed, or one change.
  void report_changes(const Records& records);
  void report_change(const FsChange& change);
  // Applies one record to memory. Replay feeds it media contents, so it verifies
  // everything and reports corruption; at run time it must succeed.
  Result<void> apply(const format::JournalRecord& record, std::initializer_list<Inode*> locked);
  // apply() for records read from media at load: a repair logs and skips one it
  // cannot apply (EUCLEAN) instead of failing the load.
  Result<void> apply_loaded(const format::JournalRecord& record);
  // repair.cc
  Result<void> repair_tree(std::vector<std::string>* changes);
  Result<void> repair_extents_past_end(std::vector<std::string>* changes);
  Result<void> commit_repair(const Records& records);
  Inode* find_for_apply(uint64_t ino, std::initializer_list<Inode*> locked);
  Result<void> apply_extent_set(Inode& inode, const format::ExtentRecord& r);
  void apply_extent_clear(Inode& inode, FileBlock start, uint64_t count);
  void release_blocks(Inode& inode, const std::vector<Extent>& removed);
  // Marks failed blocks: out of free space, owned by the bad marker. REQUIRES: space_mutex_.
  void fence_off_locked(DevRun run);
  // The first failed block of [dev, +count), if any.
  std::optional<DevRun> bad_overlap(DevBlock dev, uint64_t count) const;
  // The device block under a written file block, if its memory failed (the
  // file's bytes there are lost). REQUIRES: inode.lock held.
  std::optional<DevBlock> lost_block_at(const Inode& inode, uint64_t file_block) const;
  // Feeds the device's known bad ranges in, before the mount completes (flow 2).
  Result<void> take_in_device_bad_ranges();
  // Stops using the device for mappings and failure notices (unmount, shutdown).
  void let_go_of_device();
  // Not mounted from now on: every new call fails, and waiters in a freeze wake.
  void stop_accepting();
  // The device bytes of [offset, +length) that read() met as poisoned, if any.
  std::optional<DevRun> poisoned_blocks(uint64_t offset, uint64_t length) const;
  int64_t now() { return clock_->now_ns(); }

  // namespace.cc: path resolution (REQUIRES ns_mutex_ held).
  Result<InodePtr> resolve(std::string_view path);
  Result<Inode*> resolve_locked(std::string_view path);  // no reference taken
  Result<InodePtr> resolve_parent(std::string_view path, std::string* leaf);
  // Where a name is made or removed: a path, or (dir set) a directory inode and one name.
  struct Place {
    std::string_view path;
    InodeNumber dir{};
    std::string_view name;
    std::string shown() const;  // for messages
    bool names_a_directory() const;  // a path ending in '/' or '/.'
  };
  Result<InodePtr> resolve_parent(const Place& place, std::string* leaf);
  InodePtr find_inode(InodeNumber ino) const;
  Result<InodePtr> get_inode(InodeNumber ino);
  // `target`: a symbolic link's (type Symlink); `rdev`: a device node's number.
  // `unnamed` (open_tmpfile): a regular file with no link, made in the directory
  // place.path (or the inode place.dir), returned open (its open_count taken)
  // and linkable.
  Result<InodeNumber> make_node(const Place& place, uint32_t mode, FileType type, std::optional<Credentials> owner,
                                std::string_view target = {}, uint64_t rdev = 0, bool unnamed = false);
  // Marks an image made before a feature (kIncompatSymlinks, kIncompatXattrs)
  // before the first record that needs it is written.
  Result<void> enable_feature(uint64_t incompat_bit);
  // Extended attributes (xattr.cc). The records that give a new inode (`core`,
  // in `parent`) the ACLs of the parent's default ACL, with core's permission
  // bits narrowed as they say. REQUIRES: ns_mutex_ held exclusively.
  // False when the parent has no (readable) default ACL: nothing changed.
  bool inherit_acls(const Inode& parent, format::InodeCore& core, Records* records) const;
  // How many blocks the space held for the next two checkpoints grows by when
  // attribute records of `bytes` (on media; the largest `record_bytes`) are added.
  uint64_t xattr_space_blocks(uint64_t bytes, uint64_t record_bytes) const;
  // Blocks of the directory section: entries of `entry_bytes`, the attributes
  // and `more_xattr_bytes` of attribute records more, the largest `record_bytes`.
  uint64_t named_section_blocks(uint64_t entry_bytes, uint64_t more_xattr_bytes, uint64_t record_bytes) const;
  // The record that rewrites the inode's access ACL for a chmod to `mode`, if it has one.
  // REQUIRES: the inode's attribute lock held.
  std::optional<format::XattrRecord> acl_after_chmod(const Inode& inode, uint32_t mode) const;
  Result<void> change_xattr(InodeNumber ino, std::string_view name, const std::string* value, XattrMode mode);
  // One name of `inode` as (directory, name): its latest when known, else
  // found by a search of every directory (a hard-linked file whose latest name
  // went). Nothing for an inode no directory names. REQUIRES: ns_mutex_ held.
  std::optional<std::pair<Inode*, std::string_view>> name_of(const Inode& inode) const;
  Result<void> remove_name(const Place& place, FileType type);
  Result<void> rename_places(const Place& from, const Place& to, RenameFlags flags);
  // RENAME_EXCHANGE: a_leaf in a_dir names b, b_leaf in b_dir names a, atomically.
  // REQUIRES: ns_mutex_ held exclusively.
  // commit() with the (at most two) regular files the caller holds locked.
  void commit_with_files(Op& op, const Records& records, const std::vector<Inode*>& files);
  Result<void> exchange_names(Op& op, const InodePtr& a_dir, const std::string& a_leaf, const InodePtr& a,
                              const InodePtr& b_dir, const std::string& b_leaf, const InodePtr& b);
  // `existing` names the file, or (empty) `ino` does.
  // `first_name`: only a file made unnamed and never linked (link_tmpfile);
  // `replace`: a file already at `place` is replaced, as by rename(2).
  Result<void> link_place(std::string_view existing, InodeNumber ino, const Place& place, bool first_name = false,
                          bool replace = false);
  // Records that free the inode once its link count is nlink_after, if that is
  // zero and nobody has it open.
  void free_inode_records(const Inode& inode, uint32_t nlink_after, Records* records);
  Stat stat_of(const Inode& inode) const;
  std::vector<DirEntry> list_locked(const Inode& dir) const;  // sorted by name

  // space.cc: allocation with the checkpoint reserve kept back.
  Result<void> reserve_blocks(uint64_t count);
  void unreserve_blocks(uint64_t count);
  DevRun allocate_reserved(uint64_t want, std::optional<DevBlock> hint);
  void return_blocks(DevRun run);
  // With `more_xattr_bytes` of attribute records, the largest `record_bytes`,
  // added to what there is (an operation asking what it would cost).
  uint64_t checkpoint_reserve_blocks(uint64_t more_xattr_bytes = 0, uint64_t record_bytes = 0) const;
  uint64_t available_blocks_locked() const;  // REQUIRES: space_mutex_ held
  // ENOSPC unless `count` more blocks could be allocated now.
  Result<void> expect_space(uint64_t count, const char* what);
  // Runs fn over [offset, +length) in chunks that each fit one transaction.
  Result<size_t> for_each_chunk(uint64_t offset, uint64_t length,
                                const std::function<Result<void>(uint64_t, uint64_t)>& fn);

  // file_io.cc
  enum class Fill : uint8_t { InPlace, Zero, CopyFrom };
  // `restore_changes` (restore_lost_block): only onto a block that is lost now,
  // of a file whose change count is still that (ESTALE otherwise), keeping the
  // file's size and times.
  Result<size_t> write_chunk(InodeNumber ino, uint64_t offset, const std::byte* src, size_t length,
                             const uint64_t* restore_changes = nullptr);
  // write_chunk under the file's lock; memory that failed under a copy on write
  // is left in *consumed for the caller to report once the lock is gone.
  Result<size_t> write_chunk_locked(InodeNumber ino, uint64_t offset, const std::byte* src, size_t length,
                                    const uint64_t* restore_changes, std::optional<DevRun>* consumed);
  // restore_lost_block for one file: ESTALE unless lost_at_ has the block.
  Result<void> restore_one(InodeNumber ino, uint64_t offset, std::span<const std::byte> copy);
  Result<void> fallocate_chunk(InodeNumber ino, uint64_t offset, uint64_t length, FallocateMode mode);
  // Blocks a store into [first, +count) must allocate: holes and shared blocks.
  uint64_t blocks_needed_for_store(const Inode& inode, FileBlock first, uint64_t count);
  // Stores [offset, +length) of src (nullptr: zeros) into the file: allocates
  // holes, copies shared blocks before writing them, converts unwritten ones.
  // Appends the mapping records; sets *fresh when new blocks hold data that must
  // be fenced before the records commit. REQUIRES: inode.lock held exclusively,
  // enough blocks reserved.
  // Returns the blocks it allocated from the reservation. The sources of the
  // partial first and last blocks, where shared, are read first: when one
  // cannot be read (memory failed under it), *copy_failed says why and nothing
  // was stored. A source that fails only during the copy ends the store: the
  // records this call appended are dropped and its blocks given back (bytes
  // already stored in place stay). A caller whose stores cover whole blocks
  // (nothing is copied) may pass nullptr.
  struct CopyFailure {
    Error error;
    std::optional<DevRun> lost;  // what a machine check lost (EIO only)
  };
  uint64_t store_locked(Inode& inode, uint64_t offset, const std::byte* src, size_t length,
                        Records* records, bool* fresh, std::optional<CopyFailure>* copy_failed = nullptr);
  CopyFailure copy_failure(Error error, uint64_t dev_offset, uint64_t length) const;
  std::optional<CopyFailure> preflight_copies(const Inode& inode, uint64_t offset, size_t length);
  // An error when the copy from `old` failed (the new blocks then hold garbage).
  Result<void> store_run(DevBlock dev, FileBlock fb, uint64_t count, uint64_t offset, const std::byte* src,
                         size_t length, Fill fill, DevBlock old);
  // Before the file grows to `new_size`: zeroes its last block past the current
  // end, where a store through a mapping may have left bytes (the file must
  // show zeros there once it grows, as XFS zeroes the EOF block). Its own
  // transaction when the block must be copied.
  Result<void> zero_eof_tail(InodeNumber ino, uint64_t new_size);
  // Zeroes [offset, +length) inside one block if it is mapped and written.
  Result<void> zero_partial_block(Inode& inode, uint64_t offset, uint64_t length, Records* records,
                                  bool* fresh);
  Result<InodePtr> writable_file(InodeNumber ino);
  // Reads into, or writes from, a buffer that lies in a direct mapping.
  // An operation that fails before it commits returns the blocks it allocated:
  // every extent record in `records` names fresh blocks nobody else owns.
  void give_back_fresh_blocks(const Records& records);
  Result<size_t> read_through_bounce(InodeNumber ino, uint64_t offset, std::span<std::byte> out);
  Result<size_t> write_through_bounce(InodeNumber ino, uint64_t offset, std::span<const std::byte> in);
  // read(), or (type Symlink) a link's target: EINVAL for the other type.
  Result<size_t> read_data(InodeNumber ino, uint64_t offset, std::span<std::byte> out, FileType type);
  Result<size_t> read_locked(InodeNumber ino, uint64_t offset, std::span<std::byte> out, FileType type,
                             std::optional<DevRun>* consumed);
  static std::string describe_type(const Inode& inode);
  // EIO if the write would cover only part of a block whose memory failed.
  Result<void> refuse_partial_lost_blocks(const Inode& inode, uint64_t offset, uint64_t length);
  // A modifying operation on one regular file: the op, the inode, its lock.
  struct FileOp {
    Op op;
    InodePtr inode;
    std::unique_lock<std::shared_mutex> lock;
  };
  Result<FileOp> begin_file_op(InodeNumber ino, uint64_t tx_bytes_max, Journal::Use use = Journal::Use::Any);
  // EDEADLK if this thread holds a pin of the file: a change would wait for it.
  Result<void> refuse_own_pins(InodeNumber ino) const;
  // Locks two inodes (or one, if they are the same) exclusively, lower number first.
  static std::pair<std::unique_lock<std::shared_mutex>, std::unique_lock<std::shared_mutex>> lock_in_order(
      Inode& a, Inode& b);

  // checkpoint.cc
  // A checkpoint placed and written but not yet current: each copy's root,
  // where it lies, and every block it took from free space.
  struct CheckpointPlacement {
    format::CheckpointRootInfo roots[2];
    uint64_t root_blocks[2] = {0, 0};
    uint32_t copies = 1;
    std::vector<DevRun> allocated;
    // The current checkpoint may stay as the previous one (nothing in memory
    // differs from it and its journal), with this generation's journal carried.
    bool may_keep_previous = false;
    // This generation's log as it lies in the region, once verified (for a
    // delta and for the carried journal alike); see verified_log().
    std::optional<std::vector<std::byte>> log;
    bool log_read = false;
  };
  // The current generation's log as it lies in the region, every transaction
  // verified: one that no longer decodes (damaged since it was replayed or
  // written) is never carried into a checkpoint. nullptr then. Read once per
  // placement.
  const std::vector<std::byte>* verified_log(CheckpointPlacement* placed);
  // Writes an incremental checkpoint where it may (place_delta_checkpoint),
  // else a full one, then makes it current (superblocks, old blocks freed,
  // a new journal generation). REQUIRES: the gate held exclusively.
  Result<void> write_checkpoint(CheckpointMode mode = CheckpointMode::Auto);
  Result<bool> place_delta_checkpoint(uint64_t generation, CheckpointPlacement* placed);
  Result<void> place_full_checkpoint(uint64_t generation, CheckpointPlacement* placed);
  Result<void> make_checkpoint_current(uint64_t generation, CheckpointPlacement* placed);
  // REQUIRES: space_mutex_.
  std::optional<DevBlock> second_copy_hint(uint64_t first_root) const;
  void count_checkpoint_blocks();
  // REQUIRES: space_mutex_ held.
  std::optional<DevRun> allocate_checkpoint_run(uint64_t want, std::optional<DevBlock> hint);
  // The journal is more than half full: unmount checkpoints so the next mount
  // replays a bounded log.
  bool journal_wants_checkpoint() const;
  // The directory tree after load: every directory reachable from the root
  // through its one name (no cycle), link counts that match the names.
  Result<void> verify_tree() const;
  // Checkpoint blocks (in every copy) that `extents` more extent records may need.
  uint64_t checkpoint_blocks_for_extents(uint64_t extents) const;
  // Loads the checkpoint whose roots are at `root_block` and `copy_root_block`
  // (zero: none), of `generation`.
  Result<void> load_checkpoint(uint64_t root_block, uint64_t copy_root_block, uint64_t generation);
  // One copy's root of `generation`, with its run lists.
  Result<format::CheckpointRootInfo> read_checkpoint_root(uint64_t at, uint64_t generation) const;

  // The previous checkpoint (previous_checkpoint.cc). At a checkpoint the current
  // one is kept one more generation, with the journal written since it carried
  // in blocks of its own, when nothing in memory differs from what the two say
  // and space allows; the next checkpoint lets both go. A mount that cannot read
  // the newest checkpoint loads them and replays the journal on top: nothing is
  // lost. Their blocks are held while kept, but count as free space: an
  // operation that needs them lets them go (release_previous_locked).
  // The kept checkpoint's blocks that the current one does not use, and the
  // carried journal's, as claims; returns how many blocks they hold that may be
  // let go (none in a fallback mount). REQUIRES: checkpoint_ stable (the gate).
  uint64_t previous_claims(std::vector<Claim>* claims) const;
  // Writes this generation's journal to a run of free blocks in each copy for
  // the placed checkpoint; false (nothing kept) where the journal does not
  // decode, no run is free or space is short.
  bool place_carried_journal(CheckpointPlacement* placed, CarriedJournal* carry);
  // Sets the superblock fields that name what is kept (none: zero).
  void name_previous_in_superblock(const std::optional<KeptCheckpoint>& kept,
                                   const std::optional<CarriedJournal>& carry);
  // Reads the kept checkpoint's roots at a normal mount, so its blocks stay held.
  void read_previous_roots();
  // Loads the previous checkpoint and replays the carried journal, in place of
  // the newest (open() decided); the current journal follows as usual.
  Result<void> load_previous_checkpoint();
  // Lets the kept checkpoint and carried journal go: their blocks are free and
  // the superblocks stop naming them at their next write. REQUIRES: space_mutex_.
  void release_previous_locked();
  // Records what is kept (previous_claims, less what is stale) as
  // previous_held_, and counts what may be let go. REQUIRES: space_mutex_.
  void note_previous_held_locked();
  // A fallback mount: the blocks of the loaded checkpoint and carried journal
  // that files map now go to stale_previous_ (before the reverse map is built).
  void find_stale_previous();
  // Cuts stale_previous_ out of checkpoint and carried-journal claims.
  void drop_stale_previous(std::vector<Claim>* claims) const;
  // One hash per inode of all the metadata says of it (attributes, extents,
  // names, extended attributes), sorted by inode number, and one (inode 0) of
  // the failed ranges: two loads of one state give equal lists.
  std::vector<std::pair<uint64_t, uint64_t>> state_digest() const;

  // The runs of device blocks that several file extents share, with their
  // counts, adjacent runs of one count merged: from the ownership map (for the
  // checkpoint's refcount section), or from the extent maps alone (at load, to
  // compare with that section).
  std::vector<format::RefcountRecord> shared_runs() const;
  std::vector<format::RefcountRecord> shared_runs_of_extents() const;
  // Compares the sharing the extent maps show with the refcount records read;
  // the first difference (a cross-link, or a lost record) as a problem.
  void compare_sharing(const std::vector<format::RefcountRecord>& recorded);
  // "inode I at file block F, ..." for every extent that maps `block`.
  std::string claimants_of(uint64_t block) const;
  // Sharing made since the base (feature kIncompatSharingMarks): at load, the
  // base's refcount records start what sharing is meant; each delta and journal
  // record goes through replay_record(), which adds what its sharing marks say;
  // once the reverse map is built, check_replayed_sharing() finds blocks that an
  // unmarked record mapped and that are shared without being meant (a
  // cross-link), as a problem.
  void expect_replayed_sharing(const std::vector<format::RefcountRecord>& recorded);
  Result<void> replay_record(const format::JournalRecord& record);
  // The flag a reflink's or clone's extent records carry: format::kExtentShares
  // once the image has sharing marks, else none. REQUIRES: an Op (the gate).
  uint32_t sharing_mark() const {
    return (sb_.feature_incompat & format::kIncompatSharingMarks) != 0 ? format::kExtentShares : 0;
  }
  void check_replayed_sharing();
  // Derives ownership and free space from the superblocks, journal, checkpoint
  // and every extent map; EUCLEAN if a file claims metadata blocks.
  Result<void> rebuild_space(OwnershipMap* ownership, FreeSpace* free,
                             std::optional<OwnershipMap::Conflict>* conflict = nullptr) const;
  // A repair's load: file extents on metadata blocks are dropped (logged) until
  // the reverse map builds.
  Result<void> rebuild_space_dropping_conflicts();
  // Both copies of the current checkpoint, as claims (those whose root was read).
  void checkpoint_claims(std::vector<Claim>* claims) const;
  Result<void> read_block(uint64_t block, std::byte* out) const;
  Result<void> write_superblocks(uint64_t root_block, uint64_t copy_root_block, uint64_t generation);
  // Both superblocks as they are (a feature bit, a kept checkpoint let go).
  Result<void> rewrite_superblocks() {
    return write_superblocks(sb_.checkpoint_root_block, sb_.checkpoint_copy_root_block, sb_.checkpoint_generation);
  }
  // Writes the whole device back (sync) and notes the journal written back
  // through what was committed before; EIO for a write-back the host failed.
  Result<void> sync_device();
  // Copies of metadata this filesystem keeps: 2 from format version 2, 1 before.
  uint32_t metadata_copies() const { return sb_.has_copies() ? 2 : 1; }
  // Version 1 to 2: places the journal's second copy in free space, after which
  // the caller's checkpoint writes both copies and a version 2 superblock.
  Result<void> add_second_copies();

  Device& device_;
  MountOptions options_;
  Clock* clock_;
  std::atomic<bool> mounted_{false};

  format::SuperblockInfo sb_;
  std::unique_ptr<Journal> journal_;
  format::CheckpointRootInfo checkpoint_;  // the current checkpoint's sections
  uint64_t checkpoint_root_block_ = 0;
  // Its second copy (version 2); generation 0 when there is none or its root
  // could not be read at mount.
  format::CheckpointRootInfo checkpoint_copy_;
  uint64_t checkpoint_copy_root_block_ = 0;
  std::vector<std::string> copy_notes_;  // damaged copies met at mount, for check(); a checkpoint rewrites them
  std::optional<KeptCheckpoint> previous_;  // the checkpoint before checkpoint_, while kept
  std::optional<CarriedJournal> carried_;   // the journal between the two (a fallback mount: between it and the newest)
  std::string fallback_reason_;             // loading from the previous checkpoint: why the newest could not be read
  std::vector<std::string> previous_notes_;  // the kept checkpoint found unusable at load (also in mount_notes_)
  bool newest_unreadable_ = false;          // load() failed in the newest checkpoint
  // Sharing without a refcount record (a cross-link) or the reverse, found at
  // load: check() reports it, a read-write mount refuses, repair resolves it.
  std::vector<std::string> sharing_problems_;
  struct ReplayedSharing {
    RangeSet meant;     // refcount records, and blocks that marked records map
    RangeSet unmarked;  // blocks that unmarked records map
  };
  std::unique_ptr<ReplayedSharing> replayed_sharing_;  // during load only
  std::vector<std::string> superblock_notes_;  // a stale or damaged copy, for check(); a checkpoint repairs it
  std::vector<std::string> mount_notes_;       // what this mount found and left as it is (a journal gap)
  std::vector<std::string> mount_warnings_;    // of those, what was not applied (mount_warnings())
  uint64_t data_start_ = 0;                // first block after the journal
  uint64_t data_end_ = 0;                  // the secondary superblock

  std::shared_mutex gate_;
  std::shared_mutex ns_mutex_;
  InodeTable inodes_;
  Inode* root_ = nullptr;  // inode 1, for path walks
  uint64_t next_ino_ = 2;
  std::atomic<uint64_t> inode_count_{0};
  std::atomic<uint64_t> dirent_count_{0};
  std::atomic<uint64_t> extent_count_{0};
  std::atomic<uint64_t> name_bytes_{0};
  // The current checkpoint's generation, for info() (which takes no lock;
  // checkpoint_ itself changes under the gate held exclusively).
  std::atomic<uint64_t> generation_shown_{0};
  std::atomic<uint64_t> xattr_count_{0};
  std::atomic<uint64_t> xattr_bytes_{0};  // on media, as xattr_bytes()
  // The largest attribute record applied since the mount: how early one may
  // close a section block (never lowered until the next mount).
  std::atomic<uint64_t> xattr_record_max_{0};
  RangeSet bad_blocks_;  // failed device blocks, in block units
  // For restore_lost_block: each file block lost in this mount, and its file's
  // change count when it failed. A restore is refused once the file changed.
  std::mutex lost_mutex_;
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> lost_at_;  // (inode, file block) -> changes; guarded
  bool holder_registered_ = false;
  bool watching_device_ = false;  // failure::watch_device (real memory only)
  // Direct mappings and pins (src/mapping/), and the device's failure holder
  // (src/failure/), which drives both through this filesystem.
  std::shared_ptr<mapping::MappingRegistry> mappings_;
  std::mutex event_mutex_;
  std::function<void(const FsEvent&)> event_listener_;  // guarded by event_mutex_
  std::atomic<bool> change_listening_{false};
  std::mutex change_mutex_;
  std::function<void(const FsChange&)> change_listener_;  // guarded by change_mutex_
  std::unique_ptr<failure::FailureHandler> failure_handler_;
  // Freeze before removal: modifying operations wait in begin_op while frozen.
  std::mutex freeze_mutex_;
  std::condition_variable thawed_;
  bool frozen_ = false;                // guarded by freeze_mutex_
  // Inodes whose last reference went while frozen: freed at the thaw (or, if
  // the device goes instead, left as orphans that the next mount frees).
  std::vector<InodeNumber> released_while_frozen_;  // guarded by freeze_mutex_
  std::atomic<bool> frozen_flag_{false};  // frozen_, for the lock-free check
  bool replaying_ = false;
  mutable std::vector<BadRange> failed_at_load_;  // machine checks under metadata reads at load
  bool repairing_ = false;
  std::vector<std::string> repair_log_;             // records a repair's load skipped
  std::vector<format::DecodedTx> lost_transactions_;  // past a mid-log gap, found by a repair's load

  mutable std::mutex space_mutex_;
  OwnershipMap ownership_;
  FreeSpace free_;
  uint64_t reserved_blocks_ = 0;  // promised to operations in flight
  uint64_t checkpoint_blocks_ = 0;  // blocks the current checkpoint occupies (space_mutex_)
  uint64_t previous_blocks_ = 0;  // blocks the kept checkpoint and carried journal hold (space_mutex_)
  std::vector<Claim> previous_held_;  // their claims in ownership_, as made (space_mutex_)
  // A fallback mount: blocks of the checkpoint it loaded (or of the carried
  // journal) that files now map, let go for space before a crash; they are
  // not claimed for it (space_mutex_).
  RangeSet stale_previous_;
  bool previous_released_ = false;  // let go for space; the superblocks still name it (space_mutex_)
  // The next checkpoint must be a full one: metadata memory failed under the
  // current one, a repair changed what no journal holds, or a failed range
  // could only be fenced in memory (no journal space for its record).
  std::atomic<bool> full_checkpoint_due_{false};
};

}  // namespace poise
