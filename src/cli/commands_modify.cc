// Commands that change an image: mkfs, mkdir, rm, mv, ln, reflink, truncate,
// repair (put, which imports files, is in commands_put.cc).
#include <fmt/format.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include <cstdio>
#include <cstring>
#include <vector>

#include "cli/cli.h"
#include "cli/exit_codes.h"
#include "cli/json_text.h"
#include "cli/sizes.h"

namespace poise::cli {

namespace {


struct Args {
  std::string image, a, b, size, journal, mode;
  bool flag = false;
  bool json = false;
};

int with_fs(const Args& args, const std::function<int(Filesystem&)>& fn) {
  return with_mounted(args.image, MountMode::ReadWrite, fn);
}

// Whether a regular file holds a byte that is not zero. Only its data extents
// are read (SEEK_DATA/SEEK_HOLE), so a large sparse file costs little.
bool holds_nonzero_bytes(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;  // cannot look: assume there is something to lose
  std::vector<char> buf(1 << 20);
  bool nonzero = false;
  off_t at = 0;
  for (;;) {
    off_t data = ::lseek(fd, at, SEEK_DATA);
    if (data < 0) break;  // ENXIO: no data past `at`
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) hole = data + static_cast<off_t>(buf.size());
    for (off_t pos = data; pos < hole && !nonzero;) {
      ssize_t n = ::pread(fd, buf.data(), std::min<off_t>(static_cast<off_t>(buf.size()), hole - pos), pos);
      if (n <= 0) break;
      nonzero = std::any_of(buf.begin(), buf.begin() + n, [](char c) { return c != 0; });
      pos += n;
    }
    if (nonzero) break;
    at = hole;
  }
  ::close(fd);
  return nonzero;
}

// Why mkfs must not overwrite what IMAGE holds without --force: a poise
// filesystem (even one whose primary superblock is damaged), or any other data.
// Returns an empty string when the image is new, empty or all zeros.
std::string what_the_image_holds(const std::string& image) {
  struct stat st {};
  if (::stat(image.c_str(), &st) != 0) return "";
  if (S_ISREG(st.st_mode) && st.st_size == 0) return "";
  if (S_ISREG(st.st_mode) && st.st_size < static_cast<off_t>(kDeviceSizeMin)) {
    return holds_nonzero_bytes(image) ? "data that is not a poise filesystem" : "";
  }
  OpenDeviceOptions read_only;
  read_only.access = DeviceAccess::ReadOnly;
  auto device = open_device(image, read_only);
  if (!device.has_value()) return "data that is not a poise filesystem (" + device.error().message + ")";
  if (Filesystem::holds_filesystem(**device)) return "a poise filesystem";
  if (S_ISREG(st.st_mode)) return holds_nonzero_bytes(image) ? "data that is not a poise filesystem" : "";
  // A device-dax device has no holes to skip: look where labels and headers live.
  constexpr uint64_t kLookBytes = 64 << 10;
  const uint64_t size = (*device)->size_bytes();
  std::vector<std::byte> buf(kLookBytes);
  for (uint64_t at : {uint64_t{0}, size - kLookBytes}) {
    if (!(*device)->read(at, buf.data(), buf.size()).has_value()) return "data that cannot be read";
    for (std::byte b : buf) {
      if (b != std::byte{0}) return "data that is not a poise filesystem";
    }
  }
  return "";
}

int mkfs(const Args& args) {
  if (int code = refuse_if_served(args.image, "mkfs"); code != kExitOk) return code;
  std::optional<uint64_t> size;
  if (!args.size.empty()) {
    size = parse_size(args.size);
    if (!size || *size < kDeviceSizeMin || *size % 4096 != 0) {
      eprint("poise: mkfs: --size '{}' must be at least 16M and a multiple of 4K (examples: 64M, 4G, 1T)\n",
                 args.size);
      return kExitUsage;
    }
  }
  FormatOptions format;
  if (!args.journal.empty()) {
    auto journal = parse_size(args.journal);
    if (!journal || *journal == 0 || *journal % 4096 != 0) {
      eprint("poise: mkfs: journal size '{}' must be a multiple of 4 KiB, 1M to 64M\n", args.journal);
      return kExitUsage;
    }
    format.journal_blocks = *journal / 4096;
  }
  struct stat st {};
  const bool exists = ::stat(args.image.c_str(), &st) == 0;
  if (exists && S_ISDIR(st.st_mode)) {
    eprint("poise: mkfs: {} is a directory; give an image file or /dev/daxX.Y\n", args.image);
    return kExitInvalid;
  }
  if (!size && !exists) {
    // Without --size the image must exist already (a device-dax device, or a file to reuse).
    eprint("poise: mkfs: {} does not exist; give --size to create it\n", args.image);
    return kExitUsage;
  }
  if (!args.flag) {  // refuse to overwrite anything unless told to
    if (std::string held = what_the_image_holds(args.image); !held.empty()) {
      eprint("poise: mkfs: {} holds {}; use --force to overwrite it\n", args.image, held);
      return kExitExists;
    }
  }
  OpenDeviceOptions options;
  options.create = size ? CreateMode::CreateIfMissing : CreateMode::OpenExisting;
  options.size_bytes = size.value_or(0);
  auto device = open_device(args.image, options);
  if (!device.has_value()) return report("mkfs", device.error());
  auto formatted = Filesystem::format(**device, format);
  if (!formatted.has_value()) {
    device->reset();
    if (!exists) ::unlink(args.image.c_str());  // a failed mkfs leaves no new file behind
    return report("mkfs", formatted.error());
  }
  fmt::print("formatted {}: {} ({} bytes), {}, 4096-byte blocks\n", args.image,
             human_size((*device)->size_bytes()), (*device)->size_bytes(), (*device)->describe());
  return kExitOk;
}

int mkdir_p(Filesystem& fs, const std::string& path, uint32_t mode) {
  std::string prefix;
  size_t pos = 0;
  while (pos < path.size()) {
    size_t slash = path.find('/', pos);
    if (slash == std::string::npos) slash = path.size();
    std::string part = path.substr(pos, slash - pos);
    pos = slash + 1;
    if (part.empty()) continue;
    prefix += "/" + part;
    auto made = fs.mkdir(prefix, mode);
    if (made.has_value()) continue;
    if (made.error().code != EEXIST) return report("mkdir " + prefix, made.error());
    auto st = fs.stat(prefix);
    if (!st || st->type != FileType::Directory) {
      eprint("poise: mkdir: {} exists and is not a directory\n", prefix);
      return kExitInvalid;
    }
  }
  return kExitOk;
}

// Removes everything below the directory `top` (shown as `shown`), depth first
// with a stack of its own. It names each entry by its directory's inode, never
// by a path: a tree moved under a deep directory can be deeper than the
// longest path a command could name (PATH_MAX), and still goes.
int remove_contents(Filesystem& fs, InodeNumber top, const std::string& shown) {
  struct Level {
    InodeNumber dir;
    std::string name;  // in its parent; the top's is how the caller named it
    std::vector<DirEntry> entries;
    size_t next = 0;
  };
  std::vector<Level> stack;
  // The path of `name` in the deepest directory, spelled out only for a message.
  auto path_of = [&](const std::string& name) {
    std::string out;
    for (const Level& l : stack) out += l.name + "/";
    return out + name;
  };
  auto enter = [&](InodeNumber dir, std::string name) -> int {
    auto entries = fs.readdir_at(dir);
    if (!entries.has_value()) return report("rm " + path_of(name), entries.error());
    stack.push_back(Level{dir, std::move(name), std::move(*entries)});
    return kExitOk;
  };
  if (int code = enter(top, shown.ends_with('/') ? shown.substr(0, shown.size() - 1) : shown); code != kExitOk) {
    return code;
  }
  while (!stack.empty()) {
    Level& level = stack.back();
    if (level.next == level.entries.size()) {  // emptied: remove it from its parent
      stack.pop_back();
      if (stack.empty()) break;  // the top itself is the caller's
      Level& parent = stack.back();
      const DirEntry& e = parent.entries[parent.next++];
      auto r = fs.rmdir_at(parent.dir, e.name);
      if (!r.has_value()) return report("rm " + path_of(e.name), r.error());
      continue;
    }
    const DirEntry& e = level.entries[level.next];
    if (e.type == FileType::Directory) {
      if (int code = enter(e.ino, e.name); code != kExitOk) return code;
      continue;  // level.next moves on once the child is gone
    }
    auto r = fs.unlink_at(level.dir, e.name);
    if (!r.has_value()) return report("rm " + path_of(e.name), r.error());
    ++level.next;
  }
  return kExitOk;
}

int remove_tree(Filesystem& fs, const std::string& path, bool recursive) {
  auto st = fs.stat(path);
  if (!st.has_value()) return report("rm " + path, st.error());
  if (st->ino == kRootInode) {  // "/", "/.", "//", "/a/..": like rm's --preserve-root
    eprint("poise: rm: refusing to remove the root directory ({}); remove what is in it by name\n", path);
    return kExitInvalid;
  }
  if (st->type != FileType::Directory) {  // a file or a symbolic link (never followed)
    auto r = fs.unlink(path);
    return r.has_value() ? kExitOk : report("rm " + path, r.error());
  }
  if (!recursive) {
    eprint("poise: rm: {} is a directory (use -r)\n", path);
    return kExitInvalid;
  }
  if (int code = remove_contents(fs, st->ino, path); code != kExitOk) return code;
  auto r = fs.rmdir(path);
  return r.has_value() ? kExitOk : report("rm " + path, r.error());
}

int reflink_cmd(Filesystem& fs, const std::string& src, const std::string& dst) {
  auto from = fs.lookup(src);
  if (!from.has_value()) return report("reflink " + src, from.error());
  auto to = fs.lookup(dst);
  bool created = false;
  if (!to.has_value()) {
    if (to.error().code != ENOENT) return report("reflink " + dst, to.error());
    to = fs.create(dst);
    if (!to.has_value()) return report("reflink " + dst, to.error());
    created = true;
  }
  auto r = fs.reflink(*from, *to);
  if (r.has_value()) return kExitOk;
  if (created) (void)fs.unlink(dst);  // a failed reflink leaves no empty DST behind
  return report("reflink", r.error());
}

int repair(const Args& a) {
  if (int code = refuse_if_served(a.image, "repair"); code != kExitOk) return code;
  const bool dry_run = a.flag;
  OpenDeviceOptions options;
  if (dry_run) options.access = DeviceAccess::ReadOnly;  // the repair runs on a private view
  auto device = open_device(a.image, options);
  if (!device.has_value()) return report("repair", device.error());
  RepairOptions repair_options;
  repair_options.dry_run = dry_run;
  auto result = Filesystem::repair(**device, repair_options);
  if (!result.has_value()) return report("repair " + a.image, result.error());
  const RepairReport& r = *result;
  if (a.json) {
    fmt::print("{}\n", json_text(nlohmann::json{{"dry_run", dry_run}, {"changes", r.changes}, {"lost", r.lost},
                                                 {"problems", r.problems}, {"clean", r.clean()}}));
  } else {
    for (const auto& l : r.lost) fmt::print("{}: {}\n", dry_run ? "would lose" : "lost", l);
    for (const auto& c : r.changes) fmt::print("{}: {}\n", dry_run ? "would fix" : "fixed", c);
    for (const auto& p : r.problems) fmt::print("problem left: {}\n", p);
    if (r.changes.empty() && r.lost.empty() && r.clean()) {
      fmt::print("nothing to repair: the image is clean\n");
    } else {
      fmt::print("{} {}{}; {}\n", r.changes.size(), r.changes.size() == 1 ? "change" : "changes",
                 r.lost.empty() ? "" : fmt::format(", {} lost", r.lost.size()),
                 r.clean() ? (dry_run ? "clean after a repair" : "clean now")
                           : fmt::format("{} problems left", r.problems.size()));
    }
  }
  return r.clean() ? kExitOk : kExitCorrupt;
}

template <class F>
CLI::App* command(CLI::App& app, const char* name, const char* help, std::function<int()>* run,
                  std::shared_ptr<Args> args, F body) {
  CLI::App* sub = app.add_subcommand(name, help);
  sub->callback([run, args, body] { *run = [args, body] { return body(*args); }; });
  return sub;
}

}  // namespace

