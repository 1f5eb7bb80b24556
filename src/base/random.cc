#include "base/random.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace poise {

uint64_t test_seed(const char* test_name) {
  uint64_t seed = 0;
  if (const char* env = std::getenv("POISE_SEED"); env != nullptr && *env != '\0') {
    seed = std::strtoull(env, nullptr, 0);
  } else {
    seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  std::fprintf(stderr, "[seed] %s: POISE_SEED=%llu\n", test_name,
               static_cast<unsigned long long>(seed));
  return seed;
}

}  // namespace poise

#include <random>

namespace poise {
void fill_random(unsigned char* out, size_t length) {
  std::random_device source;
  for (size_t i = 0; i < length; ++i) out[i] = static_cast<unsigned char>(source());
}
}  // namespace poise
