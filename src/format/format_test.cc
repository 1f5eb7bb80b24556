#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>
#include <vector>

#include "base/crc32c.h"
#include "base/random.h"
#include "format/ondisk.h"
#include "format/block.h"
#include "format/checkpoint_format.h"
#include "format/journal_format.h"
#include "format/records.h"
#include "format/superblock.h"
#include "poise/types.h"

namespace poise::format {
namespace {

SuperblockInfo sample_superblock() {
  SuperblockInfo sb;
  sb.version = kFormatVersion;
  sb.size_blocks = 8192;
  sb.feature_incompat = kIncompatReflink;
  sb.sequence = 3;
  sb.journal_start_block = 1;
  sb.journal_blocks = 256;
  sb.checkpoint_root_block = 300;
  sb.checkpoint_generation = 5;
  sb.checkpoint_copy_root_block = 4000;
  sb.journal_copy_start_block = 8192 - 1 - 256;
  sb.uuid[0] = 0xAB;
  return sb;
}

TEST(Superblock, RoundTrips) {
  alignas(64) std::byte block[kBlockSize];
  encode_superblock(sample_superblock(), 0, block);
  auto decoded = decode_superblock(block, 0, "primary superblock");
  ASSERT_TRUE(decoded.has_value()) << decoded.error().message;
  EXPECT_EQ(decoded->sequence, 3u);
  EXPECT_EQ(decoded->checkpoint_root_block, 300u);
  EXPECT_EQ(decoded->checkpoint_generation, 5u);
  EXPECT_EQ(decoded->checkpoint_copy_root_block, 4000u);
  EXPECT_EQ(decoded->journal_copy_start_block, 8192u - 1 - 256);
  EXPECT_EQ(decoded->uuid[0], 0xAB);
}

TEST(Superblock, VersionOneHasOneCopyAndVersionTwoNeedsBoth) {
  alignas(64) std::byte block[kBlockSize];
  SuperblockInfo v1 = sample_superblock();
  v1.version = kFormatVersionSingleCopy;
  encode_superblock(v1, 0, block);
  auto decoded = decode_superblock(block, 0, "primary superblock");
  ASSERT_TRUE(decoded.has_value()) << decoded.error().message;
  EXPECT_FALSE(decoded->has_copies());
  EXPECT_EQ(decoded->checkpoint_copy_root_block, 0u);

  for (auto breaks : {+[](SuperblockInfo* s) { s->journal_copy_start_block = 0; },
                      +[](SuperblockInfo* s) { s->journal_copy_start_block = 8192 - 256; },  // over the secondary
                      +[](SuperblockInfo* s) { s->checkpoint_copy_root_block = 300; },       // the first root
                      +[](SuperblockInfo* s) { s->checkpoint_copy_root_block = 8000; }}) {   // in the journal copy
    SuperblockInfo v2 = sample_superblock();
    breaks(&v2);
    encode_superblock(v2, 0, block);
    auto bad = decode_superblock(block, 0, "primary superblock");
    ASSERT_FALSE(bad.has_value());
    EXPECT_EQ(bad.error().code, EUCLEAN) << bad.error().message;
  }
}

// The previous checkpoint and the carried journal (compatible bit 0): kept
// through a round trip, checked for place, and ignored in the shorter
// superblock an older release writes (which keeps the bit but not the fields).
TEST(Superblock, NamesThePreviousCheckpointAndTheCarriedJournal) {
  alignas(64) std::byte block[kBlockSize];
  SuperblockInfo sb = sample_superblock();
  sb.feature_compat |= kCompatPreviousCheckpoint;
  sb.previous_root_block = 310;
  sb.previous_copy_root_block = 4010;
  sb.carry_block = 320;
  sb.carry_copy_block = 4020;
  sb.carry_blocks = 3;
  encode_superblock(sb, 0, block);
  auto decoded = decode_superblock(block, 0, "primary superblock");
  ASSERT_TRUE(decoded.has_value()) << decoded.error().message;
  EXPECT_TRUE(decoded->has_previous());
  EXPECT_EQ(decoded->previous_copy_root_block, 4010u);
  EXPECT_EQ(decoded->carry_copy_block, 4020u);
  EXPECT_EQ(decoded->carry_blocks, 3u);

  for (auto breaks : {+[](SuperblockInfo* s) { s->previous_root_block = 300; },        // the current root
                      +[](SuperblockInfo* s) { s->previous_copy_root_block = 310; },   // the other previous root
                      +[](SuperblockInfo* s) { s->previous_root_block = 100; },        // in the journal
                      +[](SuperblockInfo* s) { s->carry_block = 4000 - 1; },           // over the copy root
                      +[](SuperblockInfo* s) { s->carry_copy_block = 321; },           // over the other copy
                      +[](SuperblockInfo* s) { s->carry_blocks = 1000; },              // more than a journal
                      +[](SuperblockInfo* s) { s->carry_copy_block = 8192 - 256 - 2; },  // into the journal copy
                      +[](SuperblockInfo* s) { s->checkpoint_generation = 1; },        // none before the first
                      +[](SuperblockInfo* s) { s->previous_root_block = 0; }}) {       // a carry with no previous
    SuperblockInfo bad = sb;
    breaks(&bad);
    encode_superblock(bad, 0, block);
    auto refused = decode_superblock(block, 0, "primary superblock");
    ASSERT_FALSE(refused.has_value());
    EXPECT_EQ(refused.error().code, EUCLEAN) << refused.error().message;
  }

  // As an older release writes it: 152 bytes used, the bit kept.
  encode_superblock(sb, 0, block);
  std::memset(block + offsetof(Superblock, previous_root_block), 0x5A,
              sizeof(Superblock) - offsetof(Superblock, previous_root_block));
  seal_block(block, kBlockSuperblock, 0, sb.checkpoint_generation, offsetof(Superblock, previous_root_block));
  auto older = decode_superblock(block, 0, "primary superblock");
  ASSERT_TRUE(older.has_value()) << older.error().message;
  EXPECT_FALSE(older->has_previous());
  EXPECT_EQ(older->carry_blocks, 0u);
}

TEST(Superblock, NamesWhatIsWrong) {
  alignas(64) std::byte block[kBlockSize];
  encode_superblock(sample_superblock(), 0, block);

  std::byte flipped[kBlockSize];
  std::memcpy(flipped, block, kBlockSize);
  flipped[200] ^= std::byte{1};
  auto bad_crc = decode_superblock(flipped, 0, "primary superblock");
  ASSERT_FALSE(bad_crc.has_value());
  EXPECT_EQ(bad_crc.error().code, EBADMSG);
  EXPECT_NE(bad_crc.error().message.find("checksum"), std::string::npos);

  std::memcpy(flipped, block, kBlockSize);
  flipped[0] = std::byte{'X'};
  auto bad_magic = decode_superblock(flipped, 0, "primary superblock");
  ASSERT_FALSE(bad_magic.has_value());
  EXPECT_EQ(bad_magic.error().code, EUCLEAN);
  EXPECT_NE(bad_magic.error().message.find("magic"), std::string::npos);

  auto misplaced = decode_superblock(block, 8191, "secondary superblock");
  ASSERT_FALSE(misplaced.has_value());
  EXPECT_NE(misplaced.error().message.find("misdirected"), std::string::npos);

  SuperblockInfo newer = sample_superblock();
  newer.version = kFormatVersion + 1;
  encode_superblock(newer, 0, block);
  auto too_new = decode_superblock(block, 0, "primary superblock");
  ASSERT_FALSE(too_new.has_value());
  EXPECT_EQ(too_new.error().code, ENOTSUP);
  EXPECT_NE(too_new.error().message.find("newer"), std::string::npos);

  SuperblockInfo feature = sample_superblock();
  feature.feature_incompat |= 1ull << 40;
  encode_superblock(feature, 0, block);
  auto unknown = decode_superblock(block, 0, "primary superblock");
  ASSERT_FALSE(unknown.has_value());
  EXPECT_EQ(unknown.error().code, ENOTSUP);
}

std::vector<JournalRecord> sample_records() {
  InodeCore inode{7, kModeRegular | 0644, 1, 1000, 1000, 12345, 1, 2, 3};
  return {inode,
          InodeFreeRecord{9},
          DirentRecord{1, 7, "hello.txt"},
          DirentRemoveRecord{1, "old"},
          ExtentRecord{7, 0, 4000, 16, kExtentUnwritten},
          ExtentClearRecord{7, 8, 4},
          XattrRecord{7, "user.empty", ""},
          XattrRecord{7, "user.binary", std::string("a\0b\xff", 4)},
          XattrRecord{1, "trusted." + std::string(247, 'n'), std::string(kXattrValueBytesMax, 'v')},
          XattrRemoveRecord{7, "security.selinux"}};
}

// Every file type Linux has is an inode type (special files since feature bit
// 3); other type bits are corruption.
TEST(InodeRecords, KnowEveryFileTypeAndRefuseOtherTypeBits) {
  for (uint32_t type : {kModeRegular, kModeDirectory, kModeSymlink, kModeFifo, kModeCharDevice, kModeBlockDevice,
                        kModeSocket}) {
    DiskInode disk{};
    encode_inode(InodeCore{7, type | 0644, 1, 0, 0, type == kModeCharDevice ? 0x501u : 0u, 1, 2, 3}, disk);
    auto back = decode_inode(disk);
    ASSERT_TRUE(back.has_value()) << std::oct << type << ": " << back.error().message;
    EXPECT_EQ(back->mode, type | 0644);
  }
  for (uint32_t bad : {0u, 0030000u, 0050000u, 0070000u, 0110000u, 0130000u, 0150000u, 0160000u, 0170000u}) {
    DiskInode disk{};
    encode_inode(InodeCore{7, bad | 0644, 1, 0, 0, 0, 1, 2, 3}, disk);
    auto back = decode_inode(disk);
    ASSERT_FALSE(back.has_value()) << std::oct << bad;
    EXPECT_EQ(back.error().code, EUCLEAN);
  }
}

// An attribute in the directory section is told from an entry by its kind
// byte; each decoder refuses the other kind and damaged fields.
TEST(NamedRecords, AttributesAndEntriesTellThemselvesApart) {
  std::vector<unsigned char> buf(xattr_bytes(kXattrNameBytesMax, kXattrValueBytesMax));
  const XattrRecord x{42, "user.k", "value"};
  encode_xattr(x, buf.data());
  size_t used = 0;
  EXPECT_EQ(named_kind(buf.data(), buf.size()), kNamedXattr);
  auto back = decode_xattr(buf.data(), buf.size(), &used);
  ASSERT_TRUE(back.has_value()) << back.error().message;
  EXPECT_EQ(*back, x);
  EXPECT_EQ(used, xattr_bytes(6, 5));
  EXPECT_FALSE(decode_dirent(buf.data(), buf.size(), &used).has_value()) << "an attribute is no entry";
  EXPECT_FALSE(decode_xattr(buf.data(), used - 1, &used).has_value()) << "truncated";

  auto damaged = [&](size_t at, unsigned char byte) {
    std::vector<unsigned char> copy = buf;
    copy[at] = byte;
    size_t n = 0;
    return decode_xattr(copy.data(), copy.size(), &n).has_value();
  };
  EXPECT_FALSE(damaged(sizeof(DiskXattr), 'x')) << "name outside every namespace";
  EXPECT_FALSE(damaged(offsetof(DiskXattr, reserved0), 1));
  EXPECT_FALSE(damaged(offsetof(DiskXattr, reserved) + 2, 1));
  EXPECT_FALSE(damaged(offsetof(DiskXattr, value_len) + 2, 1)) << "value beyond the limit";
  std::vector<unsigned char> zero_ino = buf;
  std::memset(zero_ino.data(), 0, 8);
  EXPECT_FALSE(decode_xattr(zero_ino.data(), zero_ino.size(), &used).has_value()) << "inode 0";

  std::vector<unsigned char> entry(dirent_bytes(3));
  encode_dirent(DirentRecord{1, 2, "abc"}, entry.data());
  EXPECT_EQ(named_kind(entry.data(), entry.size()), kNamedDirent);
  EXPECT_FALSE(decode_xattr(entry.data(), entry.size(), &used).has_value()) << "an entry is no attribute";
  EXPECT_EQ(named_kind(entry.data(), sizeof(DiskDirent) - 1), -1);

  for (const char* bad : {"", "user.", "user", "other.k", "system"}) EXPECT_FALSE(valid_xattr_name(bad)) << bad;
  for (const char* good : {"user.k", "trusted.x", "security.selinux", "system.posix_acl_access"}) {
    EXPECT_TRUE(valid_xattr_name(good)) << good;
  }
  EXPECT_FALSE(valid_xattr_name(std::string("user.a\0b", 8)));
  EXPECT_FALSE(valid_xattr_name("user." + std::string(251, 'n')));
}

TEST(Journal, TransactionRoundTrips) {
  TxEncoder tx;
  for (const auto& r : sample_records()) tx.add(r);
  std::vector<std::byte> region(1 << 20, std::byte{0});
  auto sealed = tx.seal(4, 1, 0);
  ASSERT_EQ(sealed.size() % kTxAlign, 0u);
  std::memcpy(region.data(), sealed.data(), sealed.size());
  auto decoded = decode_tx(region.data(), region.size(), 0, 4, 1);
  ASSERT_TRUE(decoded.has_value()) << decoded.error().message;
  EXPECT_EQ(decoded->records, sample_records());
  EXPECT_EQ(decoded->sealed_bytes, sealed.size());
}

TEST(Journal, TornStaleAndMisplacedTransactionsEndTheLog) {
  TxEncoder tx;
  for (const auto& r : sample_records()) tx.add(r);
  std::vector<std::byte> region(1 << 20, std::byte{0});
  auto sealed = tx.seal(4, 1, 0);
  std::memcpy(region.data(), sealed.data(), sealed.size());
  EXPECT_EQ(decode_tx(region.data(), region.size(), 0, 5, 1).error().code, ENODATA);  // stale
  EXPECT_EQ(decode_tx(region.data(), region.size(), 0, 4, 2).error().code, ENODATA);  // lsn
  std::memcpy(region.data() + 64 * 4, sealed.data(), sealed.size());
  EXPECT_EQ(decode_tx(region.data(), region.size(), 64 * 4, 4, 1).error().code, ENODATA);
  region[sealed.size() - 70] ^= std::byte{0x40};  // torn payload
  EXPECT_EQ(decode_tx(region.data(), region.size(), 0, 4, 1).error().code, ENODATA);
  EXPECT_EQ(decode_tx(region.data(), region.size(), 4096, 4, 1).error().code, ENODATA);  // zeros
}

TEST(Checkpoint, SectionsRoundTripAcrossBlocks) {
  std::vector<std::vector<std::byte>> device(64, std::vector<std::byte>(kBlockSize));
  const uint64_t first = 10;
  SectionWriter writer([&](uint32_t index, std::byte* block, uint32_t used) {
    seal_block(block, kBlockDirentSection, first + index, 9, used);
    std::memcpy(device[first + index].data(), block, kBlockSize);
  });
  std::vector<DirentRecord> written;
  for (int i = 0; i < 500; ++i) {
    DirentRecord d{1, uint64_t(i + 2), "file-" + std::to_string(i) + std::string(i % 40, 'x')};
    std::vector<unsigned char> bytes(dirent_bytes(d.name.size()));
    encode_dirent(d, bytes.data());
    writer.add(bytes.data(), bytes.size());
    written.push_back(d);
  }
  writer.finish();
  ASSERT_GT(writer.blocks(), 3u);
  SectionInfo info{500, {{first, writer.blocks()}}};
  std::vector<DirentRecord> read_back;
  auto read = [&](uint64_t b, std::byte* out) -> Result<void> {
    std::memcpy(out, device[b].data(), kBlockSize);
    return {};
  };
  auto visit = [&](const unsigned char* p, size_t bytes, uint32_t records) -> Result<void> {
    size_t pos = 0;
    for (uint32_t i = 0; i < records; ++i) {
      size_t used = 0;
      read_back.push_back(TRY(decode_dirent(p + pos, bytes - pos, &used)));
      pos += used;
    }
    return {};
  };
  auto ok = read_section(read, info, kSectionDirents, 9, visit);
  ASSERT_TRUE(ok.has_value()) << ok.error().message;
  EXPECT_EQ(read_back, written);
  read_back.clear();
  auto wrong_generation = read_section(read, info, kSectionDirents, 10, visit);
  ASSERT_FALSE(wrong_generation.has_value());
  EXPECT_EQ(wrong_generation.error().code, EUCLEAN);
}

// A section of more runs than the root lists: the rest go to a chain of
// run-list links, and every way the chain can be wrong is refused.
TEST(Checkpoint, RunListsCarryRunsPastTheRootAndRefuseBadChains) {
  constexpr uint64_t kBlocks = 4096, kDataStart = 16, kGeneration = 7;
  std::vector<std::vector<std::byte>> device(kBlocks, std::vector<std::byte>(kBlockSize));
  CheckpointRootInfo root;
  root.generation = kGeneration;
  root.next_ino = 2;
  SectionInfo& extents = root.sections[kSectionExtents];
  for (uint64_t i = 0; i < 600; ++i) extents.runs.push_back({1000 + 2 * i, 1});  // one-block pieces
  extents.records = root.extent_count = 600 * 126;
  ASSERT_EQ(run_list_blocks_needed(extents.runs.size()), 3u);  // 48 in the root, 253 + 253 + 46
  EXPECT_EQ(run_list_blocks_needed(kSectionExtentsMax), 0u);
  EXPECT_EQ(run_list_blocks_needed(kSectionExtentsMax + 1), 1u);
  extents.list_blocks = {500, 300, 700};  // anywhere in the data area, in chain order
  auto store = [&](uint64_t at, const std::byte* image) { std::memcpy(device[at].data(), image, kBlockSize); };
  encode_run_lists(extents, kSectionExtents, kGeneration, store);
  encode_checkpoint_root(root, 20, device[20].data());
  auto read = [&](uint64_t b, std::byte* out) -> Result<void> {
    std::memcpy(out, device.at(b).data(), kBlockSize);
    return {};
  };
  auto load = [&]() -> Result<CheckpointRootInfo> {
    auto decoded = TRY(decode_checkpoint_root(device[20].data(), 20, kGeneration, kDataStart, kBlocks));
    EXPECT_EQ(decoded.sections[kSectionExtents].runs.size(), kSectionExtentsMax);
    TRY(read_run_lists(read, &decoded, kDataStart, kBlocks));
    return decoded;
  };
  auto loaded = load();
  ASSERT_TRUE(loaded.has_value()) << loaded.error().message;
  ASSERT_EQ(loaded->sections[kSectionExtents].runs.size(), 600u);
  for (size_t i = 0; i < 600; ++i) EXPECT_EQ(loaded->sections[kSectionExtents].runs[i].start_block, 1000 + 2 * i);
  EXPECT_EQ(loaded->sections[kSectionExtents].list_blocks, extents.list_blocks);

  auto expect_refused = [&](const char* what) {
    auto r = load();
    ASSERT_FALSE(r.has_value()) << what;
    EXPECT_TRUE(r.error().code == EUCLEAN || r.error().code == EBADMSG) << what << ": " << r.error().message;
  };
  const std::vector<std::byte> middle = device[300];
  device[300][200] ^= std::byte{1};  // a flipped bit
  expect_refused("a damaged link");
  device[300] = middle;
  encode_run_lists(extents, kSectionExtents, kGeneration + 1, store);  // stale links
  expect_refused("links of another generation");
  encode_run_lists(extents, kSectionInodes, kGeneration, store);
  expect_refused("links of another section");
  encode_run_lists(extents, kSectionExtents, kGeneration, store);
  auto relink = [&](uint64_t at, uint64_t next) {  // a valid link pointing elsewhere
    RunListBlock link;
    std::memcpy(&link, device[at].data(), sizeof link);
    link.next_block.set(next);
    std::memcpy(device[at].data(), &link, sizeof link);
    seal_block(device[at].data(), kBlockRunList, at, kGeneration, sizeof link);
  };
  relink(300, 500);  // the second link points back at the first
  expect_refused("a chain that loops");
  relink(300, 700);
  relink(700, 500);
  expect_refused("a chain that continues past its last run");
  relink(700, 0);
  ASSERT_TRUE(load().has_value());
  SectionInfo longer = extents;
  longer.runs.resize(302);  // two links, rewritten over the first two; the root still counts 600
  longer.list_blocks = {500, 300};
  encode_run_lists(longer, kSectionExtents, kGeneration, store);
  expect_refused("a chain that ends early");
  encode_run_lists(extents, kSectionExtents, kGeneration, store);
  ASSERT_TRUE(load().has_value());
}

// Seeded mutation fuzzing of the decoders: no input may crash them, and a
// decoder must never accept a block whose checksum no longer matches.
TEST(DecoderFuzz, MutatedSuperblocksAndJournalsNeverCrash) {
  Rng rng(test_seed("DecoderFuzz.MutatedSuperblocksAndJournalsNeverCrash"));
  alignas(64) std::byte good_sb[kBlockSize];
  encode_superblock(sample_superblock(), 0, good_sb);
  TxEncoder tx;
  for (const auto& r : sample_records()) tx.add(r);
  auto good_tx = tx.seal(4, 1, 0);
  std::vector<std::byte> region(8192, std::byte{0});
  int accepted_sb = 0, accepted_tx = 0;
  for (int iteration = 0; iteration < 20000; ++iteration) {
    alignas(64) std::byte sb[kBlockSize];
    std::memcpy(sb, good_sb, kBlockSize);
    int flips = 1 + static_cast<int>(rng.below(8));
    for (int i = 0; i < flips; ++i) sb[rng.below(rng.chance(2) ? 160 : kBlockSize)] = std::byte(rng.next());
    // Half the time re-seal, so the field checks behind the checksum are fuzzed too.
    bool resealed = rng.chance(2);
    if (resealed) {
      Superblock h;
      std::memcpy(&h, sb, sizeof h);
      seal_block(sb, kBlockSuperblock, 0, h.header.generation.get(), sizeof(Superblock));
    }
    auto r = decode_superblock(sb, 0, "fuzzed superblock");
    if (r.has_value()) {
      ++accepted_sb;
      EXPECT_LE(r->version, kFormatVersion);
      EXPECT_LT(r->checkpoint_root_block, r->size_blocks);
    }

    std::fill(region.begin(), region.end(), std::byte{0});
    std::memcpy(region.data(), good_tx.data(), good_tx.size());
    for (int i = 0; i < flips; ++i) region[rng.below(good_tx.size())] = std::byte(rng.next());
    if (rng.chance(2)) {
      // Recompute the checksum so that record decoding is exercised.
      TxHeader h;
      std::memcpy(&h, region.data(), sizeof h);
      h.crc.set(0);
      uint64_t payload = std::min<uint64_t>(h.payload_bytes.get(), region.size() - sizeof h);
      uint32_t crc = crc32c_extend(crc32c(&h, sizeof h), region.data() + sizeof h, payload);
      std::memcpy(region.data() + offsetof(TxHeader, crc), &crc, 4);
    }
    auto t = decode_tx(region.data(), region.size(), 0, 4, 1);
    if (t.has_value()) {
      ++accepted_tx;
    } else {
      EXPECT_TRUE(t.error().code == ENODATA || t.error().code == EUCLEAN) << t.error().message;
    }
  }
  std::fprintf(stderr, "accepted %d superblocks and %d transactions of 20000 mutants\n",
               accepted_sb, accepted_tx);
}

}  // namespace
}  // namespace poise::format
