// Commands that only look: info, ls, stat, get, cat, fsmap, check. They mount
// read-only, so they never write to the image.
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "cli/cli.h"
#include "cli/exit_codes.h"
#include "cli/json_text.h"
#include "cli/sizes.h"

namespace poise::cli {

namespace {

using nlohmann::json;
constexpr size_t kCopyChunkBytes = 1 << 20;

struct Args {
  std::string image, path, local;
  bool json = false;
  bool long_format = false;
  bool strict = false;  // check: notes count as problems
  std::string offset, length;  // parsed strictly by byte_range()
};

// --offset/--length as a byte range: both strict byte counts, and the end must
// not pass 2^64. An absent --length is nullopt ("to the end").
bool byte_range(const Args& a, uint64_t* offset, std::optional<uint64_t>* length) {
  *offset = 0;
  length->reset();
  if (!a.offset.empty()) {
    auto o = parse_byte_count("--offset", a.offset);
    if (!o) return false;
    *offset = *o;
  }
  if (!a.length.empty()) {
    auto l = parse_byte_count("--length", a.length);
    if (!l) return false;
    if (*l > UINT64_MAX - *offset) {
      eprint("poise: --offset {} plus --length {} passes 2^64 bytes\n", *offset, *l);
      return false;
    }
    *length = *l;
  }
  return true;
}

int with_ro(const Args& args, const std::function<int(Filesystem&)>& fn) {
  return with_mounted(args.image, MountMode::ReadOnly, fn);
}

const char* type_name(FileType type) {
  switch (type) {
    case FileType::Directory: return "directory";
    case FileType::Symlink: return "symlink";
    case FileType::Fifo: return "fifo";
    case FileType::CharDevice: return "char_device";
    case FileType::BlockDevice: return "block_device";
    case FileType::Socket: return "socket";
    case FileType::Regular: break;
  }
  return "file";
}

const char* long_type_name(FileType type) {
  switch (type) {
    case FileType::Directory: return "directory";
    case FileType::Symlink: return "symbolic link";
    case FileType::Fifo: return "FIFO";
    case FileType::CharDevice: return "character device";
    case FileType::BlockDevice: return "block device";
    case FileType::Socket: return "socket";
    case FileType::Regular: break;
  }
  return "regular file";
}

bool is_device_node(const Stat& st) { return st.type == FileType::CharDevice || st.type == FileType::BlockDevice; }

// A device node's number as ls shows it ("major, minor"); else the size.
std::string size_or_device(const Stat& st) {
  if (!is_device_node(st)) return std::to_string(st.size_bytes);
  return fmt::format("{}, {}", major(static_cast<dev_t>(st.rdev)), minor(static_cast<dev_t>(st.rdev)));
}

// " -> TARGET" for a symbolic link, else nothing.
std::string link_suffix(Filesystem& fs, const Stat& st) {
  if (st.type != FileType::Symlink) return "";
  auto target = fs.readlink(st.ino);
  return target.has_value() ? " -> " + *target : " -> (unreadable: " + target.error().message + ")";
}

std::string mode_string(const Stat& st) {
  static constexpr char kLetters[] = "-dlpcbs";  // by FileType
  std::string s(1, kLetters[static_cast<size_t>(st.type) < sizeof kLetters - 1 ? static_cast<size_t>(st.type) : 0]);
  const char* rwx = "rwxrwxrwx";
  for (int i = 0; i < 9; ++i) s += (st.mode & (0400u >> i)) ? rwx[i] : '-';
  // Set-user-ID, set-group-ID and sticky take the execute letter's place, as
  // ls(1) shows them: lower case over execute permission, upper case without.
  auto special = [&](uint32_t bit, size_t at, char letter) {
    if ((st.mode & bit) == 0) return;
    s[at] = s[at] == 'x' ? letter : static_cast<char>(letter - 'a' + 'A');
  };
  special(04000, 3, 's');
  special(02000, 6, 's');
  special(01000, 9, 't');
  return s;
}

std::string time_string(int64_t ns) {
  std::time_t t = static_cast<std::time_t>(ns / 1'000'000'000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

json stat_json(const Stat& st) {
  json j{{"ino", st.ino.value()},
              {"type", type_name(st.type)},
              {"mode", fmt::format("{:04o}", st.mode)},
              {"nlink", st.nlink},
              {"uid", st.uid},
              {"gid", st.gid},
              {"size_bytes", st.size_bytes},
              {"blocks", st.blocks},
              {"atime_ns", st.atime_ns},
              {"mtime_ns", st.mtime_ns},
              {"ctime_ns", st.ctime_ns}};
  if (is_device_node(st)) {
    j["rdev_major"] = major(static_cast<dev_t>(st.rdev));
    j["rdev_minor"] = minor(static_cast<dev_t>(st.rdev));
  }
  return j;
}

int info(const Args& a) {
  return with_ro(a, [&](Filesystem& fs) {
    FsInfo i;
    if (auto* remote = dynamic_cast<RemoteFilesystem*>(&fs)) {  // served: its error, not zeros
      auto got = remote->fs_info();
      if (!got.has_value()) return report("info", got.error());
      i = *got;
    } else {
      i = fs.info();
    }
    if (a.json) {
      fmt::print("{}\n", json_text(json{{"size_bytes", i.size_bytes}, {"block_size", i.block_size},
                                         {"used_bytes", i.used_bytes}, {"free_bytes", i.free_bytes},
                                         {"files", i.files}, {"journal_bytes", i.journal_bytes},
                                         {"checkpoint_generation", i.checkpoint_generation},
                                         {"previous_checkpoint_generation", i.previous_generation},
                                         {"previous_checkpoint_bytes", i.previous_bytes}}));
      return int(kExitOk);
    }
    fmt::print("size:       {} ({} bytes)\nblock size: {}\nused:       {} ({} bytes)\nfree:       {} ({} bytes)\n"
               "files:      {} (directories included)\njournal:    {}\ncheckpoint: generation {}\n",
               human_size(i.size_bytes), i.size_bytes, i.block_size, human_size(i.used_bytes), i.used_bytes,
               human_size(i.free_bytes), i.free_bytes, i.files, human_size(i.journal_bytes), i.checkpoint_generation);
    if (i.previous_generation != 0) {
      fmt::print("fallback:   generation {} kept, with the journal since ({}, counted as free)\n",
                 i.previous_generation, human_size(i.previous_bytes));
    } else {
      fmt::print("fallback:   none kept (the next checkpoint keeps one)\n");
    }
    return int(kExitOk);
  });
}

int ls(const Args& a) {
  return with_ro(a, [&](Filesystem& fs) {
    std::string path = a.path.empty() ? "/" : a.path;
    auto st = fs.stat(path);
    if (!st.has_value()) return report("ls " + path, st.error());
    std::vector<std::pair<std::string, Stat>> rows;
    if (st->type != FileType::Directory) {
      rows.emplace_back(path, *st);
    } else {
      auto entries = fs.readdir(path);
      if (!entries.has_value()) return report("ls " + path, entries.error());
      for (const auto& e : *entries) {
        auto s = fs.stat(e.ino);
        if (s.has_value()) rows.emplace_back(e.name, *s);
      }
    }
    if (a.json) {
      json out = json::array();
      for (const auto& [name, s] : rows) {
        json j = stat_json(s);
        set_name(j, "name", name);
        if (s.type == FileType::Symlink) {
          if (auto target = fs.readlink(s.ino); target.has_value()) set_name(j, "target", *target);
        }
        out.push_back(j);
      }
      fmt::print("{}\n", json_text(out));
      return int(kExitOk);
    }
    for (const auto& [name, s] : rows) {
      if (a.long_format) {
        fmt::print("{} {:>3} {:>5} {:>5} {:>12} {} {}{}\n", mode_string(s), s.nlink, s.uid, s.gid, size_or_device(s),
                   time_string(s.mtime_ns), name, s.type == FileType::Directory ? "/" : link_suffix(fs, s));
      } else {
        fmt::print("{}{}\n", name, s.type == FileType::Directory ? "/" : "");
      }
    }
    return int(kExitOk);
  });
}

int stat_cmd(const Args& a) {
  return with_ro(a, [&](Filesystem& fs) {
    auto st = fs.stat(a.path);
    if (!st.has_value()) return report("stat " + a.path, st.error());
    if (a.json) {
      json j = stat_json(*st);
      set_name(j, "path", a.path);
      if (st->type == FileType::Symlink) {
        auto target = fs.readlink(st->ino);
        if (!target.has_value()) return report("stat " + a.path, target.error());
        set_name(j, "target", *target);
      }
      fmt::print("{}\n", json_text(j));
      return int(kExitOk);
    }
    fmt::print("  path: {}\n inode: {}\n  type: {}\n  mode: {} ({:04o})\n links: {}\n   uid: {}  gid: {}\n"
               "  size: {} bytes\nblocks: {} (4 KiB)\nmodify: {} UTC\nchange: {} UTC\n",
               a.path + link_suffix(fs, *st), st->ino.value(),
               long_type_name(st->type), mode_string(*st), st->mode, st->nlink, st->uid, st->gid, st->size_bytes,
               st->blocks, time_string(st->mtime_ns), time_string(st->ctime_ns));
    if (is_device_node(*st)) fmt::print("device: {}\n", size_or_device(*st));
    return int(kExitOk);
  });
}

// Copies [offset, +length) of PATH to `out`.
int copy_out(Filesystem& fs, const std::string& path, uint64_t offset, std::optional<uint64_t> length,
             std::FILE* out) {
  auto st = fs.stat(path);
  if (!st.has_value()) return report(path, st.error());
  if (st->type == FileType::Directory) {
    eprint("poise: {}: is a directory\n", path);
    return kExitInvalid;
  }
  if (is_special(st->type)) {
    eprint("poise: {}: is a special file ({}): it holds no data\n", path, long_type_name(st->type));
    return kExitInvalid;
  }
  uint64_t end = st->size_bytes;
  if (length) end = std::min(end, offset + *length);
  std::vector<std::byte> buf(kCopyChunkBytes);
  for (uint64_t pos = offset; pos < end;) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), end - pos));
    auto n = fs.read(st->ino, pos, {buf.data(), want});
    if (!n.has_value()) {
      return report(fmt::format("{}: bytes {}..{} cannot be read", path, pos, pos + want), n.error());
    }
    if (*n == 0) break;
    if (std::fwrite(buf.data(), 1, *n, out) != *n) {
      eprint("poise: cannot write the output: {}\n",
             out == stdout && stdout_was_closed ? "standard output is closed" : std::strerror(errno));
      if (out == stdout) output_error_reported = true;
      return kExitFailure;
    }
    pos += *n;
  }
  return kExitOk;
}

