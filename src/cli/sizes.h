// Parsing and printing sizes: "64M", "4G", "1T", "16MiB", "4096" (binary units).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace poise::cli {

std::optional<uint64_t> parse_size(const std::string& text);
std::string human_size(uint64_t bytes);  // "1.5 GiB"
// Octal permission bits, "755" or "0644" (at most 07777): nullopt otherwise.
std::optional<uint32_t> parse_mode(const std::string& text);

}  // namespace poise::cli
