#include "format/journal_format.h"

#include <cstring>
#include <string>
#include <type_traits>

#include "base/crc32c.h"

namespace poise::format {
namespace {

template <class T>
void append(std::vector<unsigned char>& out, const T& value) {
  const auto* p = reinterpret_cast<const unsigned char*>(&value);
  out.insert(out.end(), p, p + sizeof value);
}

void pad_to(std::vector<unsigned char>& out, size_t align) {
  out.resize((out.size() + align - 1) / align * align, 0);
}

void append_record_header(std::vector<unsigned char>& out, RecordType type, size_t length) {
  RecordHeader h;
  h.type.set(type);
  h.reserved.set(0);
  h.length.set(static_cast<uint32_t>(length));
  append(out, h);
}

// An extended-attribute record, encoded straight into the payload.
void append_xattr_record(std::vector<unsigned char>& out, RecordType type, const XattrRecord& x) {
  size_t length = xattr_bytes(x.name.size(), x.value.size());
  append_record_header(out, type, length);
  size_t at = out.size();
  out.resize(at + length);
  encode_xattr(x, out.data() + at);
}

// A directory entry record, encoded straight into the payload.
void append_dirent_record(std::vector<unsigned char>& out, RecordType type, const DirentRecord& d) {
  size_t length = dirent_bytes(d.name.size());
  append_record_header(out, type, length);
  size_t at = out.size();
  out.resize(at + length);
  encode_dirent(d, out.data() + at);
}

void append_record(std::vector<unsigned char>& out, RecordType type, const void* body,
                   size_t length) {
  RecordHeader h;
  h.type.set(type);
  h.reserved.set(0);
  h.length.set(static_cast<uint32_t>(length));
  append(out, h);
  const auto* p = static_cast<const unsigned char*>(body);
  out.insert(out.end(), p, p + length);
  pad_to(out, 8);
}

template <class Disk>
Result<Disk> body_as(const unsigned char* body, uint32_t length, const char* what) {
  if (length != sizeof(Disk)) {
    return fail(EUCLEAN, std::string("journal ") + what + " record has length " +
                             std::to_string(length));
  }
  Disk d;
  std::memcpy(&d, body, sizeof d);
  return d;
}

Result<JournalRecord> decode_record(uint16_t type, const unsigned char* body, uint32_t length) {
  switch (type) {
    case kRecordInodeSet: {
      auto d = TRY(body_as<DiskInode>(body, length, "inode"));
      return JournalRecord(TRY(decode_inode(d)));
    }
    case kRecordInodeFree: {
      auto d = TRY(body_as<DiskInodeFree>(body, length, "inode-free"));
      if (d.ino.get() == 0) return fail(EUCLEAN, "journal frees inode 0");
      return JournalRecord(InodeFreeRecord{d.ino.get()});
    }
    case kRecordDirentAdd: {
      size_t used = 0;
      auto r = TRY(decode_dirent(body, length, &used));
      if (used != length) return fail(EUCLEAN, "journal dirent record length mismatch");
      return JournalRecord(std::move(r));
    }
    case kRecordDirentRemove: {
      size_t used = 0;
      auto r = TRY(decode_dirent(body, length, &used));
      if (used != length) return fail(EUCLEAN, "journal dirent record length mismatch");
      return JournalRecord(DirentRemoveRecord{r.dir, std::move(r.name)});
    }
    case kRecordExtentSet: {
      auto d = TRY(body_as<DiskExtent>(body, length, "extent"));
      return JournalRecord(TRY(decode_extent(d)));
    }
    case kRecordBadRange: {
      auto d = TRY(body_as<DiskBadRange>(body, length, "bad-range"));
      return JournalRecord(TRY(decode_bad_range(d)));
    }
    case kRecordXattrSet: {
      size_t used = 0;
      auto r = TRY(decode_xattr(body, length, &used));
      if (used != length) return fail(EUCLEAN, "journal extended-attribute record length mismatch");
      return JournalRecord(std::move(r));
    }
    case kRecordXattrRemove: {
      size_t used = 0;
      auto r = TRY(decode_xattr(body, length, &used));
      if (used != length || !r.value.empty()) return fail(EUCLEAN, "journal extended-attribute removal is malformed");
      return JournalRecord(XattrRemoveRecord{r.ino, std::move(r.name)});
    }
    case kRecordWrittenBack: {
      auto d = TRY(body_as<DiskWrittenBack>(body, length, "written-back"));
      return JournalRecord(WrittenBackRecord{d.lsn.get()});
    }
    case kRecordExtentClear: {
      auto d = TRY(body_as<DiskExtentClear>(body, length, "extent-clear"));
      ExtentClearRecord r{d.ino.get(), d.file_block.get(), d.block_count.get()};
      if (r.ino == 0 || r.block_count == 0 || r.file_block + r.block_count < r.file_block) {
        return fail(EUCLEAN, "journal extent-clear record out of range");
      }
      return JournalRecord(r);
    }
  }
  return fail(EUCLEAN, "journal record of unknown type " + std::to_string(type));
}

}  // namespace

uint32_t tx_crc(const TxHeader& header, const unsigned char* payload, size_t bytes) {
  TxHeader h = header;
  h.crc.set(0);
  return crc32c_extend(crc32c(&h, sizeof h), payload, bytes);
}

void TxEncoder::add(const JournalRecord& record) {
  std::visit(
      [&](const auto& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, InodeCore>) {
          DiskInode d;
          encode_inode(r, d);
          append_record(payload_, kRecordInodeSet, &d, sizeof d);
        } else if constexpr (std::is_same_v<T, InodeFreeRecord>) {
          DiskInodeFree d;
          d.ino.set(r.ino);
          append_record(payload_, kRecordInodeFree, &d, sizeof d);
        } else if constexpr (std::is_same_v<T, DirentRecord>) {
          append_dirent_record(payload_, kRecordDirentAdd, r);
        } else if constexpr (std::is_same_v<T, DirentRemoveRecord>) {
          append_dirent_record(payload_, kRecordDirentRemove, DirentRecord{r.dir, r.dir, r.name});
        } else if constexpr (std::is_same_v<T, BadRangeRecord>) {
          DiskBadRange d;
          encode_bad_range(r, d);
          append_record(payload_, kRecordBadRange, &d, sizeof d);
        } else if constexpr (std::is_same_v<T, ExtentRecord>) {
          DiskExtent d;
          encode_extent(r, d);
          append_record(payload_, kRecordExtentSet, &d, sizeof d);
        } else if constexpr (std::is_same_v<T, XattrRecord>) {
          append_xattr_record(payload_, kRecordXattrSet, r);
        } else if constexpr (std::is_same_v<T, XattrRemoveRecord>) {
          append_xattr_record(payload_, kRecordXattrRemove, XattrRecord{r.ino, r.name, {}});
        } else if constexpr (std::is_same_v<T, WrittenBackRecord>) {
          DiskWrittenBack d;
          d.lsn.set(r.lsn);
          append_record(payload_, kRecordWrittenBack, &d, sizeof d);
        } else {
          static_assert(std::is_same_v<T, ExtentClearRecord>);
          DiskExtentClear d;
          d.ino.set(r.ino);
          d.file_block.set(r.file_block);
          d.block_count.set(r.block_count);
          append_record(payload_, kRecordExtentClear, &d, sizeof d);
        }
      },
      record);
  ++count_;
}

