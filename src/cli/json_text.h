// JSON output of names that are bytes. A poise name may hold any byte but '/'
// and NUL, while a JSON string must be UTF-8. Valid UTF-8 names are written as
// they are; for any other name the field holds the name with each invalid byte
// replaced by U+FFFD (for people), and a sibling field `<key>_hex` holds the
// exact bytes in lowercase hex (for programs), so nothing is lost. README,
// "JSON output", documents the convention.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace poise::cli {

bool is_utf8(const std::string& text);
// Sets j[key] (and j[key + "_hex"] when the name is not UTF-8).
void set_name(nlohmann::json& j, const std::string& key, const std::string& name);
// Indented text of j; never throws (any remaining invalid byte becomes U+FFFD).
std::string json_text(const nlohmann::json& j);

}  // namespace poise::cli