// Where `get` writes LOCAL all-or-nothing: a hidden file beside it, renamed over
// it once every byte is out. Special files (a FIFO, /dev/null, a terminal) are
// written in place: they have no old content to keep.
struct LocalOutput {
  std::string target;     // LOCAL, symbolic links followed
  std::string temporary;  // empty when writing in place
  std::FILE* file = nullptr;
};

int open_local_output(const std::string& local, LocalOutput* out) {
  struct stat st {};
  bool exists = ::stat(local.c_str(), &st) == 0;
  if (exists && !S_ISREG(st.st_mode)) {
    out->target = local;
    out->file = std::fopen(local.c_str(), "wb");
  } else {
    if (exists) {
      char* resolved = ::realpath(local.c_str(), nullptr);
      out->target = resolved != nullptr ? resolved : local;
      std::free(resolved);
    } else {
      out->target = local;
    }
    size_t slash = out->target.rfind('/');
    std::string dir = slash == std::string::npos ? "" : out->target.substr(0, slash + 1);
    std::string base = slash == std::string::npos ? out->target : out->target.substr(slash + 1);
    std::string name = dir + "." + base + ".poise-get-XXXXXX";
    int fd = ::mkstemp(name.data());
    if (fd >= 0) {
      mode_t mask = ::umask(0);
      ::umask(mask);
      // A replaced file keeps its permission bits; a new one gets 0666 less the umask.
      (void)::fchmod(fd, exists ? (st.st_mode & 07777) : (0666 & ~mask));
      out->temporary = name;
      out->file = ::fdopen(fd, "wb");
      if (out->file == nullptr) ::close(fd);
    }
  }
  if (out->file == nullptr) {
    int err = errno;
    if (!out->temporary.empty()) ::unlink(out->temporary.c_str());
    eprint("poise: get: cannot create {}: {}\n", local, std::strerror(err));
    return kExitFailure;
  }
  return kExitOk;
}

