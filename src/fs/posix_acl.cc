#include "fs/posix_acl.h"

#include <algorithm>
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
  for (const Entry& e : acl) {
    switch (e.tag) {
      case kUserObj: case kGroupObj: case kMask: case kOther: case kUser: case kGroup: break;
      default: return fail(EINVAL, "ACL entry has an unknown tag");
    }
    if (e.tag < last_tag) return fail(EINVAL, "ACL entries are out of order");
    const bool is_named = e.tag == kUser || e.tag == kGroup;
    if (!is_named && e.tag == last_tag) return fail(EINVAL, "ACL has a base entry twice");
    if (is_named) {
      if (e.id == 0xffffffffu) return fail(EINVAL, "ACL names the invalid id 4294967295");
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

bool is_empty(std::string_view value) { return value.size() == kHeaderBytes && load32(value.data()) == kVersion; }

bool permits(const Acl& acl, uint32_t owner_uid, uint32_t owner_gid, uint32_t uid,
             const std::vector<uint32_t>& groups, uint32_t want) {
  uint16_t mask = 7;
  for (const Entry& e : acl) {
    if (e.tag == kMask) mask = e.perm;
  }
  auto grants = [&](uint16_t perm) { return (perm & want) == want; };
  auto in_groups = [&](uint32_t gid) { return std::find(groups.begin(), groups.end(), gid) != groups.end(); };
  for (const Entry& e : acl) {
    if (e.tag == kUserObj && uid == owner_uid) return grants(e.perm);
    if (e.tag == kUser && e.id == uid) return grants(e.perm & mask);
  }
  bool in_a_group = false;
  for (const Entry& e : acl) {
    const bool matches = (e.tag == kGroupObj && in_groups(owner_gid)) || (e.tag == kGroup && in_groups(e.id));
    if (!matches) continue;
    if (grants(e.perm & mask)) return true;
    in_a_group = true;
  }
  if (in_a_group) return false;
  for (const Entry& e : acl) {
    if (e.tag == kOther) return grants(e.perm);
  }
  return false;
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
