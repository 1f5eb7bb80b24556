#include "fs/posix_acl.h"

#include <cstring>

namespace poise::acl {
namespace {
constexpr uint32_t kVersion = 2;
constexpr size_t kHeaderBytes = 4;
constexpr size_t kEntryBytes = 8;

uint32_t load32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return uint32_t{u[0]} | uint32_t{u[1]} << 8 | uint32_t{u[2]} << 16 | uint32_t{u[3]} << 24;
}
uint16_t load16(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint16_t>(u[0] | u[1] << 8);
}
void store32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void store16(std::string& out, uint16_t v) {
  out.push_back(static_cast<char>(v & 0xff));
  out.push_back(static_cast<char>(v >> 8));
}

// The entry that holds the group class bits: the mask if there is one.
template <class A>
auto* group_class(A& acl) {
  decltype(&acl[0]) group_obj = nullptr;
  for (auto& e : acl) {
    if (e.tag == kMask) return &e;
    if (e.tag == kGroupObj) group_obj = &e;
  }
  return group_obj;
}
}  // namespace

Result<Acl> parse(std::string_view value) {
  if (value.size() < kHeaderBytes || (value.size() - kHeaderBytes) % kEntryBytes != 0) {
    return fail(EINVAL, "an ACL is a 4-byte version and 8-byte entries");
  }
  if (load32(value.data()) != kVersion) return fail(EINVAL, "ACL version is not 2");
  Acl acl;
  for (size_t at = kHeaderBytes; at < value.size(); at += kEntryBytes) {
    Entry e{load16(value.data() + at), load16(value.data() + at + 2), load32(value.data() + at + 4)};
    if (e.perm > 7) return fail(EINVAL, "ACL entry has permission bits beyond rwx");
    if (e.tag != kUser && e.tag != kGroup) e.id = 0;  // a base entry's id means nothing
    acl.push_back(e);
  }
  // Tag order, as Linux's check walks it: owner, named users, owning group,
  // named groups, mask, other; named ids ascending.
  uint16_t last_tag = 0;
  bool named = false, mask = false, seen_user_obj = false, seen_group_obj = false, seen_other = false;
  uint32_t last_id = 0;
  for (const Entry& e : acl) {
    switch (e.tag) {
      case kUserObj: case kGroupObj: case kMask: case kOther: case kUser: case kGroup: break;
      default: return fail(EINVAL, "ACL entry has an unknown tag");
    }
    if (e.tag < last_tag) return fail(EINVAL, "ACL entries are out of order");
    const bool is_named = e.tag == kUser || e.tag == kGroup;
    if (!is_named && e.tag == last_tag) return fail(EINVAL, "ACL has a base entry twice");
    if (is_named) {
      if (e.tag == last_tag && e.id <= last_id) return fail(EINVAL, "ACL names an id twice or out of order");
      last_id = e.id;
      named = true;
    }
    seen_user_obj |= e.tag == kUserObj;
    seen_group_obj |= e.tag == kGroupObj;
    seen_other |= e.tag == kOther;
    mask |= e.tag == kMask;
    last_tag = e.tag;
  }
  if (!seen_user_obj || !seen_group_obj || !seen_other) return fail(EINVAL, "ACL lacks an owner, group or other entry");
  if (named && !mask) return fail(EINVAL, "ACL with named entries lacks a mask");
  return acl;
}

std::string encode(const Acl& acl) {
  std::string out;
  store32(out, kVersion);
  for (const Entry& e : acl) {
    store16(out, e.tag);
    store16(out, e.perm);
    const bool named = e.tag == kUser || e.tag == kGroup;
    store32(out, named ? e.id : 0xffffffffu);  // base entries carry Linux's "no id"
  }
  return out;
}

uint32_t mode_bits(const Acl& acl) {
  uint32_t mode = 0;
  for (const Entry& e : acl) {
    if (e.tag == kUserObj) mode |= uint32_t{e.perm} << 6;
    if (e.tag == kOther) mode |= e.perm;
  }
  if (const Entry* g = group_class(acl)) mode |= uint32_t{g->perm} << 3;
  return mode;
}

bool says_only_mode(const Acl& acl) {
  for (const Entry& e : acl) {
    if (e.tag != kUserObj && e.tag != kGroupObj && e.tag != kOther) return false;
  }
  return true;
}

void apply_mode(Acl& acl, uint32_t mode) {
  for (Entry& e : acl) {
    if (e.tag == kUserObj) e.perm = (mode >> 6) & 7;
    if (e.tag == kOther) e.perm = mode & 7;
  }
  if (Entry* g = group_class(acl)) g->perm = (mode >> 3) & 7;
}

uint32_t inherit(Acl& acl, uint32_t mode) {
  for (Entry& e : acl) {
    if (e.tag == kUserObj) e.perm &= (mode >> 6) & 7;
    if (e.tag == kOther) e.perm &= mode & 7;
  }
  if (Entry* g = group_class(acl)) g->perm &= (mode >> 3) & 7;
  return mode_bits(acl);
}

}  // namespace poise::acl