// Closes LOCAL: on success the hidden file replaces it; on failure it is removed
// and LOCAL keeps its old content.
int finish_local_output(const std::string& local, LocalOutput& out, int code) {
  bool written = std::fflush(out.file) == 0 && (out.temporary.empty() || ::fsync(::fileno(out.file)) == 0);
  int err = errno;
  written = std::fclose(out.file) == 0 && written;
  if (!written) err = errno != 0 ? errno : err;
  if (code == kExitOk && !written) {
    eprint("poise: get: writing {} failed: {}\n", local, std::strerror(err));
    code = kExitFailure;
  }
  if (out.temporary.empty()) return code;
  if (code == kExitOk && ::rename(out.temporary.c_str(), out.target.c_str()) != 0) {
    eprint("poise: get: cannot replace {}: {}\n", local, std::strerror(errno));
    code = kExitFailure;
  }
  if (code != kExitOk) ::unlink(out.temporary.c_str());
  return code;
}

int get(const Args& a) {
  if (is_the_image(a.local, a.image) || (a.local == "-" && stream_is_the_image(STDOUT_FILENO, a.image))) {
    eprint("poise: get: {} is the image itself; writing the file there would destroy the image\n", a.local);
    return kExitInvalid;
  }
  return with_ro(a, [&](Filesystem& fs) {
    // LOCAL is touched only once PATH is known to be a readable file.
    auto st = fs.stat(a.path);
    if (!st.has_value()) return report("get " + a.path, st.error());
    if (st->type == FileType::Directory) {
      eprint("poise: get: {} is a directory\n", a.path);
      return int(kExitInvalid);
    }
    if (a.local == "-") return copy_out(fs, a.path, 0, std::nullopt, stdout);
    LocalOutput out;
    if (int code = open_local_output(a.local, &out); code != kExitOk) return code;
    return finish_local_output(a.local, out, copy_out(fs, a.path, 0, std::nullopt, out.file));
  });
}

