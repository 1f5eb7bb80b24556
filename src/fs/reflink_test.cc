#include <gtest/gtest.h>

#include <map>

#include "base/random.h"
#include "fs/test_util.h"

namespace poise {
namespace {
using namespace poise::testing;

// The fsmap records that name a file, keyed by (inode, file offset).
std::multimap<uint64_t, FsmapRecord> file_records(Filesystem& fs) {
  std::multimap<uint64_t, FsmapRecord> out;
  auto map = fs.fsmap(0, fs.info().size_bytes);
  EXPECT_TRUE(map.has_value());
  for (const auto& r : *map) {
    if (r.owner == OwnerKind::File) out.emplace(r.ino.value(), r);
  }
  return out;
}

TEST_F(FsTest, ReflinkSharesBlocksThenCopiesOnWrite) {
  std::string data(3 * 4096, 'o');
  write_file(*fs_, "/src", data);
  uint64_t free_before = fs_->info().free_bytes;
  InodeNumber src = *fs_->lookup("/src");
  InodeNumber dst = *fs_->create("/dst");
  ASSERT_OK(fs_->reflink(src, dst));
  EXPECT_EQ(fs_->info().free_bytes, free_before) << "a reflink copies no data";
  EXPECT_EQ(read_file(*fs_, "/dst"), data);
  auto records = file_records(*fs_);
  ASSERT_EQ(records.count(src.value()), 1u);
  ASSERT_EQ(records.count(dst.value()), 1u);
  const FsmapRecord& a = records.find(src.value())->second;
  const FsmapRecord& b = records.find(dst.value())->second;
  EXPECT_EQ(a.device_offset_bytes, b.device_offset_bytes);
  EXPECT_EQ(a.refcount, 2u);
  EXPECT_TRUE(b.shared());
  expect_clean();

  // Writing the middle block of dst copies just that block.
  ASSERT_OK(fs_->write(dst, 4096 + 10, as_bytes("new")));
  std::string changed = data;
  changed.replace(4096 + 10, 3, "new");
  EXPECT_EQ(read_file(*fs_, "/dst"), changed);
  EXPECT_EQ(read_file(*fs_, "/src"), data) << "the source never changes";
  EXPECT_EQ(fs_->info().free_bytes, free_before - 4096);
  records = file_records(*fs_);
  int shared = 0, exclusive = 0;
  for (const auto& [ino, r] : records) (r.shared() ? shared : exclusive) += int(r.length_bytes / 4096);
  EXPECT_EQ(shared, 4) << "two blocks still shared, listed once per owner";
  EXPECT_EQ(exclusive, 2) << "the middle block: one original, one copy";
  expect_clean();

  // Deleting the source leaves dst whole and unshared.
  ASSERT_OK(fs_->unlink("/src"));
  EXPECT_EQ(read_file(*fs_, "/dst"), changed);
  for (const auto& [ino, r] : file_records(*fs_)) EXPECT_EQ(r.refcount, 1u);
  remount();
  EXPECT_EQ(read_file(*fs_, "/dst"), changed);
  expect_clean();
}

// A partial write to a shared block copies the rest of the block first; when
// that block's memory fails under the copy, the write fails with EIO and the
// loss is recorded for every sharer, instead of the process aborting (before)
// or the copy's gap keeping garbage. The copies are given back.
TEST_F(FsTest, MemoryFailingUnderACopyOnWriteFailsTheWriteAndIsRecorded) {
  const std::string data(4 * 4096, 's');
  write_file(*fs_, "/src", data);
  ASSERT_OK(fs_->create("/dst"));
  ASSERT_OK(fs_->reflink(*fs_->lookup("/src"), *fs_->lookup("/dst")));
  const uint64_t shared = device_offset_of(*fs_, "/dst", 4096);
  const uint64_t free_before = fs_->info().free_bytes;
  ASSERT_OK(device_->inject_poison(shared + 2048, 64));  // not yet known to the filesystem
  auto written = fs_->write(*fs_->lookup("/dst"), 4096 + 10, as_bytes("partial"));
  ASSERT_FALSE(written.has_value());
  EXPECT_EQ(written.error().code, EIO) << written.error().message;
  EXPECT_EQ(fs_->info().free_bytes, free_before) << "the copy's block was not given back";
  for (const char* f : {"/src", "/dst"}) {
    EXPECT_EQ(read_range(*fs_, f, 4096, 1).error().code, EIO) << f;
    EXPECT_EQ(*read_range(*fs_, f, 0, 4096), data.substr(0, 4096)) << f;
    EXPECT_EQ(*read_range(*fs_, f, 8192, 8192), data.substr(8192)) << f;
  }
  bool recorded = false;
  for (const auto& r : *fs_->fsmap(shared, 4096)) recorded |= r.owner == OwnerKind::Bad;
  EXPECT_TRUE(recorded);
  // A whole-block rewrite replaces the lost block, as for any lost block.
  ASSERT_OK(fs_->write(*fs_->lookup("/dst"), 4096, as_bytes(std::string(4096, 'n'))));
  EXPECT_EQ(*read_range(*fs_, "/dst", 4096, 4096), std::string(4096, 'n'));
  expect_clean();
  remount();
  EXPECT_EQ(read_range(*fs_, "/src", 4096, 1).error().code, EIO);
  expect_clean();
}

// The review's cases: a failed copy must change nothing and give back exactly
// what it took. (1) A write over a reserved-but-unwritten extent and a failing
// shared block: the file's own blocks stay its own (they were handed to free
// space, so two files could share them). (2) A truncate that must copy a
// failing shared block: nothing leaks. (3) A write whose first block is the
// file's own and whose last is a failing shared one: the first is unchanged.
TEST_F(FsTest, AFailedCopyOnWriteChangesNothingAndGivesBackOnlyWhatItTook) {
  const std::string data(3 * 4096, 'q');
  write_file(*fs_, "/src", data);
  const InodeNumber src = *fs_->lookup("/src");
  // Each case copies its own shared block, so none was recorded bad by another.
  auto poisoned_clone = [&](const std::string& path, uint64_t src_block, uint64_t dst_block) {
    if (!fs_->lookup(path)) {
      EXPECT_TRUE(fs_->create(path).has_value());
    }
    const InodeNumber ino = *fs_->lookup(path);
    EXPECT_TRUE(fs_->clone_range(src, src_block * 4096, ino, dst_block * 4096, 4096).has_value());
    EXPECT_TRUE(device_->inject_poison(device_offset_of(*fs_, path, dst_block * 4096) + 2048, 64).has_value());
    return ino;
  };
  // (1)
  ASSERT_OK(fs_->create("/f"));
  ASSERT_OK(fs_->fallocate(*fs_->lookup("/f"), 0, 2 * 4096, FallocateMode::ExtendSize));
  const InodeNumber f = poisoned_clone("/f", 0, 2);
  uint64_t free_before = fs_->info().free_bytes;
  auto written = fs_->write(f, 100, as_bytes(std::string(2 * 4096 - 100 + 10, 'w')));
  ASSERT_FALSE(written.has_value());
  EXPECT_EQ(written.error().code, EIO) << written.error().message;
  EXPECT_EQ(fs_->info().free_bytes, free_before);
  EXPECT_EQ(*read_range(*fs_, "/f", 0, 4096), std::string(4096, '\0')) << "the unwritten extent changed";
  expect_clean();
  // (2)
  const InodeNumber g = poisoned_clone("/g", 1, 0);
  free_before = fs_->info().free_bytes;
  auto cut = fs_->truncate(g, 3000);  // keeps bytes 0..3000, which hold the failed line
  ASSERT_FALSE(cut.has_value());
  EXPECT_EQ(cut.error().code, EIO) << cut.error().message;
  EXPECT_EQ(fs_->info().free_bytes, free_before);
  EXPECT_EQ(fs_->stat(g)->size_bytes, 4096u);
  expect_clean();
  // (3)
  write_file(*fs_, "/h", std::string(2 * 4096, 'o'));
  const InodeNumber h = poisoned_clone("/h", 2, 2);
  free_before = fs_->info().free_bytes;
  auto mixed = fs_->write(h, 4000, as_bytes(std::string(5192, 'm')));  // blocks 0, 1 (own), 2 (shared) up to 1000
  ASSERT_FALSE(mixed.has_value());
  EXPECT_EQ(mixed.error().code, EIO) << mixed.error().message;
  EXPECT_EQ(*read_range(*fs_, "/h", 0, 2 * 4096), std::string(2 * 4096, 'o')) << "a failed write changed the file";
  EXPECT_EQ(fs_->info().free_bytes, free_before);
  expect_clean();
  remount();
  expect_clean();
}

TEST_F(FsTest, CloneRangeAlignmentAndSharing) {
  std::string data(5 * 4096 + 100, 's');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('a' + i / 4096);
  write_file(*fs_, "/s", data);
  InodeNumber s = *fs_->lookup("/s");
  InodeNumber d = *fs_->create("/d");
  EXPECT_ERRNO(fs_->clone_range(s, 100, d, 0, 4096), EINVAL);
  EXPECT_ERRNO(fs_->clone_range(s, 0, d, 0, 100), EINVAL);
  EXPECT_ERRNO(fs_->clone_range(s, 0, s, 4096, 8192), EINVAL);
  ASSERT_OK(fs_->clone_range(s, 4096, d, 8192, 2 * 4096));
  std::string expected = std::string(8192, '\0') + data.substr(4096, 8192);
  EXPECT_EQ(read_file(*fs_, "/d"), expected);
  // A length reaching the source's end may be unaligned, but its partial last
  // block is shared whole: it may not land inside the destination, whose bytes
  // after the range it would replace with zeros (Linux refuses it too)...
  EXPECT_ERRNO(fs_->clone_range(s, 5 * 4096, d, 0, 1 << 20), EINVAL);
  EXPECT_ERRNO(fs_->clone_range(s, 5 * 4096, d, 0, 100), EINVAL);
  EXPECT_EQ(read_file(*fs_, "/d"), expected);
  // ... only at (or past) the destination's end, which it then becomes.
  ASSERT_OK(fs_->clone_range(s, 5 * 4096, d, expected.size(), 1 << 20));
  expected += data.substr(5 * 4096);
  EXPECT_EQ(read_file(*fs_, "/d"), expected);
  EXPECT_EQ(fs_->stat(d)->size_bytes, expected.size());
  expect_clean();
}

// Randomized operations against a model of what every file holds; the model and
// the filesystem must agree after every step, across remounts and crashes.
TEST_F(FsTest, RandomOperationsMatchAModel) {
  Rng rng(test_seed("FsTest.RandomOperationsMatchAModel"));
  std::map<std::string, std::string> model;
  auto pick = [&]() -> std::string {
    auto it = model.begin();
    std::advance(it, rng.below(model.size()));
    return it->first;
  };
  std::map<int, int> done;  // operations carried out, by kind
  for (int step = 0; step < 1500; ++step) {
    uint64_t choice = rng.below(100);
    ++done[static_cast<int>(choice / 10)];
    std::string name = "/f" + std::to_string(rng.below(12));
    if (model.empty() || choice < 15) {
      if (model.count(name) == 0) {
        ASSERT_OK(fs_->create(name));
        model[name] = "";
      }
    } else if (choice < 50) {  // write somewhere, often near the end
      std::string f = pick();
      uint64_t off = rng.chance(2) ? model[f].size() : rng.below(model[f].size() + 20000);
      std::string piece(1 + rng.below(rng.chance(4) ? 30000 : 500), static_cast<char>('A' + rng.below(26)));
      ASSERT_OK(fs_->write(*fs_->lookup(f), off, as_bytes(piece)));
      if (model[f].size() < off + piece.size()) model[f].resize(off + piece.size(), '\0');
      model[f].replace(off, piece.size(), piece);
    } else if (choice < 60) {  // reflink onto another (possibly new) file
      std::string f = pick();
      if (f == name) continue;
      if (model.count(name) == 0) ASSERT_OK(fs_->create(name));
      ASSERT_OK(fs_->reflink(*fs_->lookup(f), *fs_->lookup(name)));
      model[name] = model[f];
    } else if (choice < 67) {  // clone a block-aligned range
      std::string f = pick(), g = pick();
      if (f == g || model[f].size() < 4096) continue;
      uint64_t blocks = model[f].size() / 4096;
      uint64_t so = rng.below(blocks) * 4096;
      uint64_t len = (1 + rng.below(blocks - so / 4096)) * 4096;
      uint64_t dof = rng.below(8) * 4096;
      ASSERT_OK(fs_->clone_range(*fs_->lookup(f), so, *fs_->lookup(g), dof, len));
      if (model[g].size() < dof + len) model[g].resize(dof + len, '\0');
      model[g].replace(dof, len, model[f].substr(so, len));
    } else if (choice < 75) {
      std::string f = pick();
      uint64_t size = rng.below(model[f].size() + 10000);
      ASSERT_OK(fs_->truncate(*fs_->lookup(f), size));
      model[f].resize(size, '\0');
    } else if (choice < 80) {
      std::string f = pick();
      uint64_t off = rng.below(model[f].size() + 1);
      uint64_t len = 1 + rng.below(20000);
      ASSERT_OK(fs_->punch_hole(*fs_->lookup(f), off, len));
      if (off < model[f].size()) {
        uint64_t n = std::min<uint64_t>(len, model[f].size() - off);
        model[f].replace(off, n, std::string(n, '\0'));
      }
    } else if (choice < 88) {
      std::string f = pick();
      ASSERT_OK(fs_->unlink(f));
      model.erase(f);
    } else if (choice < 94) {
      std::string f = pick();
      ASSERT_OK(fs_->rename(f, name));
      std::string content = model[f];
      model.erase(f);
      model[name] = content;
    } else if (choice < 97) {
      remount();
    } else {
      crash_and_mount();
    }
    if (step % 50 == 0 || choice >= 94) {
      for (const auto& [f, content] : model) ASSERT_EQ(read_file(*fs_, f), content) << f << " at step " << step;
      CheckReport r = fs_->check();
      ASSERT_TRUE(r.clean()) << r.problems.front() << " at step " << step;
    }
  }
  for (const auto& [f, content] : model) ASSERT_EQ(read_file(*fs_, f), content) << f;
  std::string tally;
  uint64_t bytes = 0;
  for (const auto& [kind, n] : done) tally += " " + std::to_string(kind) + ":" + std::to_string(n);
  for (const auto& [f, content] : model) bytes += content.size();
  std::fprintf(stderr, "operations by decile:%s; %zu files, %llu bytes\n", tally.c_str(), model.size(),
               static_cast<unsigned long long>(bytes));
  remount();
  for (const auto& [f, content] : model) ASSERT_EQ(read_file(*fs_, f), content) << f;
  expect_clean();
}

}  // namespace
}  // namespace poise
