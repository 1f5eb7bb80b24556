// Extended attributes and POSIX ACLs in the core: the calls' contracts, what
// survives a crash and a checkpoint, what a full device does, and a random
// model test against a std::map.
#include <gtest/gtest.h>

#include <map>

#include "base/random.h"
#include "format/ondisk.h"
#include "fs/posix_acl.h"
#include "fs/test_util.h"

namespace poise::testing {
namespace {

using acl::Entry;

std::string acl_bytes(const acl::Acl& a) { return acl::encode(a); }

// u::rw-, u:1000:r--, g::r--, m::r--, o::---
acl::Acl named_user_acl() {
  return {{acl::kUserObj, 6, 0}, {acl::kUser, 4, 1000}, {acl::kGroupObj, 4, 0}, {acl::kMask, 4, 0}, {acl::kOther, 0, 0}};
}

uint32_t perm_of(Filesystem& fs, InodeNumber ino) { return fs.stat(ino)->mode & 0777; }

std::map<std::string, std::string> all_xattrs(Filesystem& fs, InodeNumber ino) {
  std::map<std::string, std::string> out;
  auto names = fs.list_xattrs(ino);
  EXPECT_TRUE(names.has_value());
  for (const std::string& n : names.value_or(std::vector<std::string>{})) out[n] = fs.get_xattr(ino, n).value_or("?");
  return out;
}

TEST_F(FsTest, XattrsSetGetListRemoveWithTheFlagsAndLimitsOfSetxattr) {
  InodeNumber f = *fs_->create("/f");
  EXPECT_ERRNO(fs_->get_xattr(f, "user.a"), ENODATA);
  ASSERT_OK(fs_->set_xattr(f, "user.a", "1"));
  const std::string binary("x\0y\xff", 4);
  ASSERT_OK(fs_->set_xattr(f, "user.bin", binary, XattrMode::Create));
  ASSERT_OK(fs_->set_xattr(f, "trusted.empty", ""));
  EXPECT_EQ(fs_->get_xattr(f, "user.bin").value_or(""), binary);
  EXPECT_EQ(fs_->get_xattr(f, "trusted.empty").value_or("?"), "");
  EXPECT_EQ(fs_->list_xattrs(f).value_or(std::vector<std::string>{}),
            (std::vector<std::string>{"trusted.empty", "user.a", "user.bin"}));

  EXPECT_ERRNO(fs_->set_xattr(f, "user.a", "2", XattrMode::Create), EEXIST);
  EXPECT_ERRNO(fs_->set_xattr(f, "user.none", "2", XattrMode::Replace), ENODATA);
  ASSERT_OK(fs_->set_xattr(f, "user.a", "2", XattrMode::Replace));
  EXPECT_EQ(fs_->get_xattr(f, "user.a").value_or(""), "2");
  EXPECT_ERRNO(fs_->set_xattr(f, "", "v"), ERANGE);
  EXPECT_ERRNO(fs_->set_xattr(f, "user." + std::string(251, 'n'), "v"), ERANGE);
  EXPECT_ERRNO(fs_->set_xattr(f, "os2.k", "v"), ENOTSUP);
  EXPECT_ERRNO(fs_->set_xattr(f, "user.", "v"), ENOTSUP);
  EXPECT_ERRNO(fs_->set_xattr(f, "system.other", "v"), ENOTSUP);
  EXPECT_ERRNO(fs_->set_xattr(f, "user.big", std::string(format::kXattrValueBytesMax + 1, 'v')), E2BIG);
  ASSERT_OK(fs_->set_xattr(f, "user.big", std::string(format::kXattrValueBytesMax, 'v')));
  ASSERT_OK(fs_->remove_xattr(f, "user.big"));
  EXPECT_ERRNO(fs_->remove_xattr(f, "user.big"), ENODATA);
  EXPECT_ERRNO(fs_->get_xattr(f, "user.big"), ENODATA);

  // 64 KiB of names and values per inode, then ENOSPC; replacing within it works.
  InodeNumber g = *fs_->create("/g");
  const std::string value(3000, 'v');
  int stored = 0;
  for (int i = 0; i < 100; ++i) {
    auto r = fs_->set_xattr(g, "user.k" + std::to_string(100 + i), value);
    if (!r.has_value()) {
      EXPECT_EQ(r.error().code, ENOSPC) << r.error().message;
      break;
    }
    ++stored;
  }
  EXPECT_EQ(stored, 21);  // 21 * 3008 bytes fit in 65536, 22 do not
  ASSERT_OK(fs_->set_xattr(g, "user.k100", "short"));
  ASSERT_OK(fs_->set_xattr(g, "user.k200", value));

  // The change time moves with every change; a link and a directory take them too.
  const int64_t before = fs_->stat(f)->ctime_ns;
  clock_.advance(1000);
  ASSERT_OK(fs_->set_xattr(f, "user.a", "3"));
  EXPECT_GT(fs_->stat(f)->ctime_ns, before);
  InodeNumber d = *fs_->mkdir("/d");
  InodeNumber l = *fs_->symlink("f", "/l");
  ASSERT_OK(fs_->set_xattr(d, "user.dir", "yes"));
  ASSERT_OK(fs_->set_xattr(l, "trusted.link", "yes"));
  EXPECT_EQ(fs_->get_xattr(l, "trusted.link").value_or(""), "yes");
  EXPECT_ERRNO(fs_->set_xattr(l, "user.link", "no"), EPERM);  // user. is for files and directories (as Linux)

  // Each name counts one byte more (its NUL in a listing): a listing of the
  // most names one file can hold still fits the kernel's 64 KiB.
  InodeNumber many = *fs_->create("/many");
  int added = 0;
  for (; added < 20000; ++added) {
    auto r = fs_->set_xattr(many, "user." + std::to_string(100000 + added), "");
    if (!r.has_value()) {
      EXPECT_EQ(r.error().code, ENOSPC);
      break;
    }
  }
  size_t listing = 0;
  for (const std::string& n : fs_->list_xattrs(many).value_or(std::vector<std::string>{})) listing += n.size() + 1;
  EXPECT_EQ(added, 65536 / 12);  // "user.NNNNNN" and its NUL: 12 bytes
  EXPECT_LE(listing, 65536u);
  expect_clean();
}

TEST_F(FsTest, XattrsSurviveACrashAndACheckpointAndGoWithTheirInode) {
  InodeNumber f = *fs_->create("/f");
  InodeNumber d = *fs_->mkdir("/d");
  ASSERT_OK(fs_->set_xattr(f, "user.keep", "journal"));
  ASSERT_OK(fs_->set_xattr(f, "user.gone", "x"));
  ASSERT_OK(fs_->remove_xattr(f, "user.gone"));
  ASSERT_OK(fs_->set_xattr(d, "security.big", std::string(format::kXattrValueBytesMax, 's')));
  InodeNumber doomed = *fs_->create("/doomed");
  ASSERT_OK(fs_->set_xattr(doomed, "user.x", "y"));
  ASSERT_OK(fs_->unlink("/doomed"));
  const std::map<std::string, std::string> want_f{{"user.keep", "journal"}};
  crash_and_mount();  // from the journal
  EXPECT_EQ(all_xattrs(*fs_, f), want_f);
  EXPECT_EQ(fs_->get_xattr(d, "security.big").value_or("").size(), format::kXattrValueBytesMax);
  expect_clean();
  // Many inodes' attributes across several checkpoint blocks.
  for (int i = 0; i < 40; ++i) {
    InodeNumber x = *fs_->create("/x" + std::to_string(i));
    ASSERT_OK(fs_->set_xattr(x, "user.v", std::string(2000 + i, static_cast<char>('a' + i % 26))));
  }
  ASSERT_OK(fs_->checkpoint());
  crash_and_mount();  // from the checkpoint alone
  EXPECT_EQ(all_xattrs(*fs_, f), want_f);
  EXPECT_EQ(fs_->get_xattr(d, "security.big").value_or(""), std::string(format::kXattrValueBytesMax, 's'));
  for (int i = 0; i < 40; ++i) {
    EXPECT_EQ(fs_->get_xattr(*fs_->lookup("/x" + std::to_string(i)), "user.v").value_or(""),
              std::string(2000 + i, static_cast<char>('a' + i % 26)));
  }
  EXPECT_ERRNO(fs_->stat(doomed), ENOENT);
  expect_clean();
}

TEST_F(FsTest, AccessAclSetsTheModeAndChmodRewritesIt) {
  InodeNumber f = *fs_->create("/f", 0644);
  ASSERT_OK(fs_->set_xattr(f, acl::kAccessName, acl_bytes(named_user_acl())));
  EXPECT_EQ(perm_of(*fs_, f), 0640u) << "owner rw, mask r (group class), other none";
  // chmod: the owner, mask and other entries take the new bits; the named user stays.
  SetAttributes chmod;
  chmod.mode = 0750;
  ASSERT_OK(fs_->set_attributes(f, chmod));
  auto after = acl::parse(fs_->get_xattr(f, acl::kAccessName).value_or(""));
  ASSERT_TRUE(after.has_value());
  acl::Acl want{{acl::kUserObj, 7, 0}, {acl::kUser, 4, 1000}, {acl::kGroupObj, 4, 0}, {acl::kMask, 5, 0}, {acl::kOther, 0, 0}};
  EXPECT_EQ(*after, want);
  // An ACL that says no more than the mode is the mode, not an attribute.
  acl::Acl plain{{acl::kUserObj, 6, 0}, {acl::kGroupObj, 0, 0}, {acl::kOther, 4, 0}};
  ASSERT_OK(fs_->set_xattr(f, acl::kAccessName, acl_bytes(plain)));
  EXPECT_EQ(perm_of(*fs_, f), 0604u);
  EXPECT_ERRNO(fs_->get_xattr(f, acl::kAccessName), ENODATA);

  // Malformed ACLs are refused and change nothing.
  std::string bad_version = acl_bytes(named_user_acl());
  bad_version[0] = 3;
  acl::Acl no_mask = named_user_acl();
  no_mask.erase(no_mask.begin() + 3);
  acl::Acl out_of_order = named_user_acl();
  std::swap(out_of_order[0], out_of_order[1]);
  acl::Acl no_id = named_user_acl();
  no_id[1].id = 0xffffffffu;
  acl::Acl wide = named_user_acl();
  wide[4].perm = 8;
  for (const std::string& bad : {bad_version, acl_bytes(no_mask), acl_bytes(out_of_order), acl_bytes(no_id),
                                 acl_bytes(wide), std::string("\x02\0\0\0\x01", 5), std::string()}) {
    EXPECT_ERRNO(fs_->set_xattr(f, acl::kAccessName, bad), EINVAL);
  }
  EXPECT_EQ(perm_of(*fs_, f), 0604u);
  // A default ACL is a directory's; a link has no ACL.
  EXPECT_ERRNO(fs_->set_xattr(f, acl::kDefaultName, acl_bytes(named_user_acl())), EACCES);
  InodeNumber l = *fs_->symlink("f", "/l");
  EXPECT_ERRNO(fs_->set_xattr(l, acl::kAccessName, acl_bytes(named_user_acl())), ENOTSUP);
  ASSERT_OK(fs_->set_xattr(f, acl::kAccessName, acl_bytes(named_user_acl())));
  crash_and_mount();
  EXPECT_EQ(perm_of(*fs_, f), 0640u);
  EXPECT_TRUE(acl::parse(fs_->get_xattr(f, acl::kAccessName).value_or("")).has_value());
  expect_clean();
}

TEST_F(FsTest, DefaultAclIsInheritedByWhatIsMadeInTheDirectory) {
  InodeNumber d = *fs_->mkdir("/d", 0755);
  acl::Acl def{{acl::kUserObj, 7, 0}, {acl::kUser, 7, 1000}, {acl::kGroupObj, 5, 0}, {acl::kMask, 7, 0},
               {acl::kOther, 5, 0}};
  ASSERT_OK(fs_->set_xattr(d, acl::kDefaultName, acl_bytes(def)));
  EXPECT_EQ(perm_of(*fs_, d), 0755u) << "a default ACL leaves the directory's own mode";

  InodeNumber f = *fs_->create("/d/f", 0644);
  // Each class keeps only what the mode asks for: owner rw, mask r, other r.
  acl::Acl want_f{{acl::kUserObj, 6, 0}, {acl::kUser, 7, 1000}, {acl::kGroupObj, 5, 0}, {acl::kMask, 4, 0},
                  {acl::kOther, 4, 0}};
  EXPECT_EQ(acl::parse(fs_->get_xattr(f, acl::kAccessName).value_or("")).value_or(acl::Acl{}), want_f);
  EXPECT_EQ(perm_of(*fs_, f), 0644u);
  EXPECT_ERRNO(fs_->get_xattr(f, acl::kDefaultName), ENODATA);

  InodeNumber sub = *fs_->mkdir("/d/sub", 0750);
  EXPECT_EQ(fs_->get_xattr(sub, acl::kDefaultName).value_or(""), acl_bytes(def)) << "a subdirectory inherits the default";
  EXPECT_EQ(perm_of(*fs_, sub), 0750u);
  InodeNumber deeper = *fs_->create("/d/sub/g", 0600);
  EXPECT_EQ(perm_of(*fs_, deeper), 0600u);
  EXPECT_TRUE(fs_->get_xattr(deeper, acl::kAccessName).has_value()) << "and passes it on";
  InodeNumber l = *fs_->symlink("f", "/d/l");
  EXPECT_EQ(fs_->list_xattrs(l).value_or(std::vector<std::string>{"?"}), std::vector<std::string>{});

  // A default of base entries only gives no access ACL, just the narrowed mode.
  InodeNumber e = *fs_->mkdir("/e");
  ASSERT_OK(fs_->set_xattr(e, acl::kDefaultName,
                           acl_bytes({{acl::kUserObj, 7, 0}, {acl::kGroupObj, 0, 0}, {acl::kOther, 0, 0}})));
  InodeNumber ef = *fs_->create("/e/f", 0666);
  EXPECT_EQ(perm_of(*fs_, ef), 0600u);
  EXPECT_ERRNO(fs_->get_xattr(ef, acl::kAccessName), ENODATA);
  ASSERT_OK(fs_->remove_xattr(e, acl::kDefaultName));
  EXPECT_EQ(perm_of(*fs_, *fs_->create("/e/g", 0666)), 0666u);
  crash_and_mount();
  EXPECT_EQ(acl::parse(fs_->get_xattr(f, acl::kAccessName).value_or("")).value_or(acl::Acl{}), want_f);
  expect_clean();
}

TEST_F(FsTest, AnImageFromBeforeXattrsIsMarkedAtItsFirstAttribute) {
  ASSERT_OK(fs_->unmount());
  fs_.reset();
  const uint64_t blocks = device_->size_bytes() / kBlockSize;
  const uint64_t supers[] = {format::primary_superblock_block(), format::secondary_superblock_block(blocks)};
  for (uint64_t b : supers) {
    EXPECT_NE(incompat_bits(*device_, b, format::kIncompatXattrs) & format::kIncompatXattrs, 0u) << "mkfs sets it";
  }
  mount();
  InodeNumber f = *fs_->create("/f");
  EXPECT_EQ(incompat_bits(*device_, supers[0], 0) & format::kIncompatXattrs, 0u) << "only an attribute marks it";
  ASSERT_OK(fs_->set_xattr(f, "user.k", "v"));
  for (uint64_t b : supers) EXPECT_NE(incompat_bits(*device_, b, 0) & format::kIncompatXattrs, 0u) << b;
  crash_and_mount();
  EXPECT_EQ(fs_->get_xattr(f, "user.k").value_or(""), "v");
  expect_clean();
}

// Small device: attributes fill it until ENOSPC, and still a checkpoint can
// always be written and removing attributes makes room again.
class SmallFsTest : public FsTest {
 protected:
  SmallFsTest() : FsTest(16ull << 20) {}
};

TEST_F(SmallFsTest, AttributesOnAFullDeviceNeverWedgeTheCheckpoint) {
  const std::string value(format::kXattrValueBytesMax, 'v');
  std::vector<InodeNumber> files;
  bool full = false;
  for (int i = 0; i < 100000 && !full; ++i) {
    auto f = fs_->create("/f" + std::to_string(i));
    if (!f.has_value()) {
      ASSERT_EQ(f.error().code, ENOSPC) << f.error().message;
      break;
    }
    files.push_back(*f);
    for (int k = 0; k < 20; ++k) {
      auto r = fs_->set_xattr(*f, "user.k" + std::to_string(k), value);
      if (!r.has_value()) {
        ASSERT_EQ(r.error().code, ENOSPC) << r.error().message;
        full = true;
        break;
      }
    }
  }
  ASSERT_TRUE(full) << "the device never filled";
  ASSERT_OK(fs_->checkpoint());
  ASSERT_OK(fs_->checkpoint());
  expect_clean();
  for (int k = 0; k < 20; ++k) (void)fs_->remove_xattr(files[0], "user.k" + std::to_string(k));
  ASSERT_OK(fs_->checkpoint());
  ASSERT_OK(fs_->set_xattr(files[0], "user.again", value));
  remount();
  EXPECT_EQ(fs_->get_xattr(files[0], "user.again").value_or(""), value);
  EXPECT_EQ(fs_->get_xattr(files[1], "user.k0").value_or(""), value);
  expect_clean();
}

// The worst packing for the shared directory section: entries with the
// longest names, each directory's large attribute after them. Filled to
// ENOSPC, every checkpoint must still fit (the space held for it is enough).
TEST_F(SmallFsTest, LongNamesAndLargeAttributesInterleavedStillLeaveRoomForCheckpoints) {
  const std::string value(2900, 'v');
  bool full = false;
  for (int d = 0; d < 100000 && !full; ++d) {
    const std::string dir = "/d" + std::to_string(d);
    auto made = fs_->mkdir(dir);
    if (!made.has_value()) {
      ASSERT_EQ(made.error().code, ENOSPC) << made.error().message;
      break;
    }
    for (int i = 0; i < 7 && !full; ++i) {
      std::string name = std::to_string(i) + std::string(250, 'n');
      auto f = fs_->create(dir + "/" + name);
      if (!f.has_value()) {
        ASSERT_EQ(f.error().code, ENOSPC) << f.error().message;
        full = true;
      }
    }
    if (full) break;
    auto r = fs_->set_xattr(*made, "user.big", value);
    if (!r.has_value()) {
      ASSERT_EQ(r.error().code, ENOSPC) << r.error().message;
      full = true;
    }
  }
  ASSERT_TRUE(full);
  ASSERT_OK(fs_->checkpoint());
  ASSERT_OK(fs_->checkpoint());
  remount();
  expect_clean();
}

TEST_F(FsTest, TheMakersUmaskAppliesUnlessTheDirectoryHasADefaultAcl) {
  Credentials maker{1000, 1000, 077};
  EXPECT_EQ(fs_->stat(*fs_->create("/plain", 0666, maker))->mode, 0600u);
  EXPECT_EQ(fs_->stat(*fs_->mkdir("/pdir", 0777, maker))->mode, 0700u);
  InodeNumber d = *fs_->mkdir("/d", 0755);
  ASSERT_OK(fs_->set_xattr(d, acl::kDefaultName,
                           acl_bytes({{acl::kUserObj, 7, 0}, {acl::kGroupObj, 5, 0}, {acl::kOther, 5, 0}})));
  EXPECT_EQ(fs_->stat(*fs_->create("/d/f", 0666, maker))->mode, 0644u) << "the default ACL, not the umask";
  EXPECT_EQ(fs_->stat(*fs_->symlink("x", "/d/l", maker))->mode, 0777u);
}

TEST_F(FsTest, AnEmptyAclIsARemovalAndRemovingAMissingAclSucceeds) {
  InodeNumber f = *fs_->create("/f", 0644);
  ASSERT_OK(fs_->set_xattr(f, acl::kAccessName, acl_bytes(named_user_acl())));
  ASSERT_OK(fs_->set_xattr(f, acl::kAccessName, acl_bytes({})));  // the version word alone
  EXPECT_ERRNO(fs_->get_xattr(f, acl::kAccessName), ENODATA);
  ASSERT_OK(fs_->remove_xattr(f, acl::kAccessName));
  ASSERT_OK(fs_->remove_xattr(f, acl::kDefaultName));
  EXPECT_ERRNO(fs_->remove_xattr(f, "user.none"), ENODATA);
  // Named ids in any order (Linux checks only the tag order).
  acl::Acl unsorted{{acl::kUserObj, 6, 0}, {acl::kUser, 4, 2000}, {acl::kUser, 4, 1000}, {acl::kGroupObj, 4, 0},
                    {acl::kMask, 4, 0}, {acl::kOther, 0, 0}};
  ASSERT_OK(fs_->set_xattr(f, acl::kAccessName, acl_bytes(unsorted)));
  expect_clean();
}

TEST(PosixAcl, PermissionIsDecidedAsLinuxDecidesIt) {
  // owner 10:20; u::rw-, u:30:---, g::r--, g:40:rw-, m::r--, o::r--
  acl::Acl a{{acl::kUserObj, 6, 0}, {acl::kUser, 0, 30}, {acl::kGroupObj, 4, 0}, {acl::kGroup, 6, 40},
             {acl::kMask, 4, 0}, {acl::kOther, 4, 0}};
  EXPECT_TRUE(acl::permits(a, 10, 20, 10, {99}, 6)) << "the owner entry, not masked";
  EXPECT_FALSE(acl::permits(a, 10, 20, 30, {99}, 4)) << "a named user's entry beats other";
  EXPECT_TRUE(acl::permits(a, 10, 20, 31, {40}, 4)) << "a named group, within the mask";
  EXPECT_FALSE(acl::permits(a, 10, 20, 31, {40}, 2)) << "the mask limits a named group";
  EXPECT_FALSE(acl::permits(a, 10, 20, 31, {20}, 2)) << "a matching group that does not grant: no fall to other";
  EXPECT_TRUE(acl::permits(a, 10, 20, 31, {77}, 4)) << "nobody matching: other";
  EXPECT_FALSE(acl::permits(a, 10, 20, 31, {77}, 2));
  EXPECT_TRUE(acl::is_empty(acl::encode({})));
  EXPECT_FALSE(acl::is_empty(acl::encode(a)));
}

// Random sets, replaces and removals on a few inodes, with crashes and
// checkpoints between, against a std::map per inode.
TEST_F(FsTest, XattrsMatchAModelThroughCrashesAndCheckpoints) {
  Rng rng(test_seed("FsTest.XattrsMatchAModel"));
  std::vector<InodeNumber> inodes{*fs_->create("/a"), *fs_->mkdir("/b"), *fs_->create("/c")};
  std::vector<std::map<std::string, std::string>> model(inodes.size());
  const char* names[] = {"user.a", "user.b", "trusted.c", "security.d", "user.long.name.of.an.attribute"};
  for (int step = 0; step < 600; ++step) {
    const size_t i = rng.below(inodes.size());
    const std::string name = names[rng.below(5)];
    const uint64_t what = rng.below(10);
    if (what < 6) {
      std::string value(rng.below(3) == 0 ? rng.below(format::kXattrValueBytesMax + 1) : rng.below(40), '\0');
      for (char& c : value) c = static_cast<char>(rng.below(256));
      const XattrMode mode = static_cast<XattrMode>(rng.below(3));
      auto r = fs_->set_xattr(inodes[i], name, value, mode);
      const bool exists = model[i].count(name) != 0;
      if (mode == XattrMode::Create && exists) {
        EXPECT_ERRNO(r, EEXIST);
      } else if (mode == XattrMode::Replace && !exists) {
        EXPECT_ERRNO(r, ENODATA);
      } else {
        ASSERT_OK(r);
        model[i][name] = value;
      }
    } else if (what < 8) {
      auto r = fs_->remove_xattr(inodes[i], name);
      if (model[i].erase(name) == 0) {
        EXPECT_ERRNO(r, ENODATA);
      } else {
        ASSERT_OK(r);
      }
    } else if (what == 8) {
      crash_and_mount();
    } else if (rng.below(4) == 0) {
      ASSERT_OK(fs_->checkpoint());
    }
    for (size_t k = 0; k < inodes.size(); ++k) ASSERT_EQ(all_xattrs(*fs_, inodes[k]), model[k]) << "step " << step;
  }
  expect_clean();
}

TEST(PosixAcl, ModeBitsComeFromTheOwnerMaskAndOtherEntries) {
  EXPECT_EQ(acl::mode_bits(named_user_acl()), 0640u);
  acl::Acl no_mask{{acl::kUserObj, 5, 0}, {acl::kGroupObj, 3, 0}, {acl::kOther, 1, 0}};
  EXPECT_EQ(acl::mode_bits(no_mask), 0531u);
  EXPECT_TRUE(acl::says_only_mode(no_mask));
  EXPECT_FALSE(acl::says_only_mode(named_user_acl()));
  acl::Acl a = named_user_acl();
  EXPECT_EQ(acl::inherit(a, 0600), 0600u);
  EXPECT_EQ(a[1].perm, 4) << "a named entry keeps its bits (the mask limits them)";
  auto round = acl::parse(acl::encode(named_user_acl()));
  ASSERT_TRUE(round.has_value());
  EXPECT_EQ(*round, named_user_acl());
}

}  // namespace
}  // namespace poise::testing