void add_modify_commands(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<Args>();
  auto* mkfs_cmd = command(app, "mkfs", "Create a filesystem on IMAGE (a file is created, sparse, if needed)",
                           run, args, mkfs);
  mkfs_cmd->add_option("IMAGE", args->image, "Image file or /dev/daxX.Y")->required();
  mkfs_cmd->add_option("--size", args->size, "Size of a new or resized image file: 64M, 4G, 1T ...");
  mkfs_cmd->add_option("--journal", args->journal, "Journal size (default 1/64 of the device, 1M..64M)");
  mkfs_cmd->add_flag("-f,--force", args->flag, "Overwrite an existing poise filesystem or other data");

  auto* mkdir_cmd = command(app, "mkdir", "Create a directory", run, args, [](const Args& a) {
    std::optional<uint32_t> mode = 0755;
    if (!a.mode.empty() && !(mode = parse_mode(a.mode))) {
      eprint("poise: mkdir: --mode takes octal permission bits (755, 1777, ...), not '{}'\n", a.mode);
      return int(kExitUsage);
    }
    return with_fs(a, [&](Filesystem& fs) {
      if (a.flag) return mkdir_p(fs, a.a, *mode);
      auto r = fs.mkdir(a.a, *mode);
      return r.has_value() ? kExitOk : report("mkdir " + a.a, r.error());
    });
  });
  mkdir_cmd->add_option("IMAGE", args->image)->required();
  mkdir_cmd->add_option("PATH", args->a)->required()->check(kNonEmptyPath);
  mkdir_cmd->add_option("-m,--mode", args->mode, "Permission bits, octal (default 755)")->check(kNonEmptyValue);
  mkdir_cmd->add_flag("-p,--parents", args->flag, "Create missing parents; no error if it exists");

  auto* rm_cmd = command(app, "rm", "Remove a file, or a directory tree with -r", run, args, [](const Args& a) {
    return with_fs(a, [&](Filesystem& fs) { return remove_tree(fs, a.a, a.flag); });
  });
  rm_cmd->add_option("IMAGE", args->image)->required();
  rm_cmd->add_option("PATH", args->a)->required()->check(kNonEmptyPath);
  rm_cmd->add_flag("-r,--recursive", args->flag, "Remove directories and their contents");

  auto two_paths = [&](const char* name, const char* help, auto op) {
    auto* sub = command(app, name, help, run, args, [op](const Args& a) {
      return with_fs(a, [&](Filesystem& fs) { return op(fs, a.a, a.b); });
    });
    sub->add_option("IMAGE", args->image)->required();
    sub->add_option("SRC", args->a)->required()->check(kNonEmptyPath);
    sub->add_option("DST", args->b)->required()->check(kNonEmptyPath);
    return sub;
  };
  two_paths("mv", "Rename or move (replaces an existing DST of the same kind)",
            [](Filesystem& fs, const std::string& s, const std::string& d) {
              auto r = fs.rename(s, d);
              return r.has_value() ? int(kExitOk) : report("mv", r.error());
            });
  auto* ln_cmd = two_paths("ln", "Make DST a hard link to the file SRC (-s: a symbolic link holding SRC)",
                           [args](Filesystem& fs, const std::string& s, const std::string& d) {
    if (args->flag) {
      auto made = fs.symlink(s, d);
      return made.has_value() ? int(kExitOk) : report("ln -s", made.error());
    }
    auto r = fs.link(s, d);
    return r.has_value() ? int(kExitOk) : report("ln", r.error());
  });
  ln_cmd->add_flag("-s,--symbolic", args->flag, "Make a symbolic link whose target is SRC (not checked to exist)");
  two_paths("reflink", "Make DST share all of SRC's blocks (no data copied; writes copy later)",
            [](Filesystem& fs, const std::string& s, const std::string& d) { return reflink_cmd(fs, s, d); });

  auto* truncate_cmd = command(app, "truncate", "Set a file's size (shrink, or grow with zeros)", run, args,
                               [](const Args& a) {
    auto size = parse_byte_count("SIZE", a.size);
    if (!size) return int(kExitUsage);
    return with_fs(a, [&](Filesystem& fs) {
      auto ino = fs.lookup(a.a);
      if (!ino.has_value()) return report("truncate " + a.a, ino.error());
      auto r = fs.truncate(*ino, *size);
      return r.has_value() ? int(kExitOk) : report("truncate " + a.a, r.error());
    });
  });
  truncate_cmd->add_option("IMAGE", args->image)->required();
  truncate_cmd->add_option("PATH", args->a)->required()->check(kNonEmptyPath);
  truncate_cmd->add_option("SIZE", args->size, "New size: bytes, or 4K, 10M ...")->required();

  auto* repair_cmd = command(app, "repair",
                             "Repair an unmounted image: rewrite damaged metadata copies, drop what cannot be "
                             "applied, move cut-off files to /lost+found, fix link counts (exit 5 if problems remain)",
                             run, args, repair);
  repair_cmd->add_option("IMAGE", args->image, "Image file or /dev/daxX.Y")->required();
  repair_cmd->add_flag("-n,--dry-run", args->flag, "Only report what would change; write nothing");
  repair_cmd->add_flag("--json", args->json, "Machine-readable output");
}

}  // namespace poise::cli
