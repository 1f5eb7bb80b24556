// Seeded randomness for tests and benchmarks. Every randomized test takes its seed
// from test_seed(), which reads POISE_SEED when set and otherwise draws one, and
// prints it, so that any failure replays exactly with POISE_SEED=<seed>.
// Thread-safety: Rng is not shared between threads; test_seed() is safe.
#pragma once

#include <cstdint>
#include <random>

namespace poise {

uint64_t test_seed(const char* test_name);

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  uint64_t next() { return engine_(); }
  // Uniform in [0, bound). REQUIRES: bound > 0.
  uint64_t below(uint64_t bound) { return engine_() % bound; }
  bool chance(uint32_t one_in) { return below(one_in) == 0; }

 private:
  std::mt19937_64 engine_;
};

}  // namespace poise

namespace poise {
// Fills with bytes from the operating system's random source (for UUIDs).
void fill_random(unsigned char* out, size_t length);
}  // namespace poise