int cat(const Args& a) {
  uint64_t offset = 0;
  std::optional<uint64_t> length;
  if (!byte_range(a, &offset, &length)) return kExitUsage;
  return with_ro(a, [&](Filesystem& fs) { return copy_out(fs, a.path, offset, length, stdout); });
}

int fsmap(const Args& a) {
  uint64_t offset = 0;
  std::optional<uint64_t> want;
  if (!byte_range(a, &offset, &want)) return kExitUsage;
  return with_ro(a, [&](Filesystem& fs) {
    const uint64_t device_bytes = fs.info().size_bytes;
    if (offset >= device_bytes) {
      eprint("poise: fsmap: --offset {} is past the end of the device ({} bytes)\n", offset, device_bytes);
      return int(kExitUsage);
    }
    uint64_t length = want.value_or(device_bytes - offset);
    auto records = fs.fsmap(offset, length);
    if (!records.has_value()) return report("fsmap", records.error());
    std::map<uint64_t, std::string> paths;
    for (const auto& r : *records) {
      if (r.owner != OwnerKind::File || paths.count(r.ino.value())) continue;
      auto p = fs.path_of(r.ino);
      paths[r.ino.value()] = p.has_value() ? *p : "";
    }
    if (a.json) {
      json out = json::array();
      for (const auto& r : *records) {
        json j{{"device_offset", r.device_offset_bytes}, {"length", r.length_bytes}, {"owner", to_string(r.owner)},
               {"shared", r.shared()}, {"refcount", r.refcount}};
        if (r.owner == OwnerKind::Metadata) j["kind"] = to_string(r.metadata_kind);
        if (r.owner == OwnerKind::File) {
          j["inode"] = r.ino.value();
          j["file_offset"] = r.file_offset_bytes;
          if (!paths[r.ino.value()].empty()) set_name(j, "path", paths[r.ino.value()]);
        }
        out.push_back(j);
      }
      fmt::print("{}\n", json_text(out));
      return int(kExitOk);
    }
    fmt::print("{:>14} {:>12} {:<9} {:<16} {:>12} {:>4}\n", "DEVICE_OFFSET", "LENGTH", "OWNER", "WHAT", "FILE_OFFSET",
               "REFS");
    for (const auto& r : *records) {
      std::string what = r.owner == OwnerKind::Metadata ? to_string(r.metadata_kind)
                         : r.owner == OwnerKind::File   ? (paths[r.ino.value()].empty()
                                                               ? fmt::format("inode {}", r.ino.value())
                                                               : paths[r.ino.value()])
                                                        : "";
      std::string file_offset = r.owner == OwnerKind::File ? std::to_string(r.file_offset_bytes) : "";
      fmt::print("{:>14} {:>12} {:<9} {:<16} {:>12} {:>4}\n", r.device_offset_bytes, r.length_bytes,
                 to_string(r.owner), what, file_offset, r.refcount);
    }
    return int(kExitOk);
  });
}

// For --strict: a note that tells of damage or loss, not of a file open but
// unlinked (an unnamed file a put is filling, say) or of damage a checkpoint
// has already rewritten.
bool lost_redundancy(const std::string& note) {
  return note.find("unlinked but still open") == std::string::npos && !note.ends_with("[rewritten by a checkpoint]") &&
         !note.ends_with("[both copies rewritten]");
}

