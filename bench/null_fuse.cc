#define FUSE_USE_VERSION 314
#include "bench/null_fuse.h"

#include "fuse/mount.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace poise::bench {

struct NullFuse::State {
  struct Node {
    struct stat attr {};
    std::map<std::string, fuse_ino_t> children;  // a directory's names
  };
  std::mutex mutex;
  std::unordered_map<fuse_ino_t, Node> nodes;
  fuse_ino_t next_ino = FUSE_ROOT_ID + 1;
  double cache_seconds = 1;
  bool splice = true;
  fuse_session* session = nullptr;
  int stop_fd = -1;
  std::vector<std::thread> workers;

  // Under the mutex.
  fuse_entry_param entry(fuse_ino_t ino) {
    fuse_entry_param e{};
    e.ino = ino;
    e.attr = nodes[ino].attr;
    e.attr_timeout = cache_seconds;
    e.entry_timeout = cache_seconds;
    return e;
  }
  fuse_ino_t make(fuse_ino_t parent, const char* name, mode_t mode, const fuse_ctx* who) {
    fuse_ino_t ino = next_ino++;
    Node& n = nodes[ino];
    n.attr.st_ino = ino;
    n.attr.st_mode = mode;
    n.attr.st_nlink = S_ISDIR(mode) ? 2 : 1;
    n.attr.st_uid = who->uid;
    n.attr.st_gid = who->gid;
    n.attr.st_blksize = 4096;
    nodes[parent].children[name] = ino;
    return ino;
  }
};

namespace {

using State = NullFuse::State;
State& state_of(fuse_req_t req) { return *static_cast<State*>(fuse_req_userdata(req)); }

void null_init(void* userdata, fuse_conn_info* conn) {
  fusemount::MountOptions options;
  options.splice = static_cast<State*>(userdata)->splice;
  fusemount::configure_connection(conn, options);
}

void null_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  State& s = state_of(req);
  std::unique_lock lock(s.mutex);
  auto& children = s.nodes[parent].children;
  auto it = children.find(name);
  if (it == children.end()) {
    lock.unlock();
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_entry_param e = s.entry(it->second);
  lock.unlock();
  fuse_reply_entry(req, &e);
}

void null_forget(fuse_req_t req, fuse_ino_t, uint64_t) { fuse_reply_none(req); }

void null_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  State& s = state_of(req);
  std::unique_lock lock(s.mutex);
  struct stat st = s.nodes[ino].attr;
  lock.unlock();
  fuse_reply_attr(req, &st, s.cache_seconds);
}

void null_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  State& s = state_of(req);
  std::unique_lock lock(s.mutex);
  struct stat& st = s.nodes[ino].attr;
  if (to_set & FUSE_SET_ATTR_MODE) st.st_mode = (st.st_mode & S_IFMT) | (attr->st_mode & 07777);
  if (to_set & FUSE_SET_ATTR_UID) st.st_uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) st.st_gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_SIZE) st.st_size = attr->st_size;
  if (to_set & FUSE_SET_ATTR_MTIME) st.st_mtim = attr->st_mtim;
  if (to_set & FUSE_SET_ATTR_ATIME) st.st_atim = attr->st_atim;
  struct stat copy = st;
  lock.unlock();
  fuse_reply_attr(req, &copy, s.cache_seconds);
}

void null_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  State& s = state_of(req);
  std::unique_lock lock(s.mutex);
  fuse_entry_param e = s.entry(s.make(parent, name, S_IFDIR | (mode & 07777), fuse_req_ctx(req)));
  lock.unlock();
  fuse_reply_entry(req, &e);
}

void null_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
  State& s = state_of(req);
  std::unique_lock lock(s.mutex);
  fuse_entry_param e = s.entry(s.make(parent, name, S_IFREG | (mode & 07777), fuse_req_ctx(req)));
  lock.unlock();
  fuse_reply_create(req, &e, fi);
}

void null_open(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

void null_release(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }

void null_write(fuse_req_t req, fuse_ino_t ino, const char*, size_t size, off_t off, fuse_file_info*) {
  State& s = state_of(req);
  {
    std::lock_guard lock(s.mutex);
    struct stat& st = s.nodes[ino].attr;
    st.st_size = std::max<off_t>(st.st_size, off + static_cast<off_t>(size));
  }
  fuse_reply_write(req, size);
}

void null_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  State& s = state_of(req);
  off_t file_size = 0;
  {
    std::lock_guard lock(s.mutex);
    file_size = s.nodes[ino].attr.st_size;
  }
  static thread_local std::vector<char> zeros(1 << 20);
  size_t n = off >= file_size ? 0 : std::min<size_t>({size, zeros.size(), static_cast<size_t>(file_size - off)});
  fuse_reply_buf(req, zeros.data(), n);
}

