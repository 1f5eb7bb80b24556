// A FUSE filesystem that does as little as one can: names and attributes in a
// map, file contents thrown away (reads give zeros). The FUSE benchmark runs
// the same calls through it as through poise's mount, with the same settings
// (default_permissions, the connection settings and worker loop of
// src/fuse/mount.cc, names and attributes cached, the cached pages kept
// across opens): what it reaches is what any FUSE filesystem can reach on
// this kernel and machine, the round trips between the kernel and the server
// with nothing behind them.
#pragma once

#include <memory>
#include <string>

namespace poise::bench {

class NullFuse {
 public:
  // Mounts on `dir` (an existing directory), served by `threads` workers.
  // nullptr if the mount fails (no root, no /dev/fuse).
  static std::unique_ptr<NullFuse> start(const std::string& dir, unsigned threads, bool splice, double cache_seconds);
  ~NullFuse();  // unmounts
  NullFuse(const NullFuse&) = delete;
  NullFuse& operator=(const NullFuse&) = delete;

  struct State;

 private:
  NullFuse() = default;
  std::unique_ptr<State> state_;
};

}  // namespace poise::bench
