#!/usr/bin/python3
"""A model test of the FUSE mount: the same random operations on the mount and
on a reference directory (a local filesystem), each outcome (success or errno)
compared, and the two trees compared after every step: names, types, sizes,
permission bits, link counts, file contents, device numbers of FIFOs and
device nodes (made with mkfifo and mknod, never opened), extended attributes
and POSIX ACLs (set through the kernel's own ACL calls, so inheritance, chmod
and the umask must come out as the local filesystem's). Runs as root (mknod).

Usage: fuse_model.py MOUNT_DIR REFERENCE_DIR [--seed N] [--steps N]
Prints its seed first; rerun with --seed to replay a failure.
"""
import argparse
import ctypes
import errno
import hashlib
import os
import random
import stat
import sys

NAMES = ["a", "b", "c", "d1", "d2", "long-" + "n" * 40]
# Link targets stay inside the tree (no ".."), so both trees resolve them alike.
TARGETS = ["a", "b", "d1", "d1/a", "d2/c", "missing", "long-" + "n" * 40, "t" * 3000]
# Values stay small: the reference (ext4 in one block) holds about 4 KiB of
# attributes per inode, poise 64 KiB.
XATTRS = ["user.a", "user.b", "user.long-" + "x" * 100]
ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"


def acl_bytes(rng):
    """A valid ACL in Linux's xattr form: owner, maybe named users and groups
    (then a mask), owning group, other."""
    tag = lambda t, perm, ident=0xFFFFFFFF: t.to_bytes(2, "little") + perm.to_bytes(2, "little") + ident.to_bytes(4, "little")
    r = lambda: rng.randrange(8)
    out = (2).to_bytes(4, "little") + tag(0x01, r())
    users = sorted(rng.sample([1000, 1001, 65534], rng.randrange(3)))
    groups = sorted(rng.sample([100, 1000, 65534], rng.randrange(3)))
    out += b"".join(tag(0x02, r(), u) for u in users)
    out += tag(0x04, r())
    out += b"".join(tag(0x08, r(), g) for g in groups)
    if users or groups or rng.random() < 0.3:
        out += tag(0x10, r())
    return out + tag(0x20, r())
