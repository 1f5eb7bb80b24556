// POSIX access control lists as Linux stores them in the extended attributes
// "system.posix_acl_access" and "system.posix_acl_default": a little-endian
// version word (2), then entries of (tag, permissions, id), 8 bytes each. Only
// what the filesystem itself must understand: checking an ACL, the permission
// bits it implies, chmod of an inode that has one, and what a new file or
// directory gets from its directory's default ACL. The kernel enforces them.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "poise/result.h"

namespace poise::acl {

inline constexpr std::string_view kAccessName = "system.posix_acl_access";
inline constexpr std::string_view kDefaultName = "system.posix_acl_default";

enum Tag : uint16_t {
  kUserObj = 0x01,
  kUser = 0x02,
  kGroupObj = 0x04,
  kGroup = 0x08,
  kMask = 0x10,
  kOther = 0x20,
};

struct Entry {
  uint16_t tag = 0;
  uint16_t perm = 0;  // rwx bits, 0..7
  uint32_t id = 0;    // uid or gid for kUser and kGroup; 0 for the others
  bool operator==(const Entry&) const = default;
};
using Acl = std::vector<Entry>;

// EINVAL unless it is a valid ACL as Linux checks one: entries in tag order,
// one owner, owning group and other entry, named ids that are valid ids (not
// 0xffffffff), a mask when there are named entries.
Result<Acl> parse(std::string_view value);
// A version word and no entries: what Linux takes for "no ACL".
bool is_empty(std::string_view value);
std::string encode(const Acl& acl);

// The permission bits (0777) an ACL implies: the owner's, the mask's (or the
// owning group's if there is no mask) and other's.
uint32_t mode_bits(const Acl& acl);
// True if the ACL says no more than permission bits would (three entries).
bool says_only_mode(const Acl& acl);
// chmod: the owner, mask (or owning group) and other entries take `mode`'s bits.
void apply_mode(Acl& acl, uint32_t mode);
// Whether a process of `uid` in `groups` (its gid first) may `want` (rwx bits)
// a file of owner `owner_uid` and group `owner_gid` with access ACL `acl`, as
// Linux's posix_acl_permission decides: the owner entry for the owner; else a
// named-user entry within the mask; else the owning-group and named-group
// entries within the mask (any one that grants it all); else other.
bool permits(const Acl& acl, uint32_t owner_uid, uint32_t owner_gid, uint32_t uid,
             const std::vector<uint32_t>& groups, uint32_t want);
// A new inode in a directory with default ACL `acl`, asked for `mode`: each of
// the owner, mask (or owning group) and other entries keeps only the bits the
// mode allows; returns the inode's permission bits (those of the result).
uint32_t inherit(Acl& acl, uint32_t mode);

}  // namespace poise::acl
