#include "cli/json_text.h"

namespace poise::cli {

using nlohmann::json;

bool is_utf8(const std::string& text) {
  try {
    (void)json(text).dump();  // the library's own check: it refuses invalid UTF-8
    return true;
  } catch (const json::type_error&) {
    return false;
  }
}

void set_name(json& j, const std::string& key, const std::string& name) {
  if (is_utf8(name)) {
    j[key] = name;
    return;
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(name.size() * 2);
  for (unsigned char c : name) {
    hex += kHex[c >> 4];
    hex += kHex[c & 15];
  }
  // The library's replacing serializer, read back: the name with U+FFFD in place of bad bytes.
  j[key] = json::parse(json(name).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
  j[key + "_hex"] = hex;
}

std::string json_text(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace); }

}  // namespace poise::cli
