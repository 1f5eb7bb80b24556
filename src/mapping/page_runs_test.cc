#include "mapping/page_runs.h"

#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "base/random.h"

namespace poise::mapping {
namespace {

// A page-by-page model: state and device block of every page.
struct Model {
  std::vector<std::pair<PageState, uint64_t>> pages;
};

TEST(PageRunsTest, SplitsAndReportsEveryChangeAgainstAPageModel) {
  const uint64_t kPages = 3000;
  PageRuns runs(kPages);
  Model model;
  model.pages.assign(kPages, {PageState::Absent, 0});
  // Mirror of what the change callbacks report: the registry's device index
  // is kept this way, so it must end up equal to the runs themselves.
  std::multimap<uint64_t, PageRun> mirror;
  mirror.emplace(0, PageRun{0, kPages, PageState::Absent, 0});
  auto changed = [&](const PageRun& r, bool added) {
    if (added) {
      mirror.emplace(r.first, r);
      return;
    }
    auto [lo, hi] = mirror.equal_range(r.first);
    for (auto it = lo; it != hi; ++it) {
      if (it->second.count == r.count && it->second.state == r.state && it->second.dev_block == r.dev_block) {
        mirror.erase(it);
        return;
      }
    }
    FAIL() << "removed a run that was never added: page " << r.first;
  };
  Rng rng(test_seed("PageRunsTest"));
  for (int step = 0; step < 4000; ++step) {
    uint64_t first = rng.below(kPages);
    uint64_t count = 1 + rng.below(std::min<uint64_t>(kPages - first, 1500));
    auto state = static_cast<PageState>(rng.below(6));
    uint64_t dev = on_device(state) ? 1000 + rng.below(100000) : 0;
    runs.set(first, count, state, dev, changed);
    for (uint64_t i = 0; i < count; ++i) {
      model.pages[first + i] = {state, on_device(state) ? dev + i : 0};
    }
  }
  // Every page agrees with the model, and device runs respect the cap.
  uint64_t covered = 0;
  runs.visit(0, kPages, [&](const PageRun& r) {
    EXPECT_EQ(r.first, covered);
    if (on_device(r.state)) {
      EXPECT_LE(r.count, kDeviceRunPagesMax);
    }
    for (uint64_t i = 0; i < r.count; ++i) {
      ASSERT_EQ(model.pages[r.first + i].first, r.state) << "page " << r.first + i;
      ASSERT_EQ(model.pages[r.first + i].second, on_device(r.state) ? r.dev_block + i : 0);
    }
    covered += r.count;
  });
  EXPECT_EQ(covered, kPages);
  // The change reports describe exactly the runs that exist.
  std::multimap<uint64_t, PageRun> actual;
  runs.visit(0, kPages, [&](const PageRun& r) { actual.emplace(r.first, r); });
  ASSERT_EQ(mirror.size(), actual.size());
  for (auto a = actual.begin(), m = mirror.begin(); a != actual.end(); ++a, ++m) {
    EXPECT_EQ(a->second.first, m->second.first);
    EXPECT_EQ(a->second.count, m->second.count);
    EXPECT_EQ(a->second.dev_block, m->second.dev_block);
  }
  // at() agrees with visit() for a few pages.
  for (uint64_t p : {0ul, 1ul, 777ul, kPages - 1}) {
    PageRun r = runs.at(p);
    EXPECT_LE(r.first, p);
    EXPECT_LT(p, r.first + r.count);
    EXPECT_EQ(r.state, model.pages[p].first);
  }
}

}  // namespace
}  // namespace poise::mapping
