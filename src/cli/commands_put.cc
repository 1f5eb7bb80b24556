// put: copies local files into the image, all in one mount.
//
//   poise put IMAGE LOCAL DST            one file (LOCAL "-" is standard input)
//   poise put IMAGE LOCAL... DIR         several files into an existing directory
//   poise put -r IMAGE LOCALDIR... DST   whole trees, as cp -r does
//
// Every file is all-or-nothing: its bytes go into an unnamed file (as
// O_TMPFILE), which gets its name only once every byte is in, in one journal
// transaction that also replaces the file there (as rename does). A failure
// (unreadable input, a full device, a kill) leaves the destination as it was
// and no other name, and the unnamed file is freed (at the latest by the next
// read-write mount). A failed file does not stop the others: put goes on and
// exits with the first failure's code, as cp does.
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <random>
#include <vector>

#include "cli/cli.h"
#include "cli/exit_codes.h"

namespace poise::cli {

namespace {

namespace stdfs = std::filesystem;
constexpr size_t kCopyChunkBytes = 1 << 20;

struct Args {
  std::string image;
  std::vector<std::string> paths;  // LOCAL... DST
  bool recursive = false;
};

// A progress line on a terminal, at most a few times a second.
class Progress {
 public:
  Progress() : shown_(::isatty(STDERR_FILENO) == 1) {}
  ~Progress() { end_progress_line(); }
  void file_done(uint64_t bytes) {
    ++files_;
    bytes_ += bytes;
    if (!shown_) return;
    auto now = std::chrono::steady_clock::now();
    if (printed_ && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    printed_ = true;
    std::fprintf(stderr, "\rput: %llu files, %.1f MiB", static_cast<unsigned long long>(files_),
                 static_cast<double>(bytes_) / (1 << 20));
    progress_line_open = true;
  }

 private:
  bool shown_;
  bool printed_ = false;
  uint64_t files_ = 0;
  uint64_t bytes_ = 0;
  std::chrono::steady_clock::time_point last_{};
};

// A server that went away fails every later file alike: after the first
// failure that says so, one report is enough.
bool server_went_away(int first_failure) { return first_failure != kExitOk && last_reported_error == ESHUTDOWN; }

std::string join(const std::string& dir, const std::string& name) {
  return dir.ends_with('/') ? dir + name : dir + "/" + name;
}

bool is_directory(Filesystem& fs, const std::string& path) {
  auto st = fs.stat(path);
  return st.has_value() && st->type == FileType::Directory;
}

// A replaced file keeps its extended attributes (its ACL among them) as a file
// rewritten in place would, but not a file capability (a write drops that),
// nor what the hidden file got from a default ACL that the old file lacked.
// Attributes of namespaces the caller may not set (trusted., security. of
// another's file through a server) are skipped; a server or image without
// attributes keeps none.
Result<void> keep_attributes(Filesystem& fs, const std::string& path, InodeNumber to, uint32_t mode) {
  // What the caller may not read or set (through a server) is skipped.
  auto skipped = [](const Error& e) {
    return e.code == EPERM || e.code == EACCES || e.code == ENODATA || e.code == ENOTSUP;
  };
  const InodeNumber from = TRY(fs.lookup(path));
  auto names = fs.list_xattrs(from);
  if (!names.has_value()) return skipped(names.error()) ? Result<void>{} : Unexpected<Error>(names.error());
  auto inherited = TRY(fs.list_xattrs(to));
  for (const std::string& n : inherited) {
    if (std::find(names->begin(), names->end(), n) == names->end()) TRY(fs.remove_xattr(to, n));
  }
  for (const std::string& n : *names) {
    if (n == "security.capability") continue;
    auto value = fs.get_xattr(from, n);
    auto set = value.has_value() ? fs.set_xattr(to, n, *value) : Result<void>(Unexpected<Error>(value.error()));
    if (!set.has_value() && !skipped(set.error())) return set;
  }
  // A default ACL of the directory may have narrowed the hidden file's mode;
  // the replaced file's stays (and with it any ACL's mask).
  SetAttributes keep;
  keep.mode = mode;
  auto kept = fs.set_attributes(to, keep);
  if (!kept.has_value() && !skipped(kept.error())) return Unexpected<Error>(kept.error());
  return {};
}

// Makes something (`make` of a name) under a hidden name beside PATH. The name
// is random, so a file left by a killed put (or one a user made) is never in
// the way.
template <class Make>
auto make_hidden_beside(const std::string& path, std::string* name, Make make) {
  constexpr int kAttemptsMax = 16;
  size_t slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  static std::mt19937 rng{std::random_device{}()};  // a name, not test randomness: no seed to replay
  for (int attempt = 0;; ++attempt) {
    *name = fmt::format("{}.poise-put-{}-{:08x}", dir, ::getpid(), rng());
    auto made = make(*name);
    if (made.has_value() || made.error().code != EEXIST || attempt + 1 == kAttemptsMax) return made;
  }
}

// The directory PATH is in ("/" for a name without one).
std::string parent_of(const std::string& path) {
  size_t end = path.size();
  while (end > 1 && path[end - 1] == '/') --end;
  const size_t slash = path.rfind('/', end - 1);
  if (slash == std::string::npos || slash == 0) return "/";
  return path.substr(0, slash);
}

// Creates the hidden file a put writes into, beside PATH.
Result<File> create_hidden_beside(Filesystem& fs, const std::string& path, uint32_t mode, std::string* name) {
  return make_hidden_beside(path, name, [&](const std::string& n) {
    return fs.open(n, OpenFlags::Create | OpenFlags::Exclusive, mode);
  });
}

// Makes a symbolic link or special file at PATH with `make`; one already there
// (anything but a directory) is replaced in one rename, as a put replaces a
// regular file, so that putting a tree again brings it up to date.
int put_node(Filesystem& fs, const std::string& path, const std::function<Result<InodeNumber>(const std::string&)>& make) {
  auto made = make(path);
  if (made.has_value()) return kExitOk;
  if (made.error().code != EEXIST || is_directory(fs, path)) return report("put " + path, made.error());
  std::string temp;
  if (auto hidden = make_hidden_beside(path, &temp, make); !hidden.has_value()) return report("put " + path, hidden.error());
  if (auto renamed = fs.rename(temp, path); !renamed.has_value()) {
    (void)fs.unlink(temp);  // the destination stays as it was
    return report("put " + path, renamed.error());
  }
  return kExitOk;
}

// Copies one local file (or stdin) to PATH in the image, all or nothing.
int put_file(Filesystem& fs, const std::string& local, const std::string& path, Progress* progress) {
  std::FILE* in = local == "-" ? stdin : std::fopen(local.c_str(), "rb");
  if (in == nullptr) {
    int e = errno;
    eprint("poise: put: cannot open {}: {}\n", local, std::strerror(e));
    return e == ENOENT ? kExitNotFound : kExitFailure;
  }
  auto close_in = [&] {
    if (in != stdin) std::fclose(in);
  };
  struct stat in_st {};
  if (::fstat(::fileno(in), &in_st) == 0 && S_ISDIR(in_st.st_mode)) {
    close_in();
    eprint("poise: put: {} is a directory (use -r)\n", local);
    return kExitInvalid;
  }
  // A new file takes the local file's permission bits, a replaced one keeps its
  // own; a replaced symbolic link (never followed: the link itself goes) had
  // none worth keeping (0777), so the file takes the local bits.
  uint32_t mode = local == "-" ? 0644 : static_cast<uint32_t>(in_st.st_mode) & 07777;
  bool replacing = false, replacing_file = false;
  if (auto old = fs.stat(path); old.has_value()) {
    replacing = true;
    if (old->type == FileType::Directory) {
      close_in();
      eprint("poise: put: {} is a directory\n", path);
      return kExitInvalid;
    }
    if (old->type == FileType::Regular) {
      mode = old->mode;
      replacing_file = true;
    }
  } else if (old.error().code != ENOENT) {
    close_in();
    return report("put " + path, old.error());
  }
  // The bytes go into an unnamed file (O_TMPFILE), named only once complete, so
  // a put killed on the way leaves nothing behind. A server without unnamed
  // files gets a hidden name beside the destination instead, from the start.
  std::string temp;
  auto file = fs.open_tmpfile(parent_of(path), mode);
  const bool unnamed = file.has_value();
  if (!unnamed && file.error().code == ENOTSUP) file = create_hidden_beside(fs, path, mode, &temp);
  if (!file.has_value()) {
    close_in();
    return report("put " + path, file.error());
  }
  static std::vector<std::byte> buf(kCopyChunkBytes);
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
        eprint("poise: put: reading {} failed: {}\n", local, std::strerror(errno));
        code = kExitFailure;
      }
      break;
    }
  }
  close_in();
  if (code == kExitOk && replacing_file) {
    if (auto kept = keep_attributes(fs, path, file->ino(), mode); !kept.has_value()) {
      code = report("put " + path, kept.error());
    }
  }
  // Replacing a file: its new bytes are on media before the rename makes the old
  // ones unreachable, so that not even a machine crash loses both.
  if (code == kExitOk && replacing) {
    if (auto synced = file->fsync(); !synced.has_value()) code = report("put " + path, synced.error());
  }
  if (code == kExitOk && unnamed) {
    // Named in one transaction, which replaces a file already there.
    if (auto linked = fs.link_tmpfile(*file, path, true); !linked.has_value()) {
      code = report("put " + path, linked.error());
    }
  }
  file->close();  // unnamed and not linked (a failure): freed here
  if (code == kExitOk && !temp.empty()) {
    if (auto renamed = fs.rename(temp, path); !renamed.has_value()) code = report("put " + path, renamed.error());
  }
  if (code != kExitOk) {
    if (!temp.empty()) (void)fs.unlink(temp);  // the destination keeps its old content
    return code;
  }
  progress->file_done(offset);
  return kExitOk;
}