void remove_name(fuse_req_t req, fuse_ino_t parent, const char* name, bool directory) {
  State& s = state_of(req);
  std::unique_lock lock(s.mutex);
  auto& children = s.nodes[parent].children;
  auto it = children.find(name);
  int error = 0;
  if (it == children.end()) {
    error = ENOENT;
  } else if (directory && !s.nodes[it->second].children.empty()) {
    error = ENOTEMPTY;
  } else {  // the node stays: an open file keeps its attributes
    s.nodes[it->second].attr.st_nlink = 0;
    children.erase(it);
  }
  lock.unlock();
  fuse_reply_err(req, error);
}
void null_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) { remove_name(req, parent, name, false); }
void null_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) { remove_name(req, parent, name, true); }

void null_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  State& s = state_of(req);
  std::vector<std::pair<std::string, struct stat>> entries;
  {
    std::lock_guard lock(s.mutex);
    for (const auto& [name, child] : s.nodes[ino].children) entries.emplace_back(name, s.nodes[child].attr);
  }
  std::vector<char> buf(std::min<size_t>(size, 1 << 20));
  size_t used = 0;
  for (size_t i = static_cast<size_t>(std::max<off_t>(off, 0)); i < entries.size(); ++i) {
    size_t need = fuse_add_direntry(req, buf.data() + used, buf.size() - used, entries[i].first.c_str(),
                                    &entries[i].second, static_cast<off_t>(i + 1));
    if (need > buf.size() - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void null_getxattr(fuse_req_t req, fuse_ino_t, const char*, size_t) { fuse_reply_err(req, ENODATA); }

}  // namespace

std::unique_ptr<NullFuse> NullFuse::start(const std::string& dir, unsigned threads, bool splice,
                                          double cache_seconds) {
  std::unique_ptr<NullFuse> nf(new NullFuse());
  nf->state_ = std::make_unique<State>();
  State& s = *nf->state_;
  s.cache_seconds = cache_seconds;
  s.splice = splice;
  struct stat& root = s.nodes[FUSE_ROOT_ID].attr;
  root.st_ino = FUSE_ROOT_ID;
  root.st_mode = S_IFDIR | 0755;
  root.st_nlink = 2;
  fuse_lowlevel_ops ops{};
  ops.init = null_init;
  ops.lookup = null_lookup;
  ops.forget = null_forget;
  ops.getattr = null_getattr;
  ops.setattr = null_setattr;
  ops.mkdir = null_mkdir;
  ops.create = null_create;
  ops.open = null_open;
  ops.release = null_release;
  ops.write = null_write;
  ops.read = null_read;
  ops.unlink = null_unlink;
  ops.rmdir = null_rmdir;
  ops.readdir = null_readdir;
  ops.getxattr = null_getxattr;
  std::vector<std::string> words = {"null", "-o", "default_permissions,subtype=null,fsname=null,nodev,nosuid"};
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  s.session = fuse_session_new(&args, &ops, sizeof(ops), &s);
  fuse_opt_free_args(&args);
  if (s.session == nullptr) return nullptr;
  if (fuse_session_mount(s.session, dir.c_str()) != 0) {
    fuse_session_destroy(s.session);
    s.session = nullptr;
    return nullptr;
  }
  const int fd = fuse_session_fd(s.session);
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  s.stop_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s.stop_fd < 0) return nullptr;  // (the destructor unmounts)
  for (unsigned i = 0; i < threads; ++i) s.workers.emplace_back([&s] { fusemount::serve_requests(s.session, s.stop_fd); });
  return nf;
}

NullFuse::~NullFuse() {
  State& s = *state_;
  if (s.stop_fd >= 0) {
    uint64_t one = 1;
    (void)!::write(s.stop_fd, &one, sizeof(one));
  }
  for (auto& t : s.workers) t.join();
  if (s.session != nullptr) {
    fuse_session_unmount(s.session);
    fuse_session_destroy(s.session);
  }
  if (s.stop_fd >= 0) ::close(s.stop_fd);
}

}  // namespace poise::bench
