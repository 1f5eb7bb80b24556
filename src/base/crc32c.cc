#include "base/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace poise {
namespace {

constexpr uint32_t kPolynomialReflected = 0x82F63B78u;

constexpr std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1u) ? kPolynomialReflected : 0u);
    table[i] = crc;
  }
  return table;
}

constexpr std::array<uint32_t, 256> kTable = make_table();

#if defined(__x86_64__)
// The register (no inversions) after `length` bytes from state `state`.
__attribute__((target("sse4.2"))) uint64_t advance_one_lane(uint64_t state, const uint8_t* p, size_t length) {
  for (; length >= 8; p += 8, length -= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    state = _mm_crc32_u64(state, word);
  }
  auto state32 = static_cast<uint32_t>(state);
  while (length-- > 0) state32 = _mm_crc32_u8(state32, *p++);
  return state32;
}

// The instruction takes three cycles and can start one every cycle, so one
// chain of it runs at a third of the speed three independent chains do. A
// buffer is taken kLane bytes at a time from three places at once; the three
// results are joined with the rule that running the register over L zero
// bytes is a linear map of it (precomputed below), so
//   crc(s, A B C) = zeros(zeros(crc(s, A)) ^ crc(0, B)) ^ crc(0, C).
constexpr size_t kLane = 1360;  // three lanes and a 16-byte tail make a 4 KiB block
static_assert(kLane % 8 == 0, "a lane is whole 8-byte words");

// The register run over kLane zero bytes, as four byte-indexed tables.
struct LaneShift {
  uint32_t table[4][256];
  LaneShift() {
    uint32_t basis[32];
    for (int bit = 0; bit < 32; ++bit) {  // each bit of the register, through kLane zeros
      uint32_t reg = 1u << bit;
      for (size_t i = 0; i < kLane; ++i) reg = kTable[reg & 0xFFu] ^ (reg >> 8);
      basis[bit] = reg;
    }
    for (int byte = 0; byte < 4; ++byte) {
      for (uint32_t value = 0; value < 256; ++value) {
        uint32_t out = 0;
        for (int bit = 0; bit < 8; ++bit) {
          if ((value >> bit) & 1u) out ^= basis[byte * 8 + bit];
        }
        table[byte][value] = out;
      }
    }
  }
  uint32_t operator()(uint32_t reg) const {
    return table[0][reg & 0xFFu] ^ table[1][(reg >> 8) & 0xFFu] ^ table[2][(reg >> 16) & 0xFFu] ^ table[3][reg >> 24];
  }
};

__attribute__((target("sse4.2"))) uint32_t extend_hardware(uint32_t crc, const uint8_t* p, size_t length) {
  static const LaneShift shift;
  uint64_t state = ~crc;
  while (length >= 3 * kLane) {
    uint64_t a = state, b = 0, c = 0;
    const uint8_t* pb = p + kLane;
    const uint8_t* pc = p + 2 * kLane;
    for (size_t i = 0; i < kLane; i += 8) {
      uint64_t wa, wb, wc;
      std::memcpy(&wa, p + i, 8);
      std::memcpy(&wb, pb + i, 8);
      std::memcpy(&wc, pc + i, 8);
      a = _mm_crc32_u64(a, wa);
      b = _mm_crc32_u64(b, wb);
      c = _mm_crc32_u64(c, wc);
    }
    state = shift(shift(static_cast<uint32_t>(a)) ^ static_cast<uint32_t>(b)) ^ static_cast<uint32_t>(c);
    p += 3 * kLane;
    length -= 3 * kLane;
  }
  return ~static_cast<uint32_t>(advance_one_lane(state, p, length));
}

bool cpu_has_sse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#endif

}  // namespace

uint32_t crc32c_extend_portable(uint32_t crc, const void* data, size_t length) {
  auto p = static_cast<const uint8_t*>(data);
  uint32_t state = ~crc;
  for (size_t i = 0; i < length; ++i) state = kTable[(state ^ p[i]) & 0xFFu] ^ (state >> 8);
  return ~state;
}

uint32_t crc32c_extend(uint32_t crc, const void* data, size_t length) {
#if defined(__x86_64__)
  if (cpu_has_sse42()) return extend_hardware(crc, static_cast<const uint8_t*>(data), length);
#endif
  return crc32c_extend_portable(crc, data, length);
}

}  // namespace poise