size_t TxEncoder::sealed_bytes() const {
  return (sizeof(TxHeader) + payload_.size() + kTxAlign - 1) / kTxAlign * kTxAlign;
}

void TxEncoder::seal(uint64_t generation, uint64_t lsn, uint64_t self_offset,
                     std::vector<std::byte>* out) const {
  POISE_ASSERT(sealed_bytes() <= kTxBytesMax);
  TxHeader h;
  std::memset(&h, 0, sizeof h);
  h.magic.set(kTxMagic);
  h.generation.set(generation);
  h.lsn.set(lsn);
  h.self_offset.set(self_offset);
  h.payload_bytes.set(static_cast<uint32_t>(payload_.size()));
  h.record_count.set(count_);
  h.crc.set(tx_crc(h, payload_.data(), payload_.size()));
  out->assign(sealed_bytes(), std::byte{0});
  std::memcpy(out->data(), &h, sizeof h);
  std::memcpy(out->data() + sizeof h, payload_.data(), payload_.size());
}

void TxEncoder::clear() {
  payload_.clear();
  count_ = 0;
}

uint64_t tx_sealed_bytes(const TxHeader& h) {
  uint64_t sealed = (sizeof h + uint64_t{h.payload_bytes.get()} + kTxAlign - 1) / kTxAlign * kTxAlign;
  return sealed > kTxBytesMax ? 0 : sealed;
}

Result<DecodedTx> decode_tx(const std::byte* region, uint64_t region_bytes, uint64_t offset,
                            uint64_t generation, uint64_t lsn) {
  if (offset % kTxAlign != 0 || offset + sizeof(TxHeader) > region_bytes) {
    return fail(ENODATA, "end of journal region");
  }
  return decode_tx_copy(region + offset, region_bytes - offset, offset, generation, lsn);
}

