#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "base/random.h"
#include "format/ondisk.h"
#include "format/superblock.h"
#include "fs/test_util.h"

namespace poise {
namespace {
using namespace poise::testing;

TEST_F(FsTest, FreshFilesystemIsEmptyAndClean) {
  auto entries = fs_->readdir("/");
  ASSERT_OK(entries);
  EXPECT_TRUE(entries->empty());
  FsInfo info = fs_->info();
  EXPECT_EQ(info.size_bytes, 64ull << 20);
  EXPECT_EQ(info.files, 1u);
  EXPECT_GT(info.free_bytes, 60ull << 20);
  EXPECT_EQ(info.used_bytes + info.free_bytes, info.size_bytes);
  expect_clean();
}

TEST_F(FsTest, AnEmptyPathNamesNothing) {
  write_file(*fs_, "/f", "data");
  EXPECT_ERRNO(fs_->stat(""), EINVAL);
  EXPECT_ERRNO(fs_->lookup(""), EINVAL);
  EXPECT_ERRNO(fs_->readdir(""), EINVAL);
  EXPECT_ERRNO(fs_->create(""), EINVAL);
  EXPECT_ERRNO(fs_->mkdir(""), EINVAL);
  EXPECT_ERRNO(fs_->rmdir(""), EINVAL);
  EXPECT_ERRNO(fs_->unlink(""), EINVAL);
  EXPECT_ERRNO(fs_->rename("", "/g"), EINVAL);
  EXPECT_ERRNO(fs_->rename("/f", ""), EINVAL);
  EXPECT_ERRNO(fs_->open(""), EINVAL);
  EXPECT_EQ(read_file(*fs_, "/f"), "data");
  // A path without a leading slash is still relative to the root, for every call.
  ASSERT_OK(fs_->mkdir("rel"));
  ASSERT_OK(fs_->create("rel/f"));
  ASSERT_OK(fs_->link("f", "g"));
  ASSERT_OK(fs_->rename("g", "rel/g"));
  ASSERT_OK(fs_->stat("/rel/g"));
  ASSERT_OK(fs_->unlink("rel/g"));
  ASSERT_OK(fs_->unlink("rel/f"));
  ASSERT_OK(fs_->rmdir("rel"));
  EXPECT_EQ(read_file(*fs_, "f"), "data");
}

// A NUL byte in a name would be stored and then refused by every later mount
// (the checker's rule for names): every call refuses it up front. (The CLI
// cannot pass one; a poise serve client can.)
TEST_F(FsTest, ANulInAPathIsRefusedAndNeverStored) {
  write_file(*fs_, "/f", "data");
  ASSERT_OK(fs_->mkdir("/d"));
  const std::string nul("/d/a\0b", 6);
  EXPECT_ERRNO(fs_->create(nul), EINVAL);
  EXPECT_ERRNO(fs_->mkdir(nul), EINVAL);
  EXPECT_ERRNO(fs_->rename("/f", nul), EINVAL);
  EXPECT_ERRNO(fs_->link("/f", nul), EINVAL);
  EXPECT_ERRNO(fs_->open(nul, OpenFlags::Create), EINVAL);
  EXPECT_ERRNO(fs_->stat(std::string("/f\0", 3)), EINVAL);
  EXPECT_ERRNO(fs_->mkdir(std::string("/x\0/y", 5)), EINVAL);
  remount();
  EXPECT_EQ(read_file(*fs_, "/f"), "data");
  EXPECT_TRUE(fs_->check().clean());
}

TEST_F(FsTest, ATrailingSlashNamesOnlyADirectory) {
  write_file(*fs_, "/f", "data");
  ASSERT_OK(fs_->mkdir("/d/"));
  ASSERT_OK(fs_->stat("/d/"));
  ASSERT_OK(fs_->stat("/d/."));
  EXPECT_ERRNO(fs_->stat("/f/"), ENOTDIR);
  EXPECT_ERRNO(fs_->stat("/f/."), ENOTDIR);
  EXPECT_ERRNO(fs_->open("/f/"), ENOTDIR);
  EXPECT_ERRNO(fs_->unlink("/f/"), ENOTDIR);
  EXPECT_ERRNO(fs_->rename("/f/", "/g"), ENOTDIR);
  EXPECT_ERRNO(fs_->rename("/f", "/g/"), ENOTDIR);
  EXPECT_ERRNO(fs_->link("/f", "/h/"), ENOTDIR);
  EXPECT_ERRNO(fs_->create("/new/"), EISDIR);
  EXPECT_ERRNO(fs_->open("/new/", OpenFlags::Create), EISDIR);
  EXPECT_ERRNO(fs_->stat("/new"), ENOENT);
  ASSERT_OK(fs_->rename("/d/", "/e/"));  // directories may be named either way
  ASSERT_OK(fs_->rmdir("/e/"));
  EXPECT_EQ(read_file(*fs_, "/f"), "data");
  expect_clean();
}

// The calls a FUSE mount makes: a directory inode and one name, as openat(2)
// and friends. Each behaves as its path version, survives a remount, and
// refuses a name that is not one component.
TEST_F(FsTest, NamespaceCallsRelativeToADirectory) {
  auto d = fs_->mkdir_at(kRootInode, "d", 0750);
  ASSERT_OK(d);
  auto f = fs_->create_at(*d, "f", 0600, Credentials{7, 8});
  ASSERT_OK(f);
  write_file(*fs_, "/d/f", "hello");
  EXPECT_EQ(*fs_->lookup("/d/f"), *f);
  EXPECT_EQ(*fs_->lookup_at(*d, "f"), *f);
  EXPECT_EQ(*fs_->lookup_at(*d, "."), *d);
  EXPECT_EQ(*fs_->lookup_at(*d, ".."), kRootInode);
  EXPECT_EQ(*fs_->lookup_at(kRootInode, ".."), kRootInode);
  EXPECT_ERRNO(fs_->lookup_at(*d, "missing"), ENOENT);
  EXPECT_ERRNO(fs_->lookup_at(*f, "x"), ENOTDIR);
  EXPECT_ERRNO(fs_->lookup_at(InodeNumber(999), "x"), ENOENT);
  EXPECT_EQ(fs_->stat(*f)->uid, 7u);
  for (std::string_view bad : {std::string_view(""), std::string_view("a/b"), std::string_view("."),
                               std::string_view(".."), std::string_view("a\0b", 3)}) {
    SCOPED_TRACE(std::string(bad));
    EXPECT_ERRNO(fs_->create_at(*d, bad), EINVAL);
    EXPECT_ERRNO(fs_->mkdir_at(*d, bad), EINVAL);
    EXPECT_ERRNO(fs_->unlink_at(*d, bad), EINVAL);
    EXPECT_ERRNO(fs_->link_at(*f, *d, bad), EINVAL);
  }
  EXPECT_ERRNO(fs_->create_at(*d, std::string(256, 'n')), ENAMETOOLONG);
  EXPECT_ERRNO(fs_->create_at(*f, "x"), ENOTDIR);
  EXPECT_ERRNO(fs_->create_at(*d, "f"), EEXIST);

  ASSERT_OK(fs_->link_at(*f, kRootInode, "g"));
  EXPECT_EQ(fs_->stat(*f)->nlink, 2u);
  EXPECT_ERRNO(fs_->link_at(*d, kRootInode, "dl"), EPERM);
  // NoReplace: the existing destination stays, and so does the source.
  EXPECT_ERRNO(fs_->rename_at(*d, "f", kRootInode, "g", RenameFlags::NoReplace), EEXIST);
  ASSERT_OK(fs_->create_at(kRootInode, "h"));
  EXPECT_ERRNO(fs_->rename_at(kRootInode, "h", *d, "f", RenameFlags::NoReplace), EEXIST);
  EXPECT_EQ(read_file(*fs_, "/d/f"), "hello");
  ASSERT_OK(fs_->rename_at(kRootInode, "h", *d, "h2", RenameFlags::NoReplace));
  ASSERT_OK(fs_->rename_at(*d, "h2", *d, "f"));  // replaces f: g keeps the data
  EXPECT_EQ(fs_->stat(*f)->nlink, 1u);
  EXPECT_EQ(read_file(*fs_, "/g"), "hello");
  EXPECT_ERRNO(fs_->rmdir_at(kRootInode, "d"), ENOTEMPTY);
  EXPECT_ERRNO(fs_->rmdir_at(*d, "f"), ENOTDIR);
  EXPECT_ERRNO(fs_->unlink_at(kRootInode, "d"), EISDIR);
  ASSERT_OK(fs_->unlink_at(*d, "f"));
  {
    // A file whose last name is gone cannot get a new one, even while open.
    auto open = fs_->open("/g");
    ASSERT_OK(open);
    ASSERT_OK(fs_->unlink_at(kRootInode, "g"));
    EXPECT_ERRNO(fs_->link_at(*f, kRootInode, "again"), ENOENT);
  }
  ASSERT_OK(fs_->mkdir_at(*d, "sub"));
  remount();
  auto names = fs_->readdir("/d");
  ASSERT_OK(names);
  ASSERT_EQ(names->size(), 1u);
  EXPECT_EQ((*names)[0].name, "sub");
  EXPECT_ERRNO(fs_->lookup("/g"), ENOENT);
  EXPECT_EQ(fs_->stat("/d")->mode, 0750u);
  expect_clean();
}

// The base class's versions (what a remote filesystem uses) go through paths
// and must agree with the mounted filesystem's own.
TEST_F(FsTest, PathFallbacksOfTheDirectoryCallsAgree) {
  Filesystem& fs = *fs_;
  auto d = fs.Filesystem::mkdir_at(kRootInode, "d");
  ASSERT_OK(d);
  auto f = fs.Filesystem::create_at(*d, "f");
  ASSERT_OK(f);
  EXPECT_EQ(*fs.Filesystem::lookup_at(*d, "f"), *f);
  EXPECT_EQ(*fs.lookup("/d/f"), *f);
  ASSERT_OK(fs.Filesystem::link_at(*f, kRootInode, "g"));
  ASSERT_OK(fs.Filesystem::rename_at(kRootInode, "g", *d, "g2"));
  EXPECT_EQ(*fs.lookup("/d/g2"), *f);
  EXPECT_ERRNO(fs.Filesystem::rename_at(*d, "g2", *d, "f", RenameFlags::NoReplace), ENOTSUP);
  EXPECT_ERRNO(fs.Filesystem::create_at(*d, "a/b"), EINVAL);
  ASSERT_OK(fs.Filesystem::unlink_at(*d, "g2"));
  ASSERT_OK(fs.Filesystem::unlink_at(*d, "f"));
  ASSERT_OK(fs.Filesystem::rmdir_at(kRootInode, "d"));
  EXPECT_ERRNO(fs.lookup("/d"), ENOENT);
  EXPECT_ERRNO(fs.Filesystem::set_attributes(kRootInode, {}), ENOTSUP);
  expect_clean();
}

// A set-group-ID directory gives its group to new files and directories, and
// its bit to new directories; elsewhere the creator's group stays.
TEST_F(FsTest, ASetGroupIdDirectoryGivesItsGroup) {
  auto shared = fs_->mkdir_at(kRootInode, "shared", 0775);
  ASSERT_OK(shared);
  SetAttributes sgid;
  sgid.mode = 02775;
  sgid.gid = 100;
  ASSERT_OK(fs_->set_attributes(*shared, sgid));
  auto f = fs_->create_at(*shared, "f", 0644, Credentials{5, 6});
  auto d = fs_->mkdir("/shared/d", 0755, Credentials{5, 6});
  auto plain = fs_->create("/plain", 0644, Credentials{5, 6});
  ASSERT_OK(f);
  ASSERT_OK(d);
  ASSERT_OK(plain);
  EXPECT_EQ(fs_->stat(*f)->gid, 100u);
  EXPECT_EQ(fs_->stat(*f)->uid, 5u);
  EXPECT_EQ(fs_->stat(*f)->mode, 0644u);
  EXPECT_EQ(fs_->stat(*d)->gid, 100u);
  EXPECT_EQ(fs_->stat(*d)->mode, 02755u);
  EXPECT_EQ(fs_->stat(*plain)->gid, 6u);
  auto nested = fs_->create("/shared/d/g", 0600, Credentials{7, 8});
  ASSERT_OK(nested);
  EXPECT_EQ(fs_->stat(*nested)->gid, 100u);  // through the inherited bit
  remount();
  EXPECT_EQ(fs_->stat("/shared/d")->mode, 02755u);
  expect_clean();
}

// chmod, chown and utimens: one journaled change each, replayed after a crash.
TEST_F(FsTest, ASymbolicLinkHoldsItsTargetAndSurvivesACrash) {
  ASSERT_OK(fs_->mkdir("/d"));
  const uint64_t free_before = fs_->info().free_bytes;
  auto rel = fs_->symlink("../d/target", "/d/rel");
  ASSERT_OK(rel);
  const std::string long_target(4095, 'x');
  auto made_at = fs_->symlink_at(*fs_->lookup("/d"), "long", long_target);
  ASSERT_OK(made_at);
  EXPECT_EQ(fs_->readlink(*rel).value_or(""), "../d/target");
  EXPECT_EQ(fs_->readlink(*made_at).value_or(""), long_target);
  Stat st = *fs_->stat("/d/rel");
  EXPECT_EQ(st.type, FileType::Symlink);
  EXPECT_EQ(st.size_bytes, 11u);
  EXPECT_EQ(st.mode, 0777u);
  EXPECT_EQ(st.blocks, 1u);
  EXPECT_EQ(free_before - fs_->info().free_bytes, 2 * kBlockSize);  // the two targets' blocks
  auto entries = *fs_->readdir("/d");
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[1].type, FileType::Symlink);
  // Not a file: no data calls, no open (poise's paths never follow a link).
  EXPECT_ERRNO(fs_->open("/d/rel"), ELOOP);
  std::byte buf[16];
  EXPECT_ERRNO(fs_->read(*rel, 0, buf), EINVAL);
  EXPECT_ERRNO(fs_->write(*rel, 0, as_bytes("x")), EINVAL);
  EXPECT_ERRNO(fs_->truncate(*rel, 0), EINVAL);
  EXPECT_ERRNO(fs_->reflink(*rel, *made_at), EINVAL);
  EXPECT_ERRNO(fs_->readlink(*fs_->lookup("/d")), EINVAL);
  EXPECT_ERRNO(fs_->lookup("/d/rel/x"), ENOTDIR);
  // Targets a link may not hold; nothing is made.
  EXPECT_ERRNO(fs_->symlink("", "/e"), ENOENT);
  EXPECT_ERRNO(fs_->symlink(std::string(4096, 'y'), "/e"), ENAMETOOLONG);
  EXPECT_ERRNO(fs_->symlink(std::string("a\0b", 3), "/e"), EINVAL);
  EXPECT_ERRNO(fs_->symlink("t", "/d/rel"), EEXIST);
  EXPECT_ERRNO(fs_->symlink("t", "/e/"), EISDIR);
  EXPECT_ERRNO(fs_->lookup("/e"), ENOENT);
  ASSERT_OK(fs_->link("/d/rel", "/hard"));  // a hard link to a link, as link(2) allows
  EXPECT_EQ(fs_->stat("/hard")->nlink, 2u);