LIBC = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def rename_exchange(a, b):
    if LIBC.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def tree(root):
    """Every entry under root: path -> (type, size or None, mode, nlink, digest)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", st.st_size, None, st.st_nlink, os.readlink(full))
                continue
            attrs = tuple(sorted((n, os.getxattr(full, n, follow_symlinks=False))
                                 for n in os.listxattr(full, follow_symlinks=False)))
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", None, st.st_mode & 0o7777, st.st_nlink, None, attrs)
            elif not stat.S_ISREG(st.st_mode):  # a FIFO or a device node: its type and number
                out[rel] = ("special", stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_nlink, st.st_rdev, attrs)
            else:
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("file", st.st_size, st.st_mode & 0o7777, st.st_nlink, digest, attrs)
    return out


def outcome(fn):
    try:
        result = fn()
        return ("ok", result)
    except OSError as e:
        return ("errno", errno.errorcode.get(e.errno, e.errno))


def pick_dir(rng, entries):
    dirs = [""] + [p for p, v in entries.items() if v[0] == "dir"]
    return rng.choice(dirs)


def pick_path(rng, entries, kind=None):
    paths = [p for p, v in entries.items() if kind is None or v[0] == kind]
    if paths and rng.random() < 0.85:
        return rng.choice(paths)
    return os.path.join(pick_dir(rng, entries), rng.choice(NAMES))  # often missing


def make_op(rng, entries):
    kind = rng.choice(["create", "create", "write", "write", "append", "truncate", "mkdir", "mkdir",
                       "rename", "rename", "unlink", "rmdir", "link", "chmod", "read",
                       "symlink", "symlink", "exchange", "seek", "setxattr", "setxattr", "removexattr",
                       "acl", "acl", "default-acl", "remove-acl", "mkfifo", "mknod"])
    if kind in ("mkfifo", "mknod"):
        return (kind, os.path.join(pick_dir(rng, entries), rng.choice(NAMES)), rng.choice([0o600, 0o644, 0o666]),
                os.makedev(1, rng.choice([3, 5])))
    if kind in ("setxattr", "removexattr"):
        return (kind, pick_path(rng, entries), rng.choice(XATTRS), rng.randbytes(rng.choice([0, 1, 50, 600])),
                rng.choice([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE]))
    if kind in ("acl", "default-acl"):
        target = pick_path(rng, entries, "dir" if kind == "default-acl" else None)
        return (kind, target, acl_bytes(rng))
    if kind == "remove-acl":
        return (kind, pick_path(rng, entries), rng.choice([ACL_ACCESS, ACL_DEFAULT]))
    if kind == "symlink":
        return (kind, rng.choice(TARGETS), os.path.join(pick_dir(rng, entries), rng.choice(NAMES)))
    if kind == "exchange":
        return (kind, pick_path(rng, entries), pick_path(rng, entries))
    if kind == "seek":
        return (kind, pick_path(rng, entries, "file"), rng.choice([0, 1, 4095, 4096, 10000, 70000]),
                rng.choice([os.SEEK_DATA, os.SEEK_HOLE]))
    if kind in ("create", "mkdir"):
        path = os.path.join(pick_dir(rng, entries), rng.choice(NAMES))
        data = rng.randbytes(rng.choice([0, 1, 100, 4096, 5000, 70000]))
        return (kind, path, data, 0o755 if kind == "mkdir" else 0o644)
    if kind in ("write", "append", "truncate", "read", "chmod"):
        path = pick_path(rng, entries, "file")
        return (kind, path, rng.randbytes(rng.choice([1, 10, 4096, 9000])),
                rng.choice([0, 1, 4095, 4096, 10000, 70000]), rng.choice([0o600, 0o644, 0o755, 0o4711]))
    if kind == "rename":
        src = pick_path(rng, entries)
        dst = os.path.join(pick_dir(rng, entries), rng.choice(NAMES))
        return (kind, src, dst)
    if kind == "link":
        return (kind, pick_path(rng, entries, "file"), os.path.join(pick_dir(rng, entries), rng.choice(NAMES)))
    if kind == "rmdir":
        return (kind, pick_path(rng, entries, "dir"))
    return (kind, pick_path(rng, entries))  # unlink


def apply(op, root):
    kind = op[0]
    p = lambda rel: os.path.join(root, rel)

    def on_fd(flags, use, mode=0o644):
        """Opens op[1] with flags, calls use(fd), closes it: the outcome."""
        try:  # a FIFO or device node is not opened: what that means is the kernel's
            # (a peer to wait for; a device, or EACCES on a nodev mount), not poise's.
            if not stat.S_ISREG(os.lstat(p(op[1])).st_mode) and not stat.S_ISDIR(os.lstat(p(op[1])).st_mode):
                return ("special",)
        except OSError:
            pass

        def fn():
            fd = os.open(p(op[1]), flags, mode)
            try:
                return use(fd)
            finally:
                os.close(fd)
        return outcome(fn)

    if kind == "create":
        return on_fd(os.O_CREAT | os.O_EXCL | os.O_WRONLY, lambda fd: (os.write(fd, op[2]), None)[1], op[3])
    if kind == "mkdir":
        return outcome(lambda: os.mkdir(p(op[1]), op[3]))
    if kind == "mkfifo":
        return outcome(lambda: os.mkfifo(p(op[1]), op[2]))
    if kind == "mknod":
        return outcome(lambda: os.mknod(p(op[1]), stat.S_IFCHR | op[2], op[3]))
    if kind == "write":
        return on_fd(os.O_WRONLY, lambda fd: os.pwrite(fd, op[2], op[3]))
    if kind == "append":
        return on_fd(os.O_WRONLY | os.O_APPEND, lambda fd: os.write(fd, op[2]))
    if kind == "truncate":
        return outcome(lambda: os.truncate(p(op[1]), op[3]))
    if kind == "read":
        return on_fd(os.O_RDONLY, lambda fd: hashlib.sha256(os.pread(fd, 9000, op[3])).hexdigest())
    if kind == "chmod":
        return outcome(lambda: os.chmod(p(op[1]), op[4]))
    if kind == "rename":
        return outcome(lambda: os.rename(p(op[1]), p(op[2])))
    if kind == "link":
        return outcome(lambda: os.link(p(op[1]), p(op[2])))
    if kind == "rmdir":
        return outcome(lambda: os.rmdir(p(op[1])))
    if kind == "symlink":
        return outcome(lambda: os.symlink(op[1], p(op[2])))
    if kind == "exchange":
        return outcome(lambda: rename_exchange(p(op[1]), p(op[2])))
    if kind == "seek":
        if os.path.isdir(p(op[1])):
            return ("directory",)  # what lseek means on a directory differs between filesystems
        return on_fd(os.O_RDONLY, lambda fd: os.lseek(fd, op[2], op[3]))
    if kind == "unlink":
        return outcome(lambda: os.unlink(p(op[1])))
    if kind == "setxattr":
        return outcome(lambda: os.setxattr(p(op[1]), op[2], op[3], op[4]))
    if kind == "removexattr":
        return outcome(lambda: os.removexattr(p(op[1]), op[2]))
    if kind in ("acl", "default-acl"):
        return outcome(lambda: os.setxattr(p(op[1]), ACL_ACCESS if kind == "acl" else ACL_DEFAULT, op[2]))
    if kind == "remove-acl":
        return outcome(lambda: os.removexattr(p(op[1]), op[2]))
    raise AssertionError(kind)


def describe(op):
    return " ".join(repr(x) if not isinstance(x, bytes) else f"<{len(x)} bytes>" for x in op)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mount")
    parser.add_argument("reference")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    print(f"fuse_model: seed {seed} ({args.steps} steps)", flush=True)
    rng = random.Random(seed)
    log = []
    for step in range(args.steps):
        entries = tree(args.reference)
        op = make_op(rng, entries)
        log.append(describe(op))
        got, want = apply(op, args.mount), apply(op, args.reference)
        if got != want:
            print(f"FAIL at step {step} (seed {seed}): {describe(op)}\n  mount: {got}\n  reference: {want}")
            print("last operations:\n  " + "\n  ".join(log[-10:]))
            return 1
        mine, theirs = tree(args.mount), tree(args.reference)
        if mine != theirs:
            diff = sorted(set(mine.items()) ^ set(theirs.items()))
            print(f"FAIL after step {step} (seed {seed}): {describe(op)}: the trees differ")
            for path, value in diff[:10]:
                side = "mount" if mine.get(path) == value else "reference"
                print(f"  {side}: {path}: {value}")
            print("last operations:\n  " + "\n  ".join(log[-10:]))
            return 1
    print(f"fuse_model: {args.steps} steps agree, {len(tree(args.reference))} entries at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
