// PageRuns: what each page of one direct mapping currently shows, as runs of
// pages in the same state (a mapping of a file in a few extents is a few runs,
// whatever its length). Runs that show device memory are capped at
// kDeviceRunPagesMax pages so that the registry's device-range index can find
// every run overlapping a device range by looking back a bounded distance.
// Thread-safety: none; the owning mapping's mutex guards it.
#pragma once

#include <cstdint>
#include <functional>

#include <absl/container/btree_map.h>

namespace poise::mapping {

enum class PageState : uint8_t {
  Absent,    // nothing there (PROT_NONE): the next access asks the filesystem
  Zero,      // a hole or an unwritten extent, shown read-only as zeros
  ReadOnly,  // device memory, read-only (a Read mapping, or a block shared by reflink)
  Writable,  // device memory, read-write: stores go straight to the device
  Lost,      // the memory failed (PROT_NONE): every access is an error
  Poisoned,  // emulated poison (PROT_NONE): an access is a consumed machine check
};
const char* to_string(PageState state);
// Whether the state names device memory (dev_block is meaningful).
constexpr bool on_device(PageState s) {
  return s == PageState::ReadOnly || s == PageState::Writable || s == PageState::Lost || s == PageState::Poisoned;
}

inline constexpr uint64_t kDeviceRunPagesMax = 512;  // 2 MiB

struct PageRun {
  uint64_t first = 0;  // page index inside the mapping
  uint64_t count = 0;
  PageState state = PageState::Absent;
  uint64_t dev_block = 0;  // device block of the first page, when on_device(state)
};

class PageRuns {
 public:
  // Told of every run taken out (added == false) and put in (added == true).
  using ChangeFn = std::function<void(const PageRun&, bool added)>;

  explicit PageRuns(uint64_t pages);
  uint64_t pages() const { return pages_; }

  // Sets [first, +count) to `state`; page i shows dev_block + (i - first).
  // REQUIRES: first + count <= pages().
  void set(uint64_t first, uint64_t count, PageState state, uint64_t dev_block, const ChangeFn& changed);
  // The run holding `page`.
  PageRun at(uint64_t page) const;
  // The runs overlapping [first, +count), clipped to it, in order.
  void visit(uint64_t first, uint64_t count, const std::function<void(const PageRun&)>& fn) const;

 private:
  struct Tail {
    uint64_t count;
    uint64_t dev_block;
    PageState state;
  };
  // Makes `page` the first page of a run (no-op at 0, pages() or a boundary).
  void split_at(uint64_t page, const ChangeFn& changed);
  PageRun run_of(absl::btree_map<uint64_t, Tail>::const_iterator it) const {
    return PageRun{it->first, it->second.count, it->second.state, it->second.dev_block};
  }

  uint64_t pages_;
  absl::btree_map<uint64_t, Tail> runs_;  // by first page; they tile [0, pages_)
};

}  // namespace poise::mapping