  crash_and_mount();  // the journal alone holds them
  EXPECT_EQ(fs_->readlink(*fs_->lookup("/hard")).value_or(""), "../d/target");
  EXPECT_EQ(fs_->readlink(*fs_->lookup("/d/long")).value_or(""), long_target);
  expect_clean();
  remount();  // and the checkpoint
  EXPECT_EQ(fs_->readlink(*fs_->lookup("/d/rel")).value_or(""), "../d/target");
  ASSERT_OK(fs_->unlink("/d/rel"));
  ASSERT_OK(fs_->unlink("/hard"));
  ASSERT_OK(fs_->unlink("/d/long"));
  EXPECT_EQ(fs_->info().free_bytes, free_before);  // the targets' blocks come back
  expect_clean();
}

TEST_F(FsTest, ASymbolicLinkOnAFullDeviceIsRefusedWholeAndFitsOnceSpaceIsFreed) {
  int files = 0;
  for (;; ++files) {
    auto ino = fs_->create("/fill" + std::to_string(files));
    if (!ino.has_value()) break;
    if (!fs_->write(*ino, 0, as_bytes(std::string(1 << 20, 'f'))).has_value()) break;
  }
  // Fill the last blocks one at a time, so that not even a link's block is left.
  write_file(*fs_, "/small", "s");
  for (uint64_t at = kBlockSize;; at += kBlockSize) {
    if (!fs_->write(*fs_->lookup("/small"), at, as_bytes("s")).has_value()) break;
  }
  EXPECT_ERRNO(fs_->symlink("target", "/link"), ENOSPC);
  EXPECT_ERRNO(fs_->lookup("/link"), ENOENT);  // no link without its target
  expect_clean();
  ASSERT_OK(fs_->unlink("/fill0"));
  ASSERT_OK(fs_->symlink("target", "/link"));
  EXPECT_EQ(fs_->readlink(*fs_->lookup("/link")).value_or(""), "target");
  crash_and_mount();
  EXPECT_EQ(fs_->readlink(*fs_->lookup("/link")).value_or(""), "target");
  expect_clean();
}

TEST_F(FsTest, AnImageFromBeforeSymbolicLinksIsMarkedAtItsFirstLink) {
  ASSERT_OK(fs_->unmount());
  fs_.reset();
  const uint64_t blocks = device_->size_bytes() / kBlockSize;
  auto incompat_bits = [&](uint64_t block, uint64_t clear) { return testing::incompat_bits(*device_, block, clear); };
  for (uint64_t b : {format::primary_superblock_block(), format::secondary_superblock_block(blocks)}) {
    EXPECT_NE(incompat_bits(b, format::kIncompatSymlinks) & format::kIncompatSymlinks, 0u) << "mkfs sets it";
  }
  mount();
  ASSERT_OK(fs_->create("/f"));
  EXPECT_EQ(incompat_bits(format::primary_superblock_block(), 0) & format::kIncompatSymlinks, 0u)
      << "only a link marks the image";
  ASSERT_OK(fs_->symlink("f", "/l"));
  for (uint64_t b : {format::primary_superblock_block(), format::secondary_superblock_block(blocks)}) {
    EXPECT_NE(incompat_bits(b, 0) & format::kIncompatSymlinks, 0u) << "block " << b;
  }
  crash_and_mount();
  EXPECT_EQ(fs_->readlink(*fs_->lookup("/l")).value_or(""), "f");
  expect_clean();
}

// FIFOs, device nodes and sockets: names with a type and (device nodes) a
// number, no data. They survive a crash and a checkpoint, take links, renames
// and ACLs as files do, refuse data I/O and user. attributes (as Linux does),
// and an image made before them is marked at the first one.
TEST_F(FsTest, SpecialFilesKeepTheirTypeAndNumberAndHoldNoData) {
  ASSERT_OK(fs_->unmount());
  fs_.reset();
  const uint64_t blocks = device_->size_bytes() / kBlockSize;
  auto incompat_bits = [&](uint64_t block, uint64_t clear) { return testing::incompat_bits(*device_, block, clear); };
  for (uint64_t b : {format::primary_superblock_block(), format::secondary_superblock_block(blocks)}) {
    EXPECT_NE(incompat_bits(b, format::kIncompatSpecialFiles) & format::kIncompatSpecialFiles, 0u) << "mkfs sets it";
  }
  mount();
  ASSERT_OK(fs_->mkdir("/d"));
  const uint64_t tty = (5ull << 8) | 1;  // makedev(5, 1) in the kernel's old encoding
  const uint64_t big = (259ull << 8) | (0x12345ull & 0xff) | ((0x12345ull & ~0xffull) << 12);  // a large minor
  ASSERT_OK(fs_->mknod("/d/fifo", FileType::Fifo, 0640));
  EXPECT_EQ(incompat_bits(format::primary_superblock_block(), 0) & format::kIncompatSpecialFiles,
            format::kIncompatSpecialFiles)
      << "the first special file marks the image";
  ASSERT_OK(fs_->mknod("/d/tty", FileType::CharDevice, 0620, tty));
  ASSERT_OK(fs_->mknod_at(*fs_->lookup("/d"), "disk", FileType::BlockDevice, 0660, big));
  ASSERT_OK(fs_->mknod("/d/sock", FileType::Socket, 0777));
  EXPECT_ERRNO(fs_->mknod("/d/file", FileType::Regular, 0644), EINVAL);
  EXPECT_ERRNO(fs_->mknod("/d/dir", FileType::Directory, 0755), EINVAL);
  EXPECT_ERRNO(fs_->mknod("/d/fifo2", FileType::Fifo, 0644, 7), EINVAL);  // only a device node has a number
  EXPECT_ERRNO(fs_->mknod("/d/fifo", FileType::Socket, 0644), EEXIST);
  EXPECT_ERRNO(fs_->mknod("/d/x/", FileType::Fifo, 0644), EISDIR);

  auto check_all = [&] {
    struct Want {
      const char* path;
      FileType type;
      uint32_t mode;
      uint64_t rdev;
    };
    for (const Want& w : {Want{"/d/fifo", FileType::Fifo, 0640, 0}, Want{"/d/tty", FileType::CharDevice, 0620, tty},
                          Want{"/d/disk", FileType::BlockDevice, 0660, big}, Want{"/d/sock", FileType::Socket, 0777, 0}}) {
      auto st = fs_->stat(w.path);
      ASSERT_TRUE(st.has_value()) << w.path;
      EXPECT_EQ(st->type, w.type) << w.path;
      EXPECT_EQ(st->mode, w.mode) << w.path;
      EXPECT_EQ(st->rdev, w.rdev) << w.path;
      EXPECT_EQ(st->size_bytes, 0u) << w.path;
      EXPECT_EQ(st->blocks, 0u) << w.path;
    }
    auto listing = fs_->readdir("/d");
    ASSERT_TRUE(listing.has_value());
    int seen = 0;
    for (const auto& e : *listing) {
      if (e.name == "tty" || e.name == "fifo") {
        EXPECT_EQ(e.type, e.name == "tty" ? FileType::CharDevice : FileType::Fifo);
        ++seen;
      }
    }
    EXPECT_EQ(seen, 2);
  };
  check_all();
  // No data: open, read, write and truncate refuse, naming what it is.
  const InodeNumber fifo = *fs_->lookup("/d/fifo");
  EXPECT_ERRNO(fs_->open("/d/fifo"), EINVAL);
  std::byte buf[8];
  EXPECT_ERRNO(fs_->read(fifo, 0, buf), EINVAL);
  EXPECT_ERRNO(fs_->write(fifo, 0, as_bytes("x")), EINVAL);
  EXPECT_ERRNO(fs_->truncate(fifo, 10), EINVAL);
  EXPECT_ERRNO(fs_->reflink(*fs_->lookup("/d/tty"), fifo), EINVAL);
  // Names, links, attributes and ACLs work as for files.
  ASSERT_OK(fs_->link("/d/tty", "/tty-again"));
  EXPECT_EQ(fs_->stat("/d/tty")->nlink, 2u);
  ASSERT_OK(fs_->rename("/d/sock", "/sock"));
  EXPECT_ERRNO(fs_->set_xattr(fifo, "user.x", "v", XattrMode::Either), EPERM);
  ASSERT_OK(fs_->set_xattr(fifo, "trusted.x", "v", XattrMode::Either));
  SetAttributes chmod;
  chmod.mode = 0600;
  ASSERT_OK(fs_->set_attributes(fifo, chmod));
  EXPECT_EQ(fs_->stat(fifo)->mode, 0600u);
  ASSERT_OK(fs_->rename("/sock", "/d/sock"));
  chmod.mode = 0640;
  ASSERT_OK(fs_->set_attributes(fifo, chmod));
  expect_clean();
  crash_and_mount();  // from the journal
  check_all();
  EXPECT_EQ(*fs_->get_xattr(fifo, "trusted.x"), "v");
  ASSERT_OK(fs_->checkpoint());
  remount();  // from the checkpoint
  check_all();
  expect_clean();
  ASSERT_OK(fs_->unlink("/d/fifo"));
  ASSERT_OK(fs_->unlink("/tty-again"));
  ASSERT_OK(fs_->unlink("/d/tty"));
  EXPECT_ERRNO(fs_->stat("/d/tty"), ENOENT);
  expect_clean();
}

// An image whose special-file bit was cleared (made before them) gets it back at
// its first special file; one the checker finds without the bit is a problem.
TEST_F(FsTest, AnImageFromBeforeSpecialFilesIsMarkedAtItsFirstOne) {
  ASSERT_OK(fs_->unmount());
  fs_.reset();
  const uint64_t blocks = device_->size_bytes() / kBlockSize;
  for (uint64_t b : {format::primary_superblock_block(), format::secondary_superblock_block(blocks)}) {
    testing::incompat_bits(*device_, b, format::kIncompatSpecialFiles);
  }
  mount();
  ASSERT_OK(fs_->create("/f"));
  EXPECT_EQ(testing::incompat_bits(*device_, format::primary_superblock_block(), 0) & format::kIncompatSpecialFiles,
            0u);
  ASSERT_OK(fs_->mknod("/p", FileType::Fifo, 0644));
  for (uint64_t b : {format::primary_superblock_block(), format::secondary_superblock_block(blocks)}) {
    EXPECT_NE(testing::incompat_bits(*device_, b, 0) & format::kIncompatSpecialFiles, 0u) << "block " << b;
  }
  crash_and_mount();
  EXPECT_EQ(fs_->stat("/p")->type, FileType::Fifo);
  expect_clean();
}

TEST_F(FsTest, RenameExchangeSwapsTwoNamesAtomically) {
  ASSERT_OK(fs_->mkdir("/a"));
  ASSERT_OK(fs_->mkdir("/a/sub"));
  ASSERT_OK(fs_->mkdir("/b"));
  write_file(*fs_, "/b/f", "file");
  const InodeNumber a = *fs_->lookup("/a"), b = *fs_->lookup("/b");
  const InodeNumber sub = *fs_->lookup("/a/sub"), f = *fs_->lookup("/b/f");
  ASSERT_OK(fs_->rename_at(a, "sub", b, "f", RenameFlags::Exchange));
  EXPECT_EQ(*fs_->lookup("/a/sub"), f);
  EXPECT_EQ(*fs_->lookup("/b/f"), sub);
  EXPECT_EQ(fs_->stat(a)->nlink, 2u);  // the subdirectory moved from a to b
  EXPECT_EQ(fs_->stat(b)->nlink, 3u);
  EXPECT_EQ(*fs_->lookup_at(sub, ".."), b);
  EXPECT_ERRNO(fs_->rename_at(a, "sub", b, "missing", RenameFlags::Exchange), ENOENT);
  EXPECT_ERRNO(fs_->rename_at(a, "missing", b, "f", RenameFlags::Exchange), ENOENT);
  // A directory cannot trade places with something inside it.
  ASSERT_OK(fs_->mkdir("/b/f/inner"));
  EXPECT_ERRNO(fs_->rename_at(kRootInode, "b", sub, "inner", RenameFlags::Exchange), EINVAL);
  EXPECT_ERRNO(fs_->rename_at(sub, "inner", kRootInode, "b", RenameFlags::Exchange), EINVAL);
  ASSERT_OK(fs_->rename_at(a, "sub", a, "sub", RenameFlags::Exchange));  // with itself: nothing
  crash_and_mount();
  EXPECT_EQ(read_file(*fs_, "/a/sub"), "file");
  EXPECT_EQ(fs_->stat("/b/f")->type, FileType::Directory);
  EXPECT_EQ(fs_->stat("/b")->nlink, 3u);
  expect_clean();
}

TEST_F(FsTest, SeekFindsDataAndHoles) {
  InodeNumber f = *fs_->create("/f");
  write_file(*fs_, "/f", "x", 3 * kBlockSize + 10);
  ASSERT_OK(fs_->truncate(f, 10 * kBlockSize));
  ASSERT_OK(fs_->fallocate(f, 6 * kBlockSize, kBlockSize, FallocateMode::KeepSize));  // unwritten: a hole
  write_file(*fs_, "/f", "y", 8 * kBlockSize);
  EXPECT_EQ(fs_->seek(f, 0, SeekTarget::Data).value_or(1), 3 * kBlockSize);
  EXPECT_EQ(fs_->seek(f, 0, SeekTarget::Hole).value_or(1), 0u);
  EXPECT_EQ(fs_->seek(f, 3 * kBlockSize + 7, SeekTarget::Data).value_or(1), 3 * kBlockSize + 7);
  EXPECT_EQ(fs_->seek(f, 3 * kBlockSize + 7, SeekTarget::Hole).value_or(1), 4 * kBlockSize);
  EXPECT_EQ(fs_->seek(f, 4 * kBlockSize, SeekTarget::Data).value_or(1), 8 * kBlockSize);
  EXPECT_EQ(fs_->seek(f, 8 * kBlockSize, SeekTarget::Hole).value_or(1), 9 * kBlockSize);
  EXPECT_ERRNO(fs_->seek(f, 9 * kBlockSize, SeekTarget::Data), ENXIO);
  EXPECT_EQ(fs_->seek(f, 10 * kBlockSize - 1, SeekTarget::Hole).value_or(1), 10 * kBlockSize - 1);
  EXPECT_ERRNO(fs_->seek(f, 10 * kBlockSize, SeekTarget::Hole), ENXIO);
  EXPECT_ERRNO(fs_->seek(*fs_->lookup("/"), 0, SeekTarget::Data), EISDIR);
  // A file whose data runs to its end: the only hole is the end itself.
  write_file(*fs_, "/g", std::string(5000, 'g'));
  EXPECT_EQ(fs_->seek(*fs_->lookup("/g"), 100, SeekTarget::Hole).value_or(1), 5000u);
}

TEST_F(FsTest, TheChangeListenerHearsEveryChangeAsItCommits) {
  write_file(*fs_, "/f", std::string(3 * kBlockSize, 'a'));
  write_file(*fs_, "/g", "g");
  const InodeNumber f = *fs_->lookup("/f"), g = *fs_->lookup("/g");
  std::vector<std::string> heard;
  fs_->set_change_listener([&](const FsChange& c) {
    const char* kind = c.kind == FsChange::Kind::Data ? "data" : c.kind == FsChange::Kind::Entry ? "entry" : "attr";
    heard.push_back(std::string(kind) + " " + std::to_string(c.ino.value()) + " " + std::to_string(c.offset) + "+" +
                    std::to_string(c.length) + " " + std::string(c.name));
  });
  auto heard_of = [&](const std::string& what) {
    bool found = std::find(heard.begin(), heard.end(), what) != heard.end();
    std::string all;
    for (const auto& h : heard) all += "\n  " + h;
    heard.clear();
    return found ? ::testing::AssertionSuccess() : ::testing::AssertionFailure() << "not heard: " << what << all;
  };
  const std::string fi = std::to_string(f.value()), gi = std::to_string(g.value());
  write_file(*fs_, "/f", "in place", 5000);  // an overwrite: no extent record, still reported
  EXPECT_TRUE(heard_of("data " + fi + " 5000+8 "));
  ASSERT_OK(fs_->truncate(f, 6000));
  EXPECT_TRUE(heard_of("data " + fi + " 4096+0 "));  // from the block the new end is in, on
  ASSERT_OK(fs_->punch_hole(f, 100, 200));
  EXPECT_TRUE(heard_of("data " + fi + " 100+200 "));
  ASSERT_OK(fs_->reflink(f, g));
  EXPECT_TRUE(heard_of("attr " + gi + " 0+0 "));
  ASSERT_OK(fs_->reflink(f, g));
  EXPECT_TRUE(heard_of("data " + gi + " 0+8192 "));
  ASSERT_OK(fs_->clone_range(f, 0, g, 4096, 4096));
  EXPECT_TRUE(heard_of("data " + gi + " 4096+4096 "));
  SetAttributes chmod;
  chmod.mode = 0600;
  ASSERT_OK(fs_->set_attributes(g, chmod));
  EXPECT_TRUE(heard_of("attr " + gi + " 0+0 "));
  ASSERT_OK(fs_->link("/g", "/hard"));
  EXPECT_TRUE(heard_of("entry 1 0+0 hard"));
  ASSERT_OK(fs_->symlink("g", "/soft"));
  EXPECT_TRUE(heard_of("entry 1 0+0 soft"));
  ASSERT_OK(fs_->rename_at(kRootInode, "hard", kRootInode, "soft", RenameFlags::Exchange));
  EXPECT_TRUE(heard_of("entry 1 0+0 soft"));
  ASSERT_OK(fs_->fallocate(f, 0, 10 * kBlockSize, FallocateMode::ExtendSize));
  EXPECT_TRUE(heard_of("attr " + fi + " 0+0 "));
  ASSERT_OK(fs_->rename("/g", "/h"));
  EXPECT_TRUE(heard_of("entry 1 0+0 g"));
  ASSERT_OK(fs_->unlink("/h"));
  EXPECT_TRUE(heard_of("entry 1 0+0 h"));
  fs_->set_change_listener(nullptr);
  write_file(*fs_, "/f", "x");
  EXPECT_TRUE(heard.empty());
}

TEST_F(FsTest, AccessTimesFollowRelatime) {
  write_file(*fs_, "/f", "data");
  ASSERT_OK(fs_->mkdir("/d"));
  const InodeNumber f = *fs_->lookup("/f"), d = *fs_->lookup("/d");
  const Stat made = *fs_->stat(f);
  fs_->note_access(f);  // the access time is not later than the modification time: due
  const Stat read1 = *fs_->stat(f);
  EXPECT_GT(read1.atime_ns, made.mtime_ns);
  EXPECT_EQ(read1.mtime_ns, made.mtime_ns);
  EXPECT_EQ(read1.ctime_ns, made.ctime_ns) << "an access changes no other time";
  fs_->note_access(f);  // later than both, and less than a day old: not due
  EXPECT_EQ(fs_->stat(f)->atime_ns, read1.atime_ns);
  clock_.advance(24ll * 3600 * 1'000'000'000);
  fs_->note_access(f);  // a day old: due
  EXPECT_GT(fs_->stat(f)->atime_ns, read1.atime_ns + 24ll * 3600 * 1'000'000'000 - 1);
  write_file(*fs_, "/f", "more", 4);  // modified after the last access: due again
  const Stat written = *fs_->stat(f);
  fs_->note_access(f);
  EXPECT_GT(fs_->stat(f)->atime_ns, written.mtime_ns);
  fs_->note_access(d);  // directories too
  EXPECT_GT(fs_->stat(d)->atime_ns, fs_->stat(d)->mtime_ns);
  fs_->note_access(InodeNumber(999));  // gone: nothing, no error
  const int64_t atime = fs_->stat(f)->atime_ns;
  crash_and_mount();
  EXPECT_EQ(fs_->stat("/f")->atime_ns, atime) << "journaled";
  expect_clean();
}

TEST_F(FsTest, SetAttributesIsJournaledAndSurvivesACrash) {
  write_file(*fs_, "/f", "data");
  ASSERT_OK(fs_->mkdir("/d"));
  InodeNumber f = *fs_->lookup("/f");
  Stat before = *fs_->stat(f);
  SetAttributes chmod;
  chmod.mode = 04711;
  auto after = fs_->set_attributes(f, chmod);
  ASSERT_OK(after);
  EXPECT_EQ(after->mode, 04711u);
  EXPECT_EQ(after->type, FileType::Regular);
  EXPECT_EQ(after->uid, before.uid);
  EXPECT_EQ(after->mtime_ns, before.mtime_ns);
  EXPECT_GE(after->ctime_ns, before.ctime_ns);
  SetAttributes all;
  all.uid = 1000;
  all.gid = 2000;
  all.atime_ns = 1'000'000'001;
  all.mtime_ns = -5;  // before 1970: allowed, as utimensat allows it
  ASSERT_OK(fs_->set_attributes(*fs_->lookup("/d"), all));
  SetAttributes old_time;
  old_time.mtime_ns = 5;
  ASSERT_OK(fs_->set_attributes(f, old_time));
  EXPECT_EQ(fs_->stat(f)->mtime_ns, 5);
  SetAttributes touch;
  touch.mtime_ns = SetAttributes::kNow;
  ASSERT_OK(fs_->set_attributes(f, touch));
  EXPECT_GT(fs_->stat(f)->mtime_ns, 1'000'000'000);  // the clock's now, not 5
  SetAttributes type_bits;
  type_bits.mode = 0100644;
  EXPECT_ERRNO(fs_->set_attributes(f, type_bits), EINVAL);
  EXPECT_ERRNO(fs_->set_attributes(InodeNumber(999), chmod), ENOENT);

  crash_and_mount();
  Stat fst = *fs_->stat("/f");
  EXPECT_EQ(fst.mode, 04711u);
  EXPECT_EQ(read_file(*fs_, "/f"), "data");
  Stat dst = *fs_->stat("/d");
  EXPECT_EQ(dst.type, FileType::Directory);
  EXPECT_EQ(dst.uid, 1000u);
  EXPECT_EQ(dst.gid, 2000u);
  EXPECT_EQ(dst.atime_ns, 1'000'000'001);
  EXPECT_EQ(dst.mtime_ns, -5);
  expect_clean();
}

TEST_F(FsTest, WriteReadAtOffsetsWithHolesSurvivesRemount) {
  write_file(*fs_, "/a", "hello");
  write_file(*fs_, "/a", "world", 10000);  // leaves a hole, crosses into block 2
  std::string expected = "hello" + std::string(10000 - 5, '\0') + "world";
  EXPECT_EQ(read_file(*fs_, "/a"), expected);
  auto st = fs_->stat("/a");
  ASSERT_OK(st);
  EXPECT_EQ(st->size_bytes, 10005u);
  EXPECT_EQ(st->blocks, 2u) << "the hole in block 1 takes no space";
  remount();
  EXPECT_EQ(read_file(*fs_, "/a"), expected);
  crash_and_mount();
  EXPECT_EQ(read_file(*fs_, "/a"), expected);
  expect_clean();
}

TEST_F(FsTest, LargeWritesUseFewAlignedExtents) {
  std::string data(8 << 20, 'x');
  for (size_t i = 0; i < data.size(); i += 4096) data[i] = static_cast<char>(i / 4096);
  write_file(*fs_, "/big", data);
  EXPECT_EQ(read_file(*fs_, "/big"), data);
  auto map = fs_->fsmap(0, 64ull << 20);
  ASSERT_OK(map);
  int extents = 0;
  for (const auto& r : *map) {
    if (r.owner != OwnerKind::File) continue;
    ++extents;
    EXPECT_EQ(r.device_offset_bytes % (2 << 20), 0u) << "large files start 2 MiB aligned";
  }
  EXPECT_LE(extents, 2);
  expect_clean();
}

TEST_F(FsTest, NamespaceOperations) {
  ASSERT_OK(fs_->mkdir("/d"));
  ASSERT_OK(fs_->mkdir("/d/e"));
  write_file(*fs_, "/d/e/f", "data");
  EXPECT_EQ(fs_->stat("/d")->nlink, 3u);
  ASSERT_OK(fs_->link("/d/e/f", "/g"));
  EXPECT_EQ(fs_->stat("/g")->nlink, 2u);
  EXPECT_EQ(read_file(*fs_, "/g"), "data");
  EXPECT_ERRNO(fs_->rmdir("/d"), ENOTEMPTY);
  EXPECT_ERRNO(fs_->unlink("/d"), EISDIR);
  EXPECT_ERRNO(fs_->rmdir("/g"), ENOTDIR);
  EXPECT_ERRNO(fs_->rename("/d", "/d/e/inside"), EINVAL);
  EXPECT_ERRNO(fs_->mkdir("/d"), EEXIST);
  EXPECT_ERRNO(fs_->stat("/missing"), ENOENT);
  EXPECT_ERRNO(fs_->create("/g/x"), ENOTDIR);
  EXPECT_ERRNO(fs_->create("/" + std::string(256, 'n')), ENAMETOOLONG);
  EXPECT_ERRNO(fs_->link("/d", "/d2"), EPERM);
  // rename over an existing file replaces it
  write_file(*fs_, "/h", "old");
  ASSERT_OK(fs_->rename("/g", "/h"));
  EXPECT_EQ(read_file(*fs_, "/h"), "data");
  EXPECT_ERRNO(fs_->stat("/g"), ENOENT);
  EXPECT_EQ(fs_->stat("/h")->nlink, 2u);
  // a directory moves between parents, link counts follow
  ASSERT_OK(fs_->rename("/d/e", "/e"));
  EXPECT_EQ(fs_->stat("/d")->nlink, 2u);
  EXPECT_EQ(fs_->stat("/")->nlink, 4u);
  EXPECT_EQ(read_file(*fs_, "/e/f"), "data");
  std::string name = *fs_->path_of(*fs_->lookup("/e/f"));
  EXPECT_TRUE(name == "/e/f" || name == "/h") << name << " names the inode";
  EXPECT_EQ(*fs_->path_of(*fs_->lookup("/d")), "/d");
  ASSERT_OK(fs_->unlink("/h"));
  ASSERT_OK(fs_->unlink("/e/f"));
  ASSERT_OK(fs_->rmdir("/e"));
  auto names = fs_->readdir("/");
  ASSERT_OK(names);
  ASSERT_EQ(names->size(), 1u);
  EXPECT_EQ((*names)[0].name, "d");
  expect_clean();
  remount();
  expect_clean();
  EXPECT_EQ(fs_->readdir("/")->size(), 1u);
}

TEST_F(FsTest, UnlinkFreesBlocksAndOpenFilesOutliveTheirName) {
  uint64_t free_before = fs_->info().free_bytes;
  auto file = fs_->open("/f", OpenFlags::Create);
  ASSERT_OK(file);
  std::string data(100000, 'q');
  ASSERT_OK(file->write(0, as_bytes(data)));
  EXPECT_LT(fs_->info().free_bytes, free_before);
  ASSERT_OK(fs_->unlink("/f"));
  std::string back(data.size(), '\0');
  auto n = file->read(0, {reinterpret_cast<std::byte*>(back.data()), back.size()});
  ASSERT_OK(n);
  EXPECT_EQ(back, data) << "an open file keeps its data after unlink";
  expect_clean();
  file->close();
  EXPECT_EQ(fs_->info().free_bytes, free_before) << "last close frees the blocks";
  expect_clean();
}

TEST_F(FsTest, OrphanLeftByACrashIsFreedAtMount) {
  uint64_t free_before = fs_->info().free_bytes;
  auto file = fs_->open("/f", OpenFlags::Create);
  ASSERT_OK(file);
  ASSERT_OK(file->write(0, as_bytes(std::string(50000, 'z'))));
  ASSERT_OK(fs_->unlink("/f"));
  fs_->shutdown();
  *file = File();  // closing after shutdown writes nothing
  fs_.reset();
  mount();
  EXPECT_EQ(fs_->info().free_bytes, free_before);
  EXPECT_EQ(fs_->info().files, 1u);
  expect_clean();
}

TEST_F(FsTest, TruncatePunchAndFallocate) {
  std::string data(20000, 'a');
  write_file(*fs_, "/t", data);
  InodeNumber ino = *fs_->lookup("/t");
  ASSERT_OK(fs_->truncate(ino, 5000));
  EXPECT_EQ(read_file(*fs_, "/t"), std::string(5000, 'a'));
  EXPECT_EQ(fs_->stat(ino)->blocks, 2u);
  ASSERT_OK(fs_->truncate(ino, 9000));
  EXPECT_EQ(read_file(*fs_, "/t"), std::string(5000, 'a') + std::string(4000, '\0'))
      << "bytes past the old end read as zeros";
  write_file(*fs_, "/p", std::string(5 * 4096, 'p'));
  InodeNumber p = *fs_->lookup("/p");
  ASSERT_OK(fs_->punch_hole(p, 100, 3 * 4096));
  std::string expect(5 * 4096, 'p');
  std::memset(expect.data() + 100, 0, 3 * 4096);
  EXPECT_EQ(read_file(*fs_, "/p"), expect);
  EXPECT_EQ(fs_->stat(p)->blocks, 3u) << "two whole blocks were deallocated";
  InodeNumber f = *fs_->create("/fa");
  ASSERT_OK(fs_->fallocate(f, 0, 1 << 20, FallocateMode::KeepSize));
  EXPECT_EQ(fs_->stat(f)->size_bytes, 0u);
  EXPECT_EQ(fs_->stat(f)->blocks, 256u);
  ASSERT_OK(fs_->fallocate(f, 0, 8192, FallocateMode::ExtendSize));
  EXPECT_EQ(read_file(*fs_, "/fa"), std::string(8192, '\0')) << "unwritten blocks read as zeros";
  write_file(*fs_, "/fa", "xy", 4095);
  EXPECT_EQ(read_file(*fs_, "/fa"), std::string(4095, '\0') + "xy" + std::string(8192 - 4097, '\0'));
  expect_clean();
  remount();
  EXPECT_EQ(read_file(*fs_, "/fa"), std::string(4095, '\0') + "xy" + std::string(8192 - 4097, '\0'));
  EXPECT_EQ(fs_->stat("/fa")->blocks, 256u);
  expect_clean();
}

TEST_F(FsTest, FullDeviceGivesEnospcAndKeepsEverythingConsistent) {
  write_file(*fs_, "/keep", "committed before the device filled");
  std::string chunk(1 << 20, 'f');
  int written = 0;
  for (;; ++written) {
    ASSERT_LT(written, 100) << "a 64 MiB device cannot take 100 MiB";
    auto ino = fs_->create("/fill" + std::to_string(written));
    if (!ino) {
      EXPECT_EQ(ino.error().code, ENOSPC);
      break;
    }
    auto n = fs_->write(*ino, 0, as_bytes(chunk));
    if (!n) {
      EXPECT_EQ(n.error().code, ENOSPC);
      EXPECT_EQ(fs_->stat(*ino)->size_bytes, 0u) << "a failed write changes nothing";
      break;
    }
  }
  EXPECT_GT(written, 40);
  expect_clean();
  EXPECT_EQ(read_file(*fs_, "/keep"), "committed before the device filled");
  remount();  // the checkpoint still fits: its space was held back
  expect_clean();
  ASSERT_OK(fs_->unlink("/fill0"));
  write_file(*fs_, "/after", std::string(1 << 20, 'a'));
  EXPECT_EQ(read_file(*fs_, "/keep"), "committed before the device filled");
}

TEST_F(FsTest, ManyFilesForceCheckpointsAndSurviveCrash) {
  // A 1 MiB journal fills after a few thousand creates: checkpoints happen.
  uint64_t generation = fs_->info().checkpoint_generation;
  for (int i = 0; i < 6000; ++i) ASSERT_OK(fs_->create("/n" + std::to_string(i)));
  EXPECT_GT(fs_->info().checkpoint_generation, generation);
  crash_and_mount();
  EXPECT_EQ(fs_->readdir("/")->size(), 6000u);
  expect_clean();
}

TEST_F(FsTest, ConcurrentWritersOnDifferentFiles) {
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::string name = "/w" + std::to_string(t);
      auto ino = fs_->create(name);
      ASSERT_TRUE(ino.has_value());
      for (int i = 0; i < 200; ++i) {
        std::string piece(3000, static_cast<char>('a' + t));
        ASSERT_TRUE(fs_->write(*ino, uint64_t(i) * 3000, as_bytes(piece)).has_value());
        if (i % 50 == 0) {
          ASSERT_TRUE(fs_->create(name + "_" + std::to_string(i)).has_value());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(read_file(*fs_, "/w" + std::to_string(t)), std::string(600000, static_cast<char>('a' + t)));
  }
  expect_clean();
}

// stat by path reads the size and block count a writer is changing: it must
// see a whole write or none of it (and TSan must see no race).
TEST_F(FsTest, StatByPathWhileTheFileGrows) {
  auto ino = fs_->create("/growing");
  ASSERT_TRUE(ino.has_value());
  constexpr uint64_t kPiece = 3000;
  std::atomic<bool> done{false};
  std::thread writer([&] {
    std::string piece(kPiece, 'g');
    for (uint64_t i = 0; i < 300; ++i) ASSERT_TRUE(fs_->write(*ino, i * kPiece, as_bytes(piece)).has_value());
    done.store(true);
  });
  uint64_t last = 0;
  while (!done.load()) {
    auto st = fs_->stat("/growing");
    ASSERT_TRUE(st.has_value());
    EXPECT_EQ(st->size_bytes % kPiece, 0u) << "a write seen in part";
    EXPECT_GE(st->size_bytes, last) << "the size went back";
    last = st->size_bytes;
  }
  writer.join();
  EXPECT_EQ(fs_->stat("/growing")->size_bytes, 300 * kPiece);
}

TEST_F(FsTest, ShutdownStopsEveryCall) {
  write_file(*fs_, "/x", "x");
  InodeNumber ino = *fs_->lookup("/x");
  fs_->shutdown();
  EXPECT_ERRNO(fs_->create("/y"), EIO);
  EXPECT_ERRNO(fs_->write(ino, 0, as_bytes("z")), EIO);
  EXPECT_ERRNO(fs_->stat("/x"), EIO);
  fs_.reset();
  mount();
  EXPECT_EQ(read_file(*fs_, "/x"), "x");
}

TEST_F(FsTest, ReadOnlyMountRefusesWrites) {
  write_file(*fs_, "/r", "r");
  ASSERT_OK(fs_->unmount());
  MountOptions ro;
  ro.mode = MountMode::ReadOnly;
  auto fs = Filesystem::mount(*device_, ro);
  ASSERT_OK(fs);
  EXPECT_EQ(read_file(**fs, "/r"), "r");
  EXPECT_ERRNO((*fs)->create("/s"), EROFS);
  fs_ = std::move(*fs);
}

}  // namespace
}  // namespace poise

namespace poise::testing {
namespace {

// path_of names an inode by a path that leads back to it, through renames of
// its directories, hard links whose latest name goes, RENAME_EXCHANGE, a crash
// and a checkpoint; random operations with a printed seed.
TEST_F(FsTest, PathOfAlwaysNamesTheInodeThroughRenamesLinksAndRemounts) {
  Rng rng(test_seed("FsTest.PathOfAlwaysNamesTheInode"));
  const char* dirs[] = {"/a", "/a/b", "/c", "/c/d", "/e"};
  for (const char* d : dirs) (void)fs_->mkdir(d);
  std::vector<InodeNumber> files;
  for (int i = 0; i < 12; ++i) files.push_back(*fs_->create(std::string(dirs[i % 5]) + "/f" + std::to_string(i)));
  auto some_dir = [&] {
    for (;;) {
      std::string d = dirs[rng.below(5)];
      if (fs_->lookup(d).has_value()) return d;
      for (const char* e : dirs) {
        if (fs_->lookup(e).has_value()) return std::string(e);
      }
    }
  };
  auto verify = [&](int step) {
    for (InodeNumber ino : files) {
      auto st = fs_->stat(ino);
      if (!st.has_value()) continue;  // gone: its last name was removed
      auto path = fs_->path_of(ino);
      ASSERT_TRUE(path.has_value()) << "step " << step << ": inode " << ino.value() << ": " << path.error().message;
      EXPECT_EQ(fs_->lookup(*path).value_or(InodeNumber(0)), ino) << "step " << step << ": " << *path;
    }
  };
  for (int step = 0; step < 400; ++step) {
    InodeNumber f = files[rng.below(files.size())];
    auto path = fs_->path_of(f);
    switch (rng.below(6)) {
      case 0:  // another name for it
        if (path) (void)fs_->link(*path, some_dir() + "/l" + std::to_string(step));
        break;
      case 1:  // its current name goes (another may remain)
        if (path && fs_->stat(f)->nlink > 1) ASSERT_OK(fs_->unlink(*path));
        break;
      case 2:  // it moves
        if (path) (void)fs_->rename(*path, some_dir() + "/m" + std::to_string(step));
        break;
      case 3: {  // two names swap
        InodeNumber g = files[rng.below(files.size())];
        auto other = fs_->path_of(g);
        if (path && other) {
          auto at = [&](const std::string& p) { return std::pair{*fs_->lookup(p.substr(0, std::max<size_t>(1, p.rfind('/')))), p.substr(p.rfind('/') + 1)}; };
          auto [da, na] = at(*path);
          auto [db, nb] = at(*other);
          (void)fs_->rename_at(da, na, db, nb, RenameFlags::Exchange);
        }
        break;
      }
      case 4: {  // a directory moves, and every path under it changes
        std::string d = some_dir();
        std::string to = "/r" + std::to_string(step);
        if (fs_->rename(d, to).has_value()) ASSERT_OK(fs_->rename(to, d));
        (void)fs_->rename("/c/d", "/e/d" + std::to_string(step));
        (void)fs_->rename("/e/d" + std::to_string(step), "/c/d");
        break;
      }
      default:
        if (rng.chance(2)) {
          crash_and_mount();
        } else {
          ASSERT_OK(fs_->checkpoint());
          remount();
        }
        break;
    }
    verify(step);
    if (::testing::Test::HasFailure()) return;
  }
  expect_clean();
}

}  // namespace
}  // namespace poise::testing