// Copies the local tree at LOCAL to DST (created). Symbolic links are copied as
// links (their targets as they are), FIFOs, sockets and device nodes as what
// they are (a server makes device nodes for root only, as mknod(2) does; the
// owner of an image file may write anything into it, which is why mounts are
// nodev unless asked). The image itself, if it lies in the tree, is skipped.
int put_tree(Filesystem& fs, const stdfs::path& local, const std::string& dst, const std::string& image,
             Progress* progress) {
  int first = kExitOk;
  auto note = [&](int code) {
    if (first == kExitOk) first = code;
  };
  // A new directory takes the local one's permission bits and sticky bit, as
  // files take theirs (a private 0700 directory stays private); one that
  // exists keeps its own.
  // It is made with the owner's rwx (so that it can be filled, as cp does) and
  // given its own mode once filled.
  struct stat local_dir {};
  const uint32_t mode = ::stat(local.c_str(), &local_dir) == 0 ? (local_dir.st_mode & 01777) : 0755;
  auto made = fs.mkdir(dst, mode | 0700);
  if (!made.has_value() && !(made.error().code == EEXIST && is_directory(fs, dst))) {
    return report("put " + dst, made.error());
  }
  struct FinalMode {  // on every way out
    Filesystem& fs;
    std::optional<InodeNumber> dir;
    uint32_t mode;
    ~FinalMode() {
      if (!dir || (mode | 0700) == mode) return;
      SetAttributes final_mode;
      final_mode.mode = mode;
      (void)fs.set_attributes(*dir, final_mode);  // through a server: not offered; it keeps the owner's rwx
    }
  } final_mode{fs, made.has_value() ? std::optional<InodeNumber>(*made) : std::nullopt, mode};
  std::error_code ec;
  stdfs::directory_iterator it(local, ec);
  if (ec) {
    eprint("poise: put: cannot read directory {}: {}\n", local.string(), ec.message());
    return kExitFailure;
  }
  std::vector<stdfs::directory_entry> entries(it, stdfs::directory_iterator());
  std::sort(entries.begin(), entries.end());  // a stable order: same tree, same layout
  for (const auto& entry : entries) {
    if (server_went_away(first)) break;
    std::string target = join(dst, entry.path().filename().string());
    auto status = entry.symlink_status(ec);
    if (ec) {
      eprint("poise: put: cannot stat {}: {}\n", entry.path().string(), ec.message());
      note(kExitFailure);
    } else if (stdfs::is_directory(status)) {
      if (int code = put_tree(fs, entry.path(), target, image, progress); code != kExitOk) note(code);
    } else if (is_the_image(entry.path().string(), image)) {
      eprint("poise: put: skipping {}: it is the image itself\n", entry.path().string());
    } else if (stdfs::is_regular_file(status)) {
      if (int code = put_file(fs, entry.path().string(), target, progress); code != kExitOk) note(code);
    } else if (stdfs::is_symlink(status)) {
      const stdfs::path link_target = stdfs::read_symlink(entry.path(), ec);
      if (ec) {
        eprint("poise: put: cannot read the link {}: {}\n", entry.path().string(), ec.message());
        note(kExitFailure);
      } else if (int code = put_node(fs, target, [&](const std::string& at) { return fs.symlink(link_target.string(), at); });
                 code != kExitOk) {
        note(code);
      }
    } else if (struct stat local_st {}; ::lstat(entry.path().c_str(), &local_st) == 0) {
      const FileType type = S_ISFIFO(local_st.st_mode)  ? FileType::Fifo
                            : S_ISSOCK(local_st.st_mode) ? FileType::Socket
                            : S_ISCHR(local_st.st_mode)  ? FileType::CharDevice
                                                         : FileType::BlockDevice;
      const bool device = type == FileType::CharDevice || type == FileType::BlockDevice;
      if (int code = put_node(fs, target, [&](const std::string& at) {
            return fs.mknod(at, type, local_st.st_mode & 07777, device ? local_st.st_rdev : 0);
          });
          code != kExitOk) {
        note(code);
      }
    } else {
      eprint("poise: put: cannot stat {}: {}\n", entry.path().string(), std::strerror(errno));
      note(kExitFailure);
    }
  }
  return first;
}

