// CRC-32C (Castagnoli), the checksum on every on-media structure. Uses the SSE4.2
// instruction where the CPU has it and a table otherwise; both give one answer.
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace poise {

// Continues a CRC over more bytes: crc32c(crc32c(0, a), b) == crc32c(0, a ++ b).
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t length);
inline uint32_t crc32c(const void* data, size_t length) { return crc32c_extend(0, data, length); }

// The portable table version, exposed so tests can compare the two paths.
uint32_t crc32c_extend_portable(uint32_t crc, const void* data, size_t length);

}  // namespace poise