int check(const Args& a) {
  std::unique_ptr<RemoteFilesystem> remote;
  if (int code = connect_if_served(a.image, &remote); code != kExitOk) return code;
  CheckReport r;
  if (remote) {
    auto checked = remote->check_report();  // the mounted filesystem, checked by its server
    if (!checked.has_value()) return report("check", checked.error());
    r = std::move(*checked);
  } else {
    OpenDeviceOptions read_only;
    read_only.access = DeviceAccess::ReadOnly;
    auto device = open_device(a.image, read_only);
    if (!device.has_value()) return report("check", device.error());
    auto result = Filesystem::check_device(**device);
    if (!result.has_value()) return report("check " + a.image, result.error());
    r = std::move(*result);
  }
  if (a.json) {
    fmt::print("{}\n", json_text(json{{"clean", r.clean()}, {"problems", r.problems}, {"notes", r.notes},
                                       {"inodes", r.inodes}, {"directories", r.directories}, {"extents", r.extents},
                                       {"used_blocks", r.used_blocks}, {"shared_blocks", r.shared_blocks},
                                       {"free_blocks", r.free_blocks}}));
  } else {
    for (const auto& p : r.problems) fmt::print("problem: {}\n", p);
    for (const auto& n : r.notes) fmt::print("note: {}\n", n);
    fmt::print("{}: {} inodes ({} directories), {} extents, {} blocks used ({} shared), {} free\n",
               r.clean() ? "clean" : fmt::format("{} problem{}", r.problems.size(), r.problems.size() == 1 ? "" : "s"),
               r.inodes, r.directories,
               r.extents, r.used_blocks, r.shared_blocks, r.free_blocks);
  }
  // --strict: a note (a damaged copy read from the other, a journal gap of a
  // crash, an image not upgraded) fails too, for scripts that want to know the
  // image is not as it should be even though nothing is lost.
  return r.clean() && !(a.strict && std::any_of(r.notes.begin(), r.notes.end(), lost_redundancy)) ? kExitOk
                                                                                                      : kExitCorrupt;
}

}  // namespace

void add_inspect_commands(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<Args>();
  auto add = [&](const char* name, const char* help, int (*body)(const Args&)) {
    CLI::App* sub = app.add_subcommand(name, help);
    sub->callback([run, args, body] { *run = [args, body] { return body(*args); }; });
    sub->add_option("IMAGE", args->image, "Image file or /dev/daxX.Y")->required();
    return sub;
  };
  add("info", "Show size, usage and file count", info)->add_flag("--json", args->json, "Machine-readable output");
  auto* ls_cmd = add("ls", "List a directory (or show one file)", ls);
  ls_cmd->add_option("PATH", args->path, "Directory or file (default /)")->check(kNonEmptyPath);
  ls_cmd->add_flag("-l", args->long_format, "Long format: mode, links, owner, size, time");
  ls_cmd->add_flag("--json", args->json, "Machine-readable output");
  auto* stat_c = add("stat", "Show a file's attributes", stat_cmd);
  stat_c->add_option("PATH", args->path)->required()->check(kNonEmptyPath);
  stat_c->add_flag("--json", args->json, "Machine-readable output");
  auto* get_cmd = add("get", "Copy a file out of the image (LOCAL - is stdout)", get);
  get_cmd->add_option("PATH", args->path)->required()->check(kNonEmptyPath);
  get_cmd->add_option("LOCAL", args->local, "Local file, or - for standard output")->required()->check(kNonEmptyPath);
  auto* cat_cmd = add("cat", "Write a file (or a byte range of it) to stdout", cat);
  cat_cmd->add_option("PATH", args->path)->required()->check(kNonEmptyPath);
  cat_cmd->add_option("--offset", args->offset, "First byte to write (4096, 8M, ...)")->check(kNonEmptyValue);
  cat_cmd->add_option("--length", args->length, "How many bytes to write (default: to the end of file)")
      ->check(kNonEmptyValue);
  auto* fsmap_cmd = add("fsmap", "Show who owns each stretch of the device (the reverse map)", fsmap);
  fsmap_cmd->add_option("--offset", args->offset, "Device byte offset to start at (4096, 8M, ...)")
      ->check(kNonEmptyValue);
  fsmap_cmd->add_option("--length", args->length, "Bytes to cover (default: to the end)")->check(kNonEmptyValue);
  fsmap_cmd->add_flag("--json", args->json, "Machine-readable output: one record per owner");
  auto* check_cmd = add("check",
                        "Verify every invariant of the metadata of an image, or of the mounted filesystem if it is "
                        "served (exit 5 if any fails). File data has no checksums (files are mapped and stored to "
                        "directly): damage to it is not seen",
                        check);
  check_cmd->add_flag("--json", args->json, "Machine-readable output");
  check_cmd->add_flag("--strict", args->strict,
                      "Exit 5 on notes too: a metadata copy read from the other one, a journal gap a crash left, "
                      "an image not upgraded (nothing lost, but not as it should be)");
}

}  // namespace poise::cli