int put(const Args& a) {
  if (a.paths.size() < 2) {
    eprint("poise: put: give LOCAL and a destination\n");
    return kExitUsage;
  }
  const std::vector<std::string> locals(a.paths.begin(), a.paths.end() - 1);
  const std::string& dst = a.paths.back();
  // Refused before the image is opened: nothing of it may change.
  for (const std::string& local : locals) {
    if (local.empty() || dst.empty()) {
      eprint("poise: put: an empty path names nothing (the root is /)\n");
      return kExitUsage;
    }
    if (is_the_image(local, a.image) || (local == "-" && stream_is_the_image(STDIN_FILENO, a.image))) {
      eprint("poise: put: {} is the image itself; it cannot be copied into itself\n", local);
      return kExitInvalid;
    }
    if (local == "-" && (a.recursive || locals.size() > 1)) {
      eprint("poise: put: - (standard input) names one file: give it alone, without -r\n");
      return kExitUsage;
    }
    if (local == "-" && stdin_was_closed) {
      eprint("poise: put: standard input is closed; nothing to read (the destination is left as it is)\n");
      return kExitUsage;
    }
  }
  return with_mounted(a.image, MountMode::ReadWrite, [&](Filesystem& fs) {
    Progress progress;
    const bool into_directory = locals.size() > 1 || is_directory(fs, dst);
    if (locals.size() > 1 && !into_directory) {
      eprint("poise: put: {} is not a directory (several files go into one)\n", dst);
      return int(kExitInvalid);
    }
    if (!into_directory && dst.ends_with('/')) {
      eprint("poise: put: {}: no such directory\n", dst);
      return int(kExitNotFound);
    }
    if (locals.front() == "-" && into_directory) {
      eprint("poise: put: {} is a directory: give standard input a file name there\n", dst);
      return int(kExitInvalid);
    }
    int first = kExitOk;
    for (const std::string& local : locals) {
      if (server_went_away(first)) break;
      std::string name = stdfs::path(local).lexically_normal().filename().string();
      if (name.empty() || name == "." || name == "..") name = stdfs::absolute(local).lexically_normal().filename().string();
      std::string target = into_directory ? join(dst, name) : dst;
      struct stat st {};
      int code;
      if (local != "-" && ::stat(local.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        if (!a.recursive) {
          eprint("poise: put: {} is a directory (use -r)\n", local);
          code = kExitInvalid;
        } else {
          code = put_tree(fs, local, target, a.image, &progress);
        }
      } else {
        code = put_file(fs, local, target, &progress);
      }
      if (code != kExitOk && first == kExitOk) first = code;
    }
    return first;
  });
}

}  // namespace

void add_put_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand(
      "put", "Copy local files (or - for stdin) into the image; each file is replaced whole or not at all");
  sub->callback([run, args] { *run = [args] { return put(*args); }; });
  sub->add_option("IMAGE", args->image)->required();
  sub->add_option("PATHS", args->paths,
                  "LOCAL... DST: one file to DST (a file, or an existing directory), several into the directory "
                  "DST, trees with -r")
      ->required()
      ->expected(2, -1);
  sub->add_flag("-r,--recursive", args->recursive,
                "Copy directories and everything in them (again over an earlier copy: files, links and special files are replaced)");
  sub->footer(
      "Examples:\n"
      "  poise put pool.img ./orders.parquet /db/orders\n"
      "  poise put pool.img a.csv b.csv c.csv /db/in/\n"
      "  poise put -r pool.img ./dataset /db/dataset\n"
      "On a terminal a progress line shows files and bytes copied.");
}

}  // namespace poise::cli
