// Commands that change an image: mkfs, mkdir, put, rm, mv, ln, reflink, truncate.
#include <fmt/format.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "cli/cli.h"
#include "cli/exit_codes.h"
#include "cli/sizes.h"

namespace poise::cli {

namespace {

constexpr size_t kCopyChunkBytes = 1 << 20;

struct Args {
  std::string image, a, b, size, journal;
  bool flag = false;
};

// Runs fn on a read-write session of args.image and unmounts.
int with_fs(const Args& args, const std::function<int(Filesystem&)>& fn) {
  Session session;
  if (int code = open_session(args.image, MountMode::ReadWrite, &session); code != kExitOk) return code;
  int code = fn(*session.fs);
  int closed = close_session(session);
  return code != kExitOk ? code : closed;
}

int mkfs(const Args& args) {
  std::optional<uint64_t> size;
  if (!args.size.empty()) {
    size = parse_size(args.size);
    if (!size) {
      fmt::print(stderr, "poise: mkfs: cannot read size '{}' (examples: 64M, 4G, 1T)\n", args.size);
      return kExitUsage;
    }
  }
  OpenDeviceOptions options;
  options.create = size ? CreateMode::CreateIfMissing : CreateMode::OpenExisting;
  options.size_bytes = size.value_or(0);
  if (!size) {
    // Without --size the image must exist already (a device-dax device, or a file to reuse).
    if (std::FILE* f = std::fopen(args.image.c_str(), "r"); f != nullptr) {
      std::fclose(f);
    } else {
      fmt::print(stderr, "poise: mkfs: {} does not exist; give --size to create it\n", args.image);
      return kExitUsage;
    }
  }
  {  // refuse to overwrite a filesystem unless told to
    auto existing = open_device(args.image);
    if (existing.has_value() && (*existing)->size_bytes() >= 4 &&
        std::memcmp((*existing)->data(), "POIS", 4) == 0 && !args.flag) {
      fmt::print(stderr, "poise: mkfs: {} already holds a poise filesystem; use --force to overwrite it\n",
                 args.image);
      return kExitExists;
    }
  }
  auto device = open_device(args.image, options);
  if (!device.has_value()) return report("mkfs", device.error());
  FormatOptions format;
  if (!args.journal.empty()) {
    auto journal = parse_size(args.journal);
    if (!journal || *journal % 4096 != 0) {
      fmt::print(stderr, "poise: mkfs: journal size '{}' must be a multiple of 4 KiB\n", args.journal);
      return kExitUsage;
    }
    format.journal_blocks = *journal / 4096;
  }
  auto formatted = Filesystem::format(**device, format);
  if (!formatted.has_value()) return report("mkfs", formatted.error());
  fmt::print("formatted {}: {} ({} bytes), {}, 4096-byte blocks\n", args.image,
             human_size((*device)->size_bytes()), (*device)->size_bytes(), (*device)->describe());
  return kExitOk;
}

int mkdir_p(Filesystem& fs, const std::string& path) {
  std::string prefix;
  size_t pos = 0;
  while (pos < path.size()) {
    size_t slash = path.find('/', pos);
    if (slash == std::string::npos) slash = path.size();
    std::string part = path.substr(pos, slash - pos);
    pos = slash + 1;
    if (part.empty()) continue;
    prefix += "/" + part;
    auto made = fs.mkdir(prefix);
    if (made.has_value()) continue;
    if (made.error().code != EEXIST) return report("mkdir " + prefix, made.error());
    auto st = fs.stat(prefix);
    if (!st || st->type != FileType::Directory) {
      fmt::print(stderr, "poise: mkdir: {} exists and is not a directory\n", prefix);
      return kExitInvalid;
    }
  }
  return kExitOk;
}

int put(Filesystem& fs, const std::string& local, const std::string& path) {
  std::FILE* in = local == "-" ? stdin : std::fopen(local.c_str(), "rb");
  if (in == nullptr) {
    fmt::print(stderr, "poise: put: cannot open {}: {}\n", local, std::strerror(errno));
    return errno == ENOENT ? kExitNotFound : kExitFailure;
  }
  auto file = fs.open(path, OpenFlags::Create | OpenFlags::Truncate);
  if (!file.has_value()) {
    if (in != stdin) std::fclose(in);
    return report("put " + path, file.error());
  }
  std::vector<std::byte> buf(kCopyChunkBytes);
  uint64_t offset = 0;
  int code = kExitOk;
  for (;;) {
    size_t n = std::fread(buf.data(), 1, buf.size(), in);
    if (n > 0) {
      auto w = file->write(offset, {buf.data(), n});
      if (!w.has_value()) {
        code = report(fmt::format("put {} at byte {}", path, offset), w.error());
        break;
      }
      offset += n;
    }
    if (n < buf.size()) {
      if (std::ferror(in)) {
        fmt::print(stderr, "poise: put: reading {} failed\n", local);
        code = kExitFailure;
      }
      break;
    }
  }
  if (in != stdin) std::fclose(in);
  return code;
}

int remove_tree(Filesystem& fs, const std::string& path, bool recursive) {
  auto st = fs.stat(path);
  if (!st.has_value()) return report("rm " + path, st.error());
  if (st->type == FileType::Regular) {
    auto r = fs.unlink(path);
    return r.has_value() ? kExitOk : report("rm " + path, r.error());
  }
  if (!recursive) {
    fmt::print(stderr, "poise: rm: {} is a directory (use -r)\n", path);
    return kExitInvalid;
  }
  auto entries = fs.readdir(path);
  if (!entries.has_value()) return report("rm " + path, entries.error());
  for (const auto& e : *entries) {
    if (int code = remove_tree(fs, (path == "/" ? "" : path) + "/" + e.name, true); code != kExitOk) return code;
  }
  if (st->ino == kRootInode) return kExitOk;  // rm -r / empties the root
  auto r = fs.rmdir(path);
  return r.has_value() ? kExitOk : report("rm " + path, r.error());
}

int reflink_cmd(Filesystem& fs, const std::string& src, const std::string& dst) {
  auto from = fs.lookup(src);
  if (!from.has_value()) return report("reflink " + src, from.error());
  auto to = fs.lookup(dst);
  if (!to.has_value()) {
    if (to.error().code != ENOENT) return report("reflink " + dst, to.error());
    to = fs.create(dst);
    if (!to.has_value()) return report("reflink " + dst, to.error());
  }
  auto r = fs.reflink(*from, *to);
  return r.has_value() ? kExitOk : report("reflink", r.error());
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
  mkfs_cmd->add_flag("-f,--force", args->flag, "Overwrite an existing poise filesystem");

  auto* mkdir_cmd = command(app, "mkdir", "Create a directory", run, args, [](const Args& a) {
    return with_fs(a, [&](Filesystem& fs) {
      if (a.flag) return mkdir_p(fs, a.a);
      auto r = fs.mkdir(a.a);
      return r.has_value() ? kExitOk : report("mkdir " + a.a, r.error());
    });
  });
  mkdir_cmd->add_option("IMAGE", args->image)->required();
  mkdir_cmd->add_option("PATH", args->a)->required();
  mkdir_cmd->add_flag("-p,--parents", args->flag, "Create missing parents; no error if it exists");

  auto* put_cmd = command(app, "put", "Copy a local file (or - for stdin) into the image", run, args,
                          [](const Args& a) { return with_fs(a, [&](Filesystem& fs) { return put(fs, a.a, a.b); }); });
  put_cmd->add_option("IMAGE", args->image)->required();
  put_cmd->add_option("LOCAL", args->a, "Local file, or - for standard input")->required();
  put_cmd->add_option("PATH", args->b, "Destination path in the image (replaced if it exists)")->required();

  auto* rm_cmd = command(app, "rm", "Remove a file, or a directory tree with -r", run, args, [](const Args& a) {
    return with_fs(a, [&](Filesystem& fs) { return remove_tree(fs, a.a, a.flag); });
  });
  rm_cmd->add_option("IMAGE", args->image)->required();
  rm_cmd->add_option("PATH", args->a)->required();
  rm_cmd->add_flag("-r,--recursive", args->flag, "Remove directories and their contents");

  auto two_paths = [&](const char* name, const char* help, auto op) {
    auto* sub = command(app, name, help, run, args, [op](const Args& a) {
      return with_fs(a, [&](Filesystem& fs) { return op(fs, a.a, a.b); });
    });
    sub->add_option("IMAGE", args->image)->required();
    sub->add_option("SRC", args->a)->required();
    sub->add_option("DST", args->b)->required();
  };
  two_paths("mv", "Rename or move (replaces an existing DST of the same kind)",
            [](Filesystem& fs, const std::string& s, const std::string& d) {
              auto r = fs.rename(s, d);
              return r.has_value() ? int(kExitOk) : report("mv", r.error());
            });
  two_paths("ln", "Make DST a hard link to the file SRC", [](Filesystem& fs, const std::string& s, const std::string& d) {
    auto r = fs.link(s, d);
    return r.has_value() ? int(kExitOk) : report("ln", r.error());
  });
  two_paths("reflink", "Make DST share all of SRC's blocks (no data copied; writes copy later)",
            [](Filesystem& fs, const std::string& s, const std::string& d) { return reflink_cmd(fs, s, d); });

  auto* truncate_cmd = command(app, "truncate", "Set a file's size (shrink, or grow with zeros)", run, args,
                               [](const Args& a) {
    auto size = parse_size(a.size);
    if (!size) {
      fmt::print(stderr, "poise: truncate: cannot read size '{}'\n", a.size);
      return int(kExitUsage);
    }
    return with_fs(a, [&](Filesystem& fs) {
      auto ino = fs.lookup(a.a);
      if (!ino.has_value()) return report("truncate " + a.a, ino.error());
      auto r = fs.truncate(*ino, *size);
      return r.has_value() ? int(kExitOk) : report("truncate " + a.a, r.error());
    });
  });
  truncate_cmd->add_option("IMAGE", args->image)->required();
  truncate_cmd->add_option("PATH", args->a)->required();
  truncate_cmd->add_option("SIZE", args->size, "New size: bytes, or 4K, 10M ...")->required();
}

}  // namespace poise::cli
