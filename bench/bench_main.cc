// poise_bench: runs every benchmark and prints one table.
// Usage: poise_bench [--quick] [namespace|io|mount|reflink|failure|mapping|cli|serve|fuse ...]
#include <fmt/format.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <random>
#include <vector>

#include "bench/bench.h"

namespace poise::bench {

void Table::print() const {
  size_t w[5] = {6, 5, 4, 5, 6};
  for (const Row& r : rows_) {
    w[0] = std::max(w[0], r.metric.size());
    w[1] = std::max(w[1], r.poise.size());
    w[2] = std::max(w[2], r.peer.size());
    w[3] = std::max(w[3], r.ratio.size());
    w[4] = std::max(w[4], r.target.size());
  }
  auto line = [&](const std::string& a, const std::string& b, const std::string& c, const std::string& d,
                  const std::string& e, const std::string& f) {
    fmt::print("| {:<{}} | {:>{}} | {:>{}} | {:>{}} | {:<{}} | {} |\n", a, w[0], b, w[1], c, w[2], d, w[3], e, w[4], f);
  };
  line("metric", "poise", "peer", "ratio", "target", "met");
  fmt::print("|{}|{}:|{}:|{}:|{}|---|\n", std::string(w[0] + 2, '-'), std::string(w[1] + 1, '-'),
             std::string(w[2] + 1, '-'), std::string(w[3] + 1, '-'), std::string(w[4] + 2, '-'));
  for (const Row& r : rows_) line(r.metric, r.poise, r.peer, r.ratio, r.target, r.met ? "yes" : "NO");
}

std::vector<double> medians_taking_turns(size_t subjects, int samples, Cache cache,
                                         const std::function<void(size_t subject, int sample)>& call) {
  std::vector<std::vector<double>> times(subjects);
  CacheEvictor evictor(cache);
  for (int i = 0; i < samples; ++i) {
    for (size_t k = 0; k < subjects; ++k) {
      evictor.evict();
      double t0 = now_seconds();
      call(k, i);
      times[k].push_back(now_seconds() - t0);
    }
  }
  std::vector<double> medians;
  for (auto& t : times) {
    std::nth_element(t.begin(), t.begin() + samples / 2, t.end());
    medians.push_back(t[samples / 2]);
  }
  return medians;
}

double dependent_load_ns(size_t bytes) {
  const size_t lines = bytes / 64;
  struct Line {
    size_t next;
    char pad[56];
  };
  std::vector<Line> ring(lines);
  std::vector<size_t> order(lines);
  for (size_t i = 0; i < lines; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(1));
  for (size_t i = 0; i < lines; ++i) ring[order[i]].next = order[(i + 1) % lines];
  const int steps = 1 << 21;
  size_t at = 0;
  double t0 = now_seconds();
  for (int i = 0; i < steps; ++i) at = ring[at].next;
  double ns = (now_seconds() - t0) / steps * 1e9;
  return at == lines ? 0 : ns;  // `at` is used, so the chase is not optimised away
}

bool Table::all_met() const {
  return std::all_of(rows_.begin(), rows_.end(), [](const Row& r) { return r.met; });
}

}  // namespace poise::bench

int main(int argc, char** argv) {
  using namespace poise::bench;
  Options options;
  std::vector<std::string> only;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) options.quick = true;
    else only.push_back(argv[i]);
  }
  auto want = [&](const char* name) { return only.empty() || std::find(only.begin(), only.end(), name) != only.end(); };
  utsname u{};
  uname(&u);
  std::string cpu;
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string l; std::getline(cpuinfo, l);) {
    if (l.rfind("model name", 0) == 0) {
      cpu = l.substr(l.find(':') + 2);
      break;
    }
  }
  fmt::print("poise benchmarks on {} ({} cores, {} {}){}\n\n", cpu, sysconf(_SC_NPROCESSORS_ONLN), u.sysname,
             u.release, options.quick ? " [quick run: small sizes]" : "");
  Table table;
  if (want("namespace")) namespace_bench(options, &table);
  if (want("io")) io_bench(options, &table);
  if (want("mount")) mount_bench(options, &table);
  if (want("reflink")) reflink_bench(options, &table);
  if (want("failure")) failure_bench(options, &table);
  if (want("mapping")) mapping_bench(options, &table);
  if (want("cli")) cli_bench(options, &table);
  if (want("serve")) serve_bench(options, &table);
  if (want("fuse")) fuse_bench(options, &table);
  table.print();
  return table.all_met() ? 0 : 1;
}
