// poise xattr: list, read, set and remove a file's extended attributes (and
// so its POSIX ACLs, which are attributes too), as getfattr and setfattr do
// on a mounted filesystem.
#include <fmt/format.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/cli.h"
#include "cli/exit_codes.h"
#include "cli/json_text.h"

namespace poise::cli {

namespace {

struct Args {
  std::string image, path, name, set, set_hex;
  bool remove = false, create = false, replace = false, json = false;
  bool has_set = false, has_set_hex = false;  // given, even empty
};

bool printable(const std::string& value) {
  if (!is_utf8(value)) return false;
  for (unsigned char c : value) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

std::string hex(const std::string& value) {
  std::string out;
  for (unsigned char c : value) out += fmt::format("{:02x}", c);
  return out;
}

// As getfattr shows a value: quoted text, or 0x and the bytes in hex.
std::string shown(const std::string& value) {
  if (printable(value)) return "\"" + value + "\"";
  return "0x" + hex(value);
}

std::optional<std::string> from_hex(const std::string& text) {
  std::string digits = text.rfind("0x", 0) == 0 || text.rfind("0X", 0) == 0 ? text.substr(2) : text;
  if (digits.size() % 2 != 0) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < digits.size(); i += 2) {
    int v = 0;
    for (size_t k = i; k < i + 2; ++k) {
      char c = digits[k];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return std::nullopt;
      v = v * 16 + d;
    }
    out.push_back(static_cast<char>(v));
  }
  return out;
}

nlohmann::json entry(const std::string& name, const std::string& value) {
  nlohmann::json j;
  set_name(j, "name", name);
  set_name(j, "value", value);
  j["value_hex"] = hex(value);  // always: a value is bytes
  return j;
}

int list(Filesystem& fs, const Args& a, InodeNumber ino) {
  auto names = fs.list_xattrs(ino);
  if (!names.has_value()) return report("xattr " + a.path, names.error());
  nlohmann::json all = nlohmann::json::array();
  for (const std::string& name : *names) {
    auto value = fs.get_xattr(ino, name);
    if (!value.has_value()) return report("xattr " + a.path + " " + name, value.error());
    if (a.json) {
      all.push_back(entry(name, *value));
    } else {
      fmt::print("{}={}\n", name, shown(*value));
    }
  }
  if (a.json) fmt::print("{}\n", json_text(all));
  return kExitOk;
}

int run_xattr(const Args& a) {
  const bool sets = a.has_set || a.has_set_hex;
  const bool changes = sets || a.remove;
  if (changes && a.name.empty()) {
    eprint("poise: xattr: --set, --set-hex and --remove need a NAME\n");
    return kExitUsage;
  }
  if (int(a.has_set) + int(a.has_set_hex) + int(a.remove) > 1) {
    eprint("poise: xattr: give one of --set, --set-hex and --remove\n");
    return kExitUsage;
  }
  if ((a.create || a.replace) && !sets) {
    eprint("poise: xattr: --create and --replace go with --set or --set-hex\n");
    return kExitUsage;
  }
  std::string value = a.set;
  if (a.has_set_hex) {
    auto bytes = from_hex(a.set_hex);
    if (!bytes) {
      eprint("poise: xattr: --set-hex takes an even number of hex digits (0x optional), not '{}'\n", a.set_hex);
      return kExitUsage;
    }
    value = *bytes;
  }
  const XattrMode mode = a.create ? XattrMode::Create : a.replace ? XattrMode::Replace : XattrMode::Either;
  return with_mounted(a.image, changes ? MountMode::ReadWrite : MountMode::ReadOnly, [&](Filesystem& fs) {
    auto ino = fs.lookup(a.path);
    if (!ino.has_value()) return report("xattr " + a.path, ino.error());
    const std::string what = "xattr " + a.path + " " + a.name;
    if (a.name.empty()) return list(fs, a, *ino);
    if (a.remove) {
      auto r = fs.remove_xattr(*ino, a.name);
      return r.has_value() ? int(kExitOk) : report(what, r.error());
    }
    if (changes) {
      auto r = fs.set_xattr(*ino, a.name, value, mode);
      return r.has_value() ? int(kExitOk) : report(what, r.error());
    }
    auto got = fs.get_xattr(*ino, a.name);
    if (!got.has_value()) return report(what, got.error());
    if (a.json) {
      fmt::print("{}\n", json_text(entry(a.name, *got)));
    } else {
      std::fwrite(got->data(), 1, got->size(), stdout);  // the bytes as they are
    }
    return int(kExitOk);
  });
}

}  // namespace

void add_xattr_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand(
      "xattr",
      "Extended attributes of a file (POSIX ACLs among them): list them with their values; with NAME print that "
      "value's bytes; --set, --set-hex or --remove change one");
  sub->add_option("IMAGE", args->image)->required();
  sub->add_option("PATH", args->path)->required()->check(kNonEmptyPath);
  sub->add_option("NAME", args->name, "user.*, trusted.*, security.* or system.posix_acl_*")->check(kNonEmptyValue);
  CLI::Option* set = sub->add_option("--set", args->set, "Set NAME to this text");
  CLI::Option* set_hex = sub->add_option("--set-hex", args->set_hex, "Set NAME to these bytes, in hex (0x optional; empty: no bytes)");
  sub->add_flag("--remove", args->remove, "Remove NAME");
  auto* create = sub->add_flag("--create", args->create, "Fail (exit 7) if NAME exists");
  sub->add_flag("--replace", args->replace, "Fail (exit 3) if NAME does not exist")->excludes(create);
  sub->add_flag("--json", args->json, "Machine-readable output (values also in hex: value_hex)");
  sub->callback([run, args, set, set_hex] {
    args->has_set = set->count() > 0;  // an empty value is a value
    args->has_set_hex = set_hex->count() > 0;
    *run = [args] { return run_xattr(*args); };
  });
}

}  // namespace poise::cli
