// Commands about failed memory: inject-poison and clear-poison edit an emulated
// device's hardware error list (IMAGE.poison); badblocks shows what the device
// reports and what the filesystem has recorded, with the owners of each range.
#include <fmt/format.h>

#include <map>
#include <nlohmann/json.hpp>

#include "cli/cli.h"
#include "cli/exit_codes.h"
#include "cli/json_text.h"
#include "cli/sizes.h"

namespace poise::cli {

namespace {

using nlohmann::json;

struct Args {
  std::string image, offset, length;
  bool json = false;
};

int edit_poison(const Args& a, bool inject) {
  auto offset = parse_byte_count("--offset", a.offset);
  auto length = parse_byte_count("--length", a.length);
  if (!offset || !length) return kExitUsage;
  if (*length == 0) {
    eprint("poise: --length must be above 0\n");
    return kExitUsage;
  }
  std::unique_ptr<RemoteFilesystem> remote;
  if (int code = connect_if_served(a.image, &remote); code != kExitOk) return code;
  Result<void> r;
  if (remote) {  // live: the running filesystem is told at once
    r = inject ? remote->inject_poison(*offset, *length) : remote->clear_poison(*offset, *length);
  } else {
    auto device = open_device(a.image);
    if (!device.has_value()) return report(device.error());
    r = inject ? (*device)->inject_poison(*offset, *length) : (*device)->clear_poison(*offset, *length);
  }
  if (!r.has_value()) return report(inject ? "inject-poison" : "clear-poison", r.error());
  fmt::print("{} device bytes {}..{} of {}\n", inject ? "poisoned" : "cleared", *offset, *offset + *length, a.image);
  return kExitOk;
}

int badblocks(const Args& a) {
  std::unique_ptr<RemoteFilesystem> remote;
  if (int code = connect_if_served(a.image, &remote); code != kExitOk) return code;
  Session session;
  std::string description;
  Result<std::vector<BadRange>> device_list = std::vector<BadRange>{};
  if (remote) {
    device_list = remote->bad_ranges(&description);
  } else {
    if (int code = open_session(a.image, MountMode::ReadOnly, &session); code != kExitOk) return code;
    device_list = session.device->bad_ranges();
    description = session.device->describe();
  }
  Filesystem& fs = remote ? static_cast<Filesystem&>(*remote) : *session.fs;
  if (!device_list.has_value()) return report("badblocks", device_list.error());
  auto map = fs.fsmap(0, fs.info().size_bytes);
  if (!map.has_value()) return report("badblocks", map.error());
  json recorded = json::array();
  std::map<uint64_t, std::string> paths;
  for (const auto& bad : *map) {
    if (bad.owner != OwnerKind::Bad) continue;
    json owners = json::array();
    for (const auto& r : *fs.fsmap(bad.device_offset_bytes, bad.length_bytes)) {
      if (r.owner == OwnerKind::File) {
        if (!paths.count(r.ino.value())) paths[r.ino.value()] = fs.path_of(r.ino).value_or("");
        json owner{{"owner", "file"}, {"inode", r.ino.value()}, {"file_offset", r.file_offset_bytes},
                   {"length", r.length_bytes}};
        set_name(owner, "path", paths[r.ino.value()]);
        owners.push_back(std::move(owner));
      } else if (r.owner == OwnerKind::Metadata) {
        owners.push_back({{"owner", "metadata"}, {"kind", to_string(r.metadata_kind)}, {"length", r.length_bytes}});
      }
    }
    recorded.push_back({{"device_offset", bad.device_offset_bytes}, {"length", bad.length_bytes}, {"owners", owners}});
  }
  json reported = json::array();
  for (const BadRange& b : *device_list) reported.push_back({{"offset", b.offset_bytes}, {"length", b.length_bytes}});
  if (a.json) {
    fmt::print("{}\n", json_text(json{{"device", reported}, {"filesystem", recorded}}));
    return kExitOk;
  }
  fmt::print("reported by the device ({}): {} range(s)\n", description, reported.size());
  for (const auto& b : reported) fmt::print("  bytes {}..{}\n", b["offset"].get<uint64_t>(), b["offset"].get<uint64_t>() + b["length"].get<uint64_t>());
  fmt::print("recorded by the filesystem: {} range(s), fenced off for good\n", recorded.size());
  for (const auto& r : recorded) {
    uint64_t off = r["device_offset"];
    fmt::print("  device bytes {}..{}\n", off, off + r["length"].get<uint64_t>());
    for (const auto& o : r["owners"]) {
      if (o["owner"] == "file") {
        uint64_t fo = o["file_offset"];
        fmt::print("    lost: {} bytes {}..{}\n", o["path"].get<std::string>(), fo, fo + o["length"].get<uint64_t>());
      } else {
        fmt::print("    metadata: {} (rewritten elsewhere, or the filesystem shut down)\n", o["kind"].get<std::string>());
      }
    }
  }
  return kExitOk;
}

struct OfflineArgs {
  std::string image;
  bool cancel = false, remove = false;
};

int offline(const OfflineArgs& a) {
  std::unique_ptr<RemoteFilesystem> remote;
  if (int code = connect_if_served(a.image, &remote); code != kExitOk) return code;
  if (!remote) {
    eprint("poise: offline: {} is not served (poise serve): no process uses it, so it can be removed as it is\n",
           a.image);
    return kExitInvalid;
  }
  uint8_t step = a.cancel ? 1 : a.remove ? 2 : 0;
  auto state = remote->offline(step);
  if (!state.has_value()) return report("offline", state.error());
  fmt::print("{}: {}\n", a.image, *state);
  return kExitOk;
}

struct EventsArgs {
  std::string image;
  bool json = false;
};

// One event as a line for people: its time, its kind, then what it says.
std::string event_line(const json& e) {
  std::string line = e.value("time", std::string("")) + " " + e.value("event", std::string("?"));
  if (e.contains("device_offset")) {
    uint64_t off = e["device_offset"];
    line += fmt::format(": device bytes {}..{}", off, off + e.value("length", uint64_t(0)));
  }
  if (e.contains("pid")) line += fmt::format(": client pid {}", e["pid"].get<int64_t>());
  if (e.contains("inode")) {
    uint64_t off = e.value("file_offset", uint64_t(0));
    line += fmt::format(", inode {} bytes {}..{}", e["inode"].get<uint64_t>(), off, off + e.value("length", uint64_t(0)));
  }
  if (e.contains("files")) {
    for (const auto& f : e["files"]) {
      uint64_t off = f.value("file_offset", uint64_t(0));
      line += fmt::format("\n    lost: {} bytes {}..{}", f.value("path", std::string("?")), off,
                          off + f.value("length", uint64_t(0)));
    }
  }
  if (e.contains("metadata")) {
    for (const auto& m : e["metadata"]) line += "\n    metadata: " + m.get<std::string>();
  }
  if (e.contains("action")) line += "\n    " + e["action"].get<std::string>();
  return line;
}

int events(const EventsArgs& a) {
  std::unique_ptr<RemoteFilesystem> remote;
  if (int code = connect_if_served(a.image, &remote); code != kExitOk) return code;
  if (!remote) {
    eprint("poise: events: {} is not served (poise serve IMAGE): only a running server has events\n", a.image);
    return kExitInvalid;
  }
  int code = kExitOk;
  auto watched = remote->watch_events([&](const std::string& text) {
    if (a.json) {
      fmt::print("{}\n", text);
    } else {
      json e = json::parse(text, nullptr, false);
      fmt::print("{}\n", e.is_discarded() ? text : event_line(e));
    }
    // A reader that went away (`poise events | head`) ends the stream.
    if (std::fflush(stdout) != 0) {
      code = kExitFailure;
      return false;
    }
    return true;
  });
  if (!watched.has_value()) return report("events", watched.error());
  return code;
}

}  // namespace

void add_failure_commands(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<Args>();
  auto add = [&](const char* name, const char* help, std::function<int(const Args&)> body) {
    CLI::App* sub = app.add_subcommand(name, help);
    sub->callback([run, args, body] { *run = [args, body] { return body(*args); }; });
    sub->add_option("IMAGE", args->image, "Image file of an emulated device")->required();
    return sub;
  };
  for (bool inject : {true, false}) {
    auto* sub = add(inject ? "inject-poison" : "clear-poison",
                    inject ? "Poison device memory of an emulated device (reads of it fail as a machine check would)"
                           : "Clear poison from an emulated device's hardware error list",
                    [inject](const Args& a) { return edit_poison(a, inject); });
    sub->add_option("--offset", args->offset, "Device byte offset")->required();
    sub->add_option("--length", args->length, "Bytes")->required();
  }
  add("badblocks", "Show the device's bad ranges and what the filesystem recorded, with owners", badblocks)
      ->add_flag("--json", args->json, "Machine-readable output");

  auto offline_args = std::make_shared<OfflineArgs>();
  CLI::App* off = app.add_subcommand(
      "offline", "Prepare a served image's device for removal: freeze, sync, revoke every mapping in every process");
  off->callback([run, offline_args] { *run = [offline_args] { return offline(*offline_args); }; });
  off->add_option("IMAGE", offline_args->image, "Image served by poise serve")->required();
  auto* cancel = off->add_flag("--cancel", offline_args->cancel, "The removal will not happen: thaw, mappings resume");
  auto* remove = off->add_flag("--remove", offline_args->remove,
                               "Remove: waiting writers fail, every later access in every process fails");
  cancel->excludes(remove);

  auto events_args = std::make_shared<EventsArgs>();
  CLI::App* ev = app.add_subcommand(
      "events", "Follow a served image's events: memory failures with their owners, recalls, kills, removal");
  ev->callback([run, events_args] { *run = [events_args] { return events(*events_args); }; });
  ev->add_option("IMAGE", events_args->image, "Image served by poise serve")->required();
  ev->add_flag("--json", events_args->json, "One JSON object per line");
}

}  // namespace poise::cli
