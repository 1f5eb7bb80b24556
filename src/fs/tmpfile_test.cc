// Unnamed files (Filesystem::open_tmpfile, as O_TMPFILE): in no directory
// until linked, named (or replacing a file) in one transaction, and freed
// whole if never named, whether closed or left by a crash.
#include <gtest/gtest.h>

#include "fs/mapping_test_util.h"
#include "fs/test_util.h"

namespace poise {
namespace {
using namespace poise::testing;  // NOLINT(google-build-using-namespace)

// open_tmpfile (O_TMPFILE): a file in no directory until it is linked, freed
// whole if it never is (closed, or left by a crash).
TEST_F(FsTest, AnUnnamedFileIsInNoDirectoryUntilItIsLinked) {
  ASSERT_OK(fs_->mkdir("/d"));
  ASSERT_OK(fs_->create("/d/taken"));
  auto f = fs_->open_tmpfile("/d", 0640);
  ASSERT_OK(f);
  ASSERT_OK(f->write(0, as_bytes(std::string("unnamed bytes"))));
  EXPECT_EQ(fs_->readdir("/d")->size(), 1u) << "it has no name";
  EXPECT_EQ(fs_->stat(f->ino())->nlink, 0u);
  EXPECT_EQ(fs_->stat(f->ino())->mode, 0640u);
  EXPECT_ERRNO(fs_->link_tmpfile(*f, "/d/taken"), EEXIST);
  EXPECT_ERRNO(fs_->link_tmpfile(*f, "/d", true), EISDIR);  // (the root's entry "d")
  ASSERT_OK(fs_->link_tmpfile(*f, "/d/named"));
  EXPECT_EQ(fs_->stat("/d/named")->ino, f->ino());
  EXPECT_EQ(fs_->stat("/d/named")->nlink, 1u);
  EXPECT_EQ(read_file(*fs_, "/d/named"), "unnamed bytes");
  // Once named it is an ordinary file: linked again only by its path, and
  // unlinked while open, it gets no name again.
  EXPECT_ERRNO(fs_->link_tmpfile(*f, "/d/second"), EINVAL);
  ASSERT_OK(fs_->unlink("/d/named"));
  EXPECT_ERRNO(fs_->link_tmpfile(*f, "/d/again"), ENOENT);
  EXPECT_ERRNO(fs_->open_tmpfile("/d/taken"), ENOTDIR);
  EXPECT_ERRNO(fs_->open_tmpfile("/missing"), ENOENT);
  EXPECT_ERRNO(fs_->open_tmpfile(""), EINVAL);
  File closed;
  EXPECT_ERRNO(fs_->link_tmpfile(closed, "/d/x"), EBADF);
  f->close();
  remount();
  EXPECT_EQ(fs_->readdir("/d")->size(), 1u);
  expect_clean();
}

// With `replace`, the name is taken over in one transaction, as rename does:
// the old file goes with its last name, another hard link keeps it.
TEST_F(FsTest, AnUnnamedFileReplacesAFileInOneStep) {
  write_file(*fs_, "/old", "old bytes");
  ASSERT_OK(fs_->link("/old", "/other-name"));
  write_file(*fs_, "/lonely", "lonely bytes");
  const FsInfo before = fs_->info();
  for (const char* path : {"/old", "/lonely"}) {
    auto f = fs_->open_tmpfile("/");
    ASSERT_OK(f);
    ASSERT_OK(f->write(0, as_bytes(std::string("new bytes"))));
    ASSERT_OK(fs_->link_tmpfile(*f, path, true));
    EXPECT_EQ(fs_->stat(path)->ino, f->ino());
  }
  EXPECT_EQ(read_file(*fs_, "/old"), "new bytes");
  EXPECT_EQ(read_file(*fs_, "/other-name"), "old bytes");
  EXPECT_EQ(fs_->stat("/other-name")->nlink, 1u);
  EXPECT_EQ(read_file(*fs_, "/lonely"), "new bytes");
  EXPECT_EQ(fs_->info().files, before.files + 1) << "/lonely's old inode went with its last name";
  crash_and_mount();
  EXPECT_EQ(read_file(*fs_, "/old"), "new bytes");
  EXPECT_EQ(read_file(*fs_, "/lonely"), "new bytes");
  EXPECT_EQ(read_file(*fs_, "/other-name"), "old bytes");
  expect_clean();
}

TEST_F(FsTest, AnUnnamedFileThatIsNeverLinkedIsFreed) {
  const FsInfo before = fs_->info();
  const std::string mib(1 << 20, 'u');
  {
    auto f = fs_->open_tmpfile("/");
    ASSERT_OK(f);
    ASSERT_OK(f->write(0, as_bytes(mib)));
    EXPECT_LT(fs_->info().free_bytes, before.free_bytes);
  }  // closed
  EXPECT_EQ(fs_->info().free_bytes, before.free_bytes);
  EXPECT_EQ(fs_->info().files, before.files);
  auto f = fs_->open_tmpfile("/");
  ASSERT_OK(f);
  ASSERT_OK(f->write(0, as_bytes(mib)));
  ASSERT_OK(f->fsync());
  fs_->shutdown();  // a crash with the file open: nothing more is written
  f->close();       // (the release of a shut-down filesystem writes nothing)
  fs_.reset();
  mount();  // the next mount frees it
  EXPECT_EQ(fs_->info().free_bytes, before.free_bytes);
  EXPECT_EQ(fs_->info().files, before.files);
  expect_clean();
}

// Two features at once: the replaced file is open and mapped. Its reader and
// its mapping keep the old bytes (an open file outlives its last name), and
// its blocks come back only once both are gone.
class TmpfileMappingTest : public MappingTest {};

TEST_F(TmpfileMappingTest, AReplacedFileThatIsOpenAndMappedKeepsItsBytesUntilLetGo) {
  write_file(*fs_, "/f", pattern('o', 2 * kPage));
  const FsInfo before = fs_->info();
  auto old = fs_->open("/f");
  ASSERT_OK(old);
  Mapping m = map("/f", 0, 2 * kPage, MapAccess::Read);
  auto f = fs_->open_tmpfile("/");
  ASSERT_OK(f);
  ASSERT_OK(f->write(0, as_bytes(pattern('n', kPage))));
  ASSERT_OK(fs_->link_tmpfile(*f, "/f", true));
  EXPECT_EQ(read_file(*fs_, "/f"), pattern('n', kPage));
  std::string kept(2 * kPage, '\0');
  ASSERT_OK(old->read(0, {reinterpret_cast<std::byte*>(kept.data()), kept.size()}));
  EXPECT_EQ(kept, pattern('o', 2 * kPage)) << "the open file lost its bytes with its name";
  EXPECT_EQ(*load(m.data(), 2 * kPage), pattern('o', 2 * kPage)) << "the mapping shows other bytes";
  EXPECT_EQ(fs_->info().free_bytes, before.free_bytes - kPage) << "the old file's blocks went while it was open";
  old->close();
  EXPECT_EQ(fs_->info().free_bytes, before.free_bytes - kPage) << "the old file's blocks went while it was mapped";
  m = Mapping();
  EXPECT_EQ(fs_->info().free_bytes, before.free_bytes + kPage) << "the old file's two blocks did not come back";
  expect_clean();
}

// create_unnamed_at: the same file for a caller that holds inodes by number
// (the FUSE mount's O_TMPFILE): open once, named by link_at, freed by release.
TEST_F(FsTest, AnUnnamedFileMadeByInodeNumberIsNamedByLinkAtOrFreedByRelease) {
  auto d = fs_->mkdir("/d");
  ASSERT_OK(d);
  auto file = fs_->create("/d/file");
  ASSERT_OK(file);
  const FsInfo before = fs_->info();
  auto kept = fs_->create_unnamed_at(*d, 0600, Credentials{1000, 1000, 022});
  ASSERT_OK(kept);
  ASSERT_OK(fs_->write(*kept, 0, as_bytes(std::string("linked by number"))));
  EXPECT_EQ(fs_->stat(*kept)->nlink, 0u);
  EXPECT_EQ(fs_->stat(*kept)->uid, 1000u);
  EXPECT_EQ(fs_->readdir("/d")->size(), 1u) << "it has no name";
  ASSERT_OK(fs_->link_at(*kept, *d, "named"));
  EXPECT_EQ(fs_->stat("/d/named")->ino, *kept);
  fs_->release(*kept);
  EXPECT_EQ(read_file(*fs_, "/d/named"), "linked by number") << "release freed a named file";

  auto dropped = fs_->create_unnamed_at(*d, 0600);
  ASSERT_OK(dropped);
  ASSERT_OK(fs_->write(*dropped, 0, as_bytes(std::string(1 << 20, 'u'))));
  EXPECT_LT(fs_->info().free_bytes, before.free_bytes - (1 << 20));
  fs_->release(*dropped);  // its only reference, never named: freed
  EXPECT_ERRNO(fs_->stat(*dropped), ENOENT);
  EXPECT_ERRNO(fs_->link_at(*dropped, *d, "late"), ENOENT);
  EXPECT_ERRNO(fs_->create_unnamed_at(*file), ENOTDIR);
  EXPECT_ERRNO(fs_->create_unnamed_at(InodeNumber(987654)), ENOENT);
  remount();
  EXPECT_EQ(read_file(*fs_, "/d/named"), "linked by number");
  expect_clean();
}

}  // namespace
}  // namespace poise