Result<DecodedTx> decode_tx_copy(const std::byte* tx_bytes, uint64_t available, uint64_t offset,
                                 uint64_t generation, uint64_t lsn) {
  if (offset % kTxAlign != 0 || sizeof(TxHeader) > available) return fail(ENODATA, "end of journal region");
  TxHeader h;
  std::memcpy(&h, tx_bytes, sizeof h);
  if (h.magic.get() != kTxMagic) return fail(ENODATA, "no transaction magic");
  uint64_t payload = h.payload_bytes.get();
  uint64_t sealed = tx_sealed_bytes(h);
  if (sealed == 0 || sealed > available) {
    return fail(ENODATA, "transaction length out of range");
  }
  const auto* body = reinterpret_cast<const unsigned char*>(tx_bytes + sizeof h);
  if (h.crc.get() != tx_crc(h, body, payload)) return fail(ENODATA, "torn transaction");
  if (h.generation.get() != generation || h.lsn.get() != lsn || h.self_offset.get() != offset) {
    return fail(ENODATA, "stale transaction from an earlier generation");
  }
  DecodedTx tx;
  tx.lsn = lsn;
  tx.sealed_bytes = sealed;
  uint64_t pos = 0;
  for (uint32_t i = 0; i < h.record_count.get(); ++i) {
    if (pos + sizeof(RecordHeader) > payload) {
      return fail(EUCLEAN, "journal transaction " + std::to_string(lsn) + " is shorter than its records");
    }
    RecordHeader rh;
    std::memcpy(&rh, body + pos, sizeof rh);
    uint64_t length = rh.length.get();
    pos += sizeof rh;
    if (length > payload - pos) {
      return fail(EUCLEAN, "journal record overruns transaction " + std::to_string(lsn));
    }
    tx.records.push_back(TRY(decode_record(rh.type.get(), body + pos, static_cast<uint32_t>(length))));
    pos += (length + 7) / 8 * 8;
  }
  if (pos != payload) {
    return fail(EUCLEAN, "journal transaction " + std::to_string(lsn) + " has trailing bytes");
  }
  return tx;
}

bool tx_may_reach(const std::byte* region, uint64_t readable_bytes, uint64_t offset, uint64_t generation,
                  uint64_t lsn) {
  if (offset + sizeof(TxHeader) > readable_bytes) return true;
  TxHeader h;
  std::memcpy(&h, region + offset, sizeof h);
  if (h.magic.get() != kTxMagic || h.generation.get() != generation || h.lsn.get() != lsn ||
      h.self_offset.get() != offset) {
    return false;  // not the next transaction: the log ends here
  }
  uint64_t sealed = (sizeof h + uint64_t{h.payload_bytes.get()} + kTxAlign - 1) / kTxAlign * kTxAlign;
  return offset + sealed > readable_bytes;
}

std::optional<TxLocation> find_later_tx(const std::byte* region, uint64_t region_bytes, uint64_t from,
                                        uint64_t generation, uint64_t lsn) {
  // Bounded: one header read per 64 bytes of the region.
  for (uint64_t at = (from / kTxAlign + 1) * kTxAlign; at + sizeof(TxHeader) <= region_bytes; at += kTxAlign) {
    TxHeader h;
    std::memcpy(&h, region + at, sizeof h);
    if (h.magic.get() != kTxMagic || h.generation.get() != generation || h.lsn.get() < lsn ||
        h.self_offset.get() != at) {
      continue;
    }
    uint64_t payload = h.payload_bytes.get();
    uint64_t sealed = (sizeof h + payload + kTxAlign - 1) / kTxAlign * kTxAlign;
    if (sealed > kTxBytesMax || at + sealed > region_bytes) continue;
    const auto* body = reinterpret_cast<const unsigned char*>(region + at + sizeof h);
    if (h.crc.get() == tx_crc(h, body, payload)) return TxLocation{h.lsn.get(), at};
  }
  return std::nullopt;
}

Result<void> decode_log(const std::vector<std::byte>& log, uint64_t generation,
                        const std::function<Result<void>(const DecodedTx&)>& visit) {
  for (uint64_t offset = 0, lsn = 1; offset < log.size(); ++lsn) {
    auto tx = decode_tx_copy(log.data() + offset, log.size() - offset, offset, generation, lsn);
    if (!tx.has_value()) {
      return fail(EUCLEAN, "the journal of generation " + std::to_string(generation) + " does not decode at transaction " +
                               std::to_string(lsn) + " (offset " + std::to_string(offset) + "): " + tx.error().message);
    }
    TRY(visit(*tx));
    offset += tx->sealed_bytes;
  }
  return {};
}

}  // namespace poise::format
