#include "mapping/page_runs.h"

#include <algorithm>

#include "poise/result.h"

namespace poise::mapping {

const char* to_string(PageState state) {
  switch (state) {
    case PageState::Absent: return "absent";
    case PageState::Zero: return "zero";
    case PageState::ReadOnly: return "read-only";
    case PageState::Writable: return "writable";
    case PageState::Lost: return "lost";
    case PageState::Poisoned: return "poisoned";
  }
  return "unknown";
}

PageRuns::PageRuns(uint64_t pages) : pages_(pages) {
  if (pages > 0) runs_.emplace(0, Tail{pages, 0, PageState::Absent});
}

void PageRuns::split_at(uint64_t page, const ChangeFn& changed) {
  if (page == 0 || page >= pages_) return;
  auto it = std::prev(runs_.upper_bound(page));
  if (it->first == page) return;
  PageRun whole = run_of(it);
  uint64_t head = page - whole.first;
  uint64_t tail_dev = on_device(whole.state) ? whole.dev_block + head : 0;
  changed(whole, false);
  it->second.count = head;
  runs_.emplace(page, Tail{whole.count - head, tail_dev, whole.state});
  changed(PageRun{whole.first, head, whole.state, whole.dev_block}, true);
  changed(PageRun{page, whole.count - head, whole.state, tail_dev}, true);
}

void PageRuns::set(uint64_t first, uint64_t count, PageState state, uint64_t dev_block, const ChangeFn& changed) {
  POISE_ASSERT(first <= pages_ && count <= pages_ - first);
  if (count == 0) return;
  split_at(first, changed);
  split_at(first + count, changed);
  for (auto it = runs_.lower_bound(first); it != runs_.end() && it->first < first + count;) {
    changed(run_of(it), false);
    it = runs_.erase(it);
  }
  const bool device = on_device(state);
  const uint64_t piece_max = device ? kDeviceRunPagesMax : count;
  for (uint64_t done = 0; done < count;) {
    uint64_t n = std::min(piece_max, count - done);
    uint64_t dev = device ? dev_block + done : 0;
    runs_.emplace(first + done, Tail{n, dev, state});
    changed(PageRun{first + done, n, state, dev}, true);
    done += n;
  }
}

PageRun PageRuns::at(uint64_t page) const {
  POISE_ASSERT(page < pages_);
  return run_of(std::prev(runs_.upper_bound(page)));
}

void PageRuns::visit(uint64_t first, uint64_t count, const std::function<void(const PageRun&)>& fn) const {
  if (count == 0 || first >= pages_) return;
  uint64_t end = std::min(pages_, first + count);
  for (auto it = std::prev(runs_.upper_bound(first)); it != runs_.end() && it->first < end; ++it) {
    PageRun r = run_of(it);
    uint64_t s = std::max(r.first, first);
    uint64_t e = std::min(r.first + r.count, end);
    if (on_device(r.state)) r.dev_block += s - r.first;
    fn(PageRun{s, e - s, r.state, r.dev_block});
  }
}

}  // namespace poise::mapping
