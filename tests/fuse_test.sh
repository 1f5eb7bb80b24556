#!/bin/bash
# The FUSE mount with real programs and real processes: poise mount and umount;
# cp -a, tar, rsync, git and sqlite3 on the mount, each outcome compared with
# the source; a random-operations model test against a directory on tmpfs
# (printed seed); memory failure under a file that a process holds open and
# maps (EIO for exactly the lost page, SIGBUS on the mapped lost page, the rest
# reads); pre-remove and removal; kill -9 of the server; permissions for
# another user with allow_other; poise check clean after each part.
# Needs root and /dev/fuse (exit 77, reported as skipped, without them).
# Usage: fuse_test.sh PATH_TO_POISE
POISE=${1:?usage: fuse_test.sh PATH_TO_POISE}
WORK_NAME=poise-fuse-test
source "$(dirname "$0")/cli_lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3

if [ "$(id -u)" -ne 0 ] || [ ! -c /dev/fuse ]; then
  echo "fuse_test: SKIPPED: needs root and /dev/fuse"
  exit 77
fi

MNT=$WORK/mnt
mkdir -p "$MNT"
unmount_all() {
  # A mount whose server died (or a test that failed midway) is detached, so
  # that the scratch folder can go.
  grep -q " $MNT fuse.poise" /proc/self/mounts && umount -l "$MNT" 2>/dev/null
  pkill -9 -f "poise mount $IMG" 2>/dev/null
  cleanup
}
trap unmount_all EXIT

# mount_img: poise mount, and the server's pid in $SERVER.
mount_img() {
  expect 0 "$POISE" mount "$IMG" "$MNT" --log "$WORK/serve.log" "$@"
  SERVER=$(grep -o 'serving .* (pid [0-9]*)' "$WORK/serve.log" | tail -1 | sed 's/.*(pid \([0-9]*\))/\1/')
  grep -q " $MNT fuse.poise" /proc/self/mounts && ok || bad "no fuse.poise mount on $MNT after poise mount"
}
umount_img() {
  expect 0 "$POISE" umount "$MNT"
  grep -q " $MNT fuse.poise" /proc/self/mounts && bad "still mounted after poise umount" || ok
  [ -S "$IMG.sock" ] && bad "the server's socket is still there after poise umount" || ok
}
check_clean() {
  expect 0 "$POISE" check "$IMG"
  contains "$WORK/out" "clean"
}
eventually() {  # eventually DESCRIPTION COMMAND...: the command succeeds within 2 s
  local what=$1 i
  shift
  for i in $(seq 40); do "$@" && { ok; return; }; sleep 0.05; done
  bad "$what"
}
same_files() {  # same_files A B: the same regular files, contents, modes and times, and links
  if diff -r --no-dereference "$1" "$2" >"$WORK/diff" 2>&1; then ok; else bad "diff -r $1 $2: $(head -5 "$WORK/diff")"; fi
  (cd "$1" && find . -type l -printf '%P -> %l %T@\n' | sort) >"$WORK/links.a"
  (cd "$2" && find . -type l -printf '%P -> %l %T@\n' | sort) >"$WORK/links.b"
  if [ -s "$WORK/links.a" ] && cmp -s "$WORK/links.a" "$WORK/links.b"; then ok; else
    bad "symbolic links differ: $(diff "$WORK/links.a" "$WORK/links.b" | head -4)"
  fi
  (cd "$1" && find . -type f -printf '%P %m %s %n %T@\n' | sort) >"$WORK/meta.a"
  (cd "$2" && find . -type f -printf '%P %m %s %n %T@\n' | sort) >"$WORK/meta.b"
  if cmp -s "$WORK/meta.a" "$WORK/meta.b"; then ok; else bad "metadata differs: $(diff "$WORK/meta.a" "$WORK/meta.b" | head -4)"; fi
}

# A source tree: real headers, a few random binary files, a sparse one and hard links.
SRC=$WORK/src
mkdir -p "$SRC"
cp -a /usr/include/linux "$SRC/linux"
mkdir -p "$SRC/bin/deeper/still"
for i in 1 2 3 4 5; do head -c $((i * 70001)) /dev/urandom >"$SRC/bin/r$i"; done
truncate -s 5M "$SRC/bin/sparse"
printf 'middle' | dd of="$SRC/bin/sparse" bs=1 seek=3000000 conv=notrunc 2>/dev/null
ln "$SRC/bin/r1" "$SRC/bin/deeper/still/r1-link"
chmod 0600 "$SRC/bin/r2"
chmod 4711 "$SRC/bin/r3"
touch -d '1999-12-31 23:59:59.123456789' "$SRC/bin/r4"
# Symbolic links: relative, absolute and dangling, to a directory, and a
# 4,000-byte target (a link's target is its one data block).
ln -s r1 "$SRC/bin/rel-link"
ln -s deeper/still "$SRC/bin/dir-link"
ln -s /nonexistent/dangling "$SRC/bin/dangling"
ln -s "$(head -c 4000 /dev/zero | tr '\0' 'x')" "$SRC/bin/long-link"
touch -h -d '2001-02-03 04:05:06.7' "$SRC/bin/rel-link"

expect 0 "$POISE" mkfs "$IMG" --size 256M

# --- usage errors, before anything is mounted
expect 8 "$POISE" mount "$IMG" "$WORK/missing"
contains "$WORK/err" "not a directory"
expect 2 "$POISE" mount "$IMG" "$MNT" -o bogus
contains "$WORK/err" "unknown option 'bogus'"
expect 2 "$POISE" mount "$IMG" "$MNT" -o cache=-1
expect 8 "$POISE" umount "$WORK"
contains "$WORK/err" "not a poise mount"
expect 3 "$POISE" umount "$WORK/no-such-dir"
contains "$WORK/err" "no such file or directory"
expect 2 "$POISE" serve "$IMG" -o ro

# --- real programs. Names and attributes are cached for an hour: whatever the
# kernel must not keep (a failed page, a removed device) poise drops itself.
mount_img -o cache=3600
mount | grep -q "^$IMG on $MNT type fuse.poise" && ok || bad "mount(8) must show the image as the source"
expect 9 "$POISE" mount "$IMG" "$WORK"   # already served
expect 9 "$POISE" mkfs "$IMG" --size 64M
cp -a "$SRC" "$MNT/cp" && ok || bad "cp -a onto the mount failed"
same_files "$SRC" "$MNT/cp"
[ "$(stat -c %h "$MNT/cp/bin/r1")" = 2 ] && ok || bad "cp -a must keep the hard link (nlink $(stat -c %h "$MNT/cp/bin/r1"))"
[ "$(stat -c %i "$MNT/cp/bin/r1")" = "$(stat -c %i "$MNT/cp/bin/deeper/still/r1-link")" ] && ok || bad "hard link: different inodes"
mkdir "$MNT/untar"
tar --format=posix -C "$SRC" -cf - . | tar -C "$MNT/untar" -xf - && ok || bad "tar -x onto the mount failed"
same_files "$SRC" "$MNT/untar"
mkdir "$WORK/back"
tar --format=posix -C "$MNT/untar" -cf - . | tar -C "$WORK/back" -xf - && ok || bad "tar -c from the mount failed"
same_files "$SRC" "$WORK/back"
rsync -aH "$SRC/" "$MNT/rsync/" && ok || bad "rsync -aH failed"
same_files "$SRC" "$MNT/rsync"
rsync -aH --stats "$SRC/" "$MNT/rsync/" >"$WORK/rsync2"
contains "$WORK/rsync2" "Number of regular files transferred: 0"

# --- special files: mkfifo, mknod and bind(2) through the kernel's own calls.
# poise keeps their type, mode and device number; the kernel gives them their
# meaning (a FIFO carries data between processes without poise). The mount is
# nodev by default: its device nodes cannot be opened until -o dev.
mkdir "$MNT/special"
mkfifo -m 0640 "$MNT/special/fifo" && ok || bad "mkfifo on the mount failed"
mknod -m 0666 "$MNT/special/null" c 1 3 && ok || bad "mknod c 1 3 on the mount failed"
mknod -m 0600 "$MNT/special/disk" b 259 70000 && ok || bad "mknod b 259 70000 on the mount failed"
$PY -c "import socket; socket.socket(socket.AF_UNIX).bind('$MNT/special/sock')" && ok || bad "bind of a Unix socket failed"
special_types() {  # special_types DIR: name, type, mode, major, minor of each entry
  (cd "$1" && for f in fifo null disk sock; do [ -e "$f" ] && stat -c '%n %F %a %t %T' "$f"; done)
}
special_types "$MNT/special" >"$WORK/special.types"
printf '%s\n' "fifo fifo 640 0 0" "null character special file 666 1 3" "disk block special file 600 103 11170" \
  "sock socket 755 0 0" >"$WORK/special.want"
sed -i "s/^sock socket [0-7]* /sock socket 755 /" "$WORK/special.types"  # bind's mode is the umask's
if cmp -s "$WORK/special.types" "$WORK/special.want"; then ok; else
  bad "special files: $(diff "$WORK/special.want" "$WORK/special.types" | head -6)"
fi
(echo "through the fifo" >"$MNT/special/fifo") &
read -r line <"$MNT/special/fifo"
wait
[ "$line" = "through the fifo" ] && ok || bad "a FIFO on the mount must carry data between processes: '$line'"
if head -c 1 "$MNT/special/null" 2>"$WORK/err"; then bad "a device node must not open on a nodev mount"; else
  contains "$WORK/err" "Permission denied"
fi
expect 0 "$POISE" ls "$IMG" /special -l
contains "$WORK/out" "prw-r-----"
contains "$WORK/out" "crw-rw-rw-"
contains "$WORK/out" "259, 70000"
expect 0 "$POISE" stat "$IMG" /special/null --json
contains "$WORK/out" '"type": "char_device"'
contains "$WORK/out" '"rdev_major": 1'
expect 8 "$POISE" cat "$IMG" /special/fifo
contains "$WORK/err" "special file"
mkdir "$WORK/special-back"
tar -C "$MNT/special" -cf - fifo null disk | tar -C "$WORK/special-back" -xf - && ok || bad "tar of special files failed"
rsync -a "$WORK/special-back/" "$MNT/special-rsync/" && ok || bad "rsync -a of special files failed"
special_types "$MNT/special-rsync" >"$WORK/special.rsync"
grep -v '^sock' "$WORK/special.want" | cmp -s - "$WORK/special.rsync" && ok ||
  bad "tar and rsync must keep the special files: $(cat "$WORK/special.rsync")"
umount_img
mount_img -o dev
special_types "$MNT/special" | sed "s/^sock socket [0-7]* /sock socket 755 /" | cmp -s - "$WORK/special.want" && ok ||
  bad "special files after a remount: $(special_types "$MNT/special")"
head -c 1 "$MNT/special/null" >/dev/null && ok || bad "with -o dev a device node opens (here /dev/null's 1,3)"
umount_img
mount_img -o cache=3600
check_clean

# --- O_TMPFILE: an unnamed file, in no directory until linkat(2) names it;
# with O_EXCL never; closed unnamed, or left by a killed process, it is freed.
mkdir "$MNT/tmpdir"
cat >"$WORK/tmpfile.py" <<'PYEOF'
import ctypes, os, sys, time
d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
def link_fd(fd, path):  # linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, path, AT_SYMLINK_FOLLOW)
    if libc.linkat(-100, f"/proc/self/fd/{fd}".encode(), -100, path.encode(), 0x400) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
if len(sys.argv) > 2:  # hold one open, written, until killed
    fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)
    os.write(fd, b"y" * 2000000)
    open(sys.argv[2], "w").close()
    time.sleep(60)
fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o640)
os.write(fd, b"unnamed bytes\n")
st = os.fstat(fd)
print("open nlink", st.st_nlink, "mode", oct(st.st_mode & 0o7777), "listed", sorted(os.listdir(d)))
link_fd(fd, d + "/named")
print("linked", open(d + "/named").read().strip(), "nlink", os.fstat(fd).st_nlink)
os.close(fd)
fd = os.open(d, os.O_TMPFILE | os.O_RDWR | os.O_EXCL, 0o600)
os.write(fd, b"x" * 2000000)
try:
    link_fd(fd, d + "/excl")
    print("excl linked")
except OSError as e:
    print("excl errno", e.errno)
os.close(fd)
PYEOF
$PY "$WORK/tmpfile.py" "$MNT/tmpdir" >"$WORK/tmpfile.out" 2>&1
[ "$(cat "$WORK/tmpfile.out")" = "open nlink 0 mode 0o640 listed []
linked unnamed bytes nlink 1
excl errno 2" ] && ok || bad "O_TMPFILE through the mount: $(cat "$WORK/tmpfile.out")"
[ "$(ls "$MNT/tmpdir")" = named ] && ok || bad "only the linked file may have a name: $(ls "$MNT/tmpdir")"
expect 0 "$POISE" cat "$IMG" /tmpdir/named
contains "$WORK/out" "unnamed bytes"
used_tmp=$(used_bytes)
$PY "$WORK/tmpfile.py" "$MNT/tmpdir" "$WORK/tmpfile.held" >/dev/null 2>&1 &
HOLDER=$!
for _ in $(seq 100); do [ -e "$WORK/tmpfile.held" ] && break; sleep 0.05; done
held_tmp=$(used_bytes)
[ "$held_tmp" -ge $((used_tmp + 2000000)) ] && ok || bad "an open unnamed file's 2 MB are not in use ($used_tmp -> $held_tmp)"
kill -9 "$HOLDER"; wait "$HOLDER" 2>/dev/null
back_to_before() { [ "$(used_bytes)" -le $((used_tmp + 8192)) ]; }
eventually "a killed process's unnamed file must be freed ($used_tmp bytes were in use before it)" back_to_before
check_clean
# --- extended attributes and POSIX ACLs: setfattr/getfattr, setfacl/getfacl,
# the umask left to poise and default ACLs inherited, rsync -aHAX twice
X=$MNT/xsrc
mkdir -p "$X/dir/sub" && echo data >"$X/dir/file" && ln "$X/dir/file" "$X/dir/hard" && ln -s file "$X/dir/link"
# (rsync leaves a link's time alone when it is within the same second)
touch -h -d '2020-01-01 00:00:00.123456789' "$X/dir/link"
setfattr -n user.color -v blue "$X/dir/file" && ok || bad "setfattr on the mount failed"
setfattr -n user.bin -v 0x00ff10 "$X/dir/file" && ok || bad "setfattr of a binary value failed"
setfattr -n trusted.t -v root-only "$X/dir" && ok || bad "setfattr of a trusted. attribute failed"
BIG=$(head -c 3072 /dev/zero | tr '\0' z)
setfattr -n user.big -v "$BIG" "$X/dir/sub" && ok || bad "setfattr of a 3 KiB value failed"
[ "$(getfattr --only-values -n user.color "$X/dir/file")" = blue ] && ok || bad "getfattr user.color"
getfattr -e hex -n user.bin "$X/dir/file" >"$WORK/xattr.hex" 2>&1
contains "$WORK/xattr.hex" "user.bin=0x00ff10"
[ "$(getfattr --only-values -n user.big "$X/dir/sub")" = "$BIG" ] && ok || bad "getfattr of the 3 KiB value"
setfattr -n user.toolong -v "${BIG}z" "$X/dir/sub" 2>"$WORK/xattr.err" && bad "a value over 3 KiB must be refused" || ok
contains "$WORK/xattr.err" "Argument list too long"
setfattr -n os2.name -v 1 "$X/dir/file" 2>"$WORK/xattr.err" && bad "an unknown namespace must be refused" || ok
contains "$WORK/xattr.err" "Operation not supported"
setfattr -x user.none "$X/dir/file" 2>"$WORK/xattr.err" && bad "removing a missing attribute must fail" || ok
contains "$WORK/xattr.err" "No such attribute"
$PY - "$X/dir/file" <<'PYEOF' && ok || bad "XATTR_CREATE and XATTR_REPLACE through the mount"
import errno, os, sys
f = sys.argv[1]
try:
    os.setxattr(f, "user.color", b"red", os.XATTR_CREATE)
    sys.exit("XATTR_CREATE over an existing attribute succeeded")
except OSError as e:
    assert e.errno == errno.EEXIST, e
try:
    os.setxattr(f, "user.new", b"x", os.XATTR_REPLACE)
    sys.exit("XATTR_REPLACE of a missing attribute succeeded")
except OSError as e:
    assert e.errno == errno.ENODATA, e
os.setxattr(f, "user.color", b"green", os.XATTR_REPLACE)
assert os.getxattr(f, "user.color") == b"green"
os.setxattr(f, "user.color", b"blue")
assert sorted(os.listxattr(f)) == ["user.bin", "user.color"], os.listxattr(f)
PYEOF
setfacl -m u:65534:rw,g:65534:r "$X/dir/file" && ok || bad "setfacl on the mount failed"
getfacl -cpn "$X/dir/file" >"$WORK/acl" 2>&1
contains "$WORK/acl" "user:65534:rw-"
contains "$WORK/acl" "mask::rw-"
[ "$(stat -c %a "$X/dir/file")" = 664 ] && ok || bad "the mask is the group bits: mode $(stat -c %a "$X/dir/file")"
chmod 640 "$X/dir/file"
getfacl -cpn "$X/dir/file" >"$WORK/acl" 2>&1
contains "$WORK/acl" "mask::r--"
contains "$WORK/acl" "user:65534:rw-"
setfacl -d -m u:65534:rwx "$X/dir" && ok || bad "setfacl -d on the mount failed"
(umask 077 && touch "$X/dir/inherits" && mkdir "$X/dir/subdir" && touch "$X/masked")
[ "$(stat -c %a "$X/masked")" = 600 ] && ok || bad "the umask applies without a default ACL: $(stat -c %a "$X/masked")"
[ "$(stat -c %a "$X/dir/inherits")" = 664 ] && ok || bad "a default ACL replaces the umask: $(stat -c %a "$X/dir/inherits")"
getfacl -cpn "$X/dir/inherits" >"$WORK/acl" 2>&1
contains "$WORK/acl" "user:65534:rwx	#effective:rw-"
getfacl -cpn "$X/dir/subdir" >"$WORK/acl" 2>&1
contains "$WORK/acl" "default:user:65534:rwx"
xdump() {  # xdump DIR: every attribute (all namespaces, ACLs included) and ACL under DIR
  (cd "$1" && getfattr -R -P -d -m - -e hex . 2>/dev/null && getfacl -R -P -p . 2>/dev/null)
}
xdump "$X" >"$WORK/x.before"
contains "$WORK/x.before" "trusted.t="
rsync -aHAX "$X/" "$MNT/xcopy/" && ok || bad "rsync -aHAX failed"
xdump "$MNT/xcopy" >"$WORK/x.copy"
cmp -s "$WORK/x.before" "$WORK/x.copy" && ok || bad "rsync -aHAX lost attributes: $(diff "$WORK/x.before" "$WORK/x.copy" | head -6)"
same_files "$X" "$MNT/xcopy"
rsync -aHAX --stats "$X/" "$MNT/xcopy/" >"$WORK/rsync2"
contains "$WORK/rsync2" "Number of regular files transferred: 0"
# git: init, add, commit, clone, fsck, all on the mount
(
  set -e
  cd "$MNT" && git init -q repo && cp -a "$SRC/linux" repo/ && cd repo
  git add -A && git -c user.email=t@example.org -c user.name=t commit -qm import
  cd .. && git clone -q repo clone && cd clone && git fsck --strict --no-progress
) >"$WORK/git.out" 2>&1 && ok || bad "git on the mount failed: $(tail -3 "$WORK/git.out")"
if diff -r "$SRC/linux" "$MNT/clone/linux" >/dev/null; then ok; else bad "git clone on the mount differs from the source"; fi
# sqlite3 in both journal modes, and a writer killed with -9 in the middle of a transaction
for mode in DELETE WAL; do
  db="$MNT/t-$mode.db"
  sqlite3 "$db" "PRAGMA journal_mode=$mode; CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT);
    WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<20000)
    INSERT INTO t SELECT x, hex(randomblob(40)) FROM c;" >/dev/null && ok || bad "sqlite3 $mode: create failed"
  # The killed transaction deletes every row, slowly; none of it may survive.
  sqlite3 "$db" "BEGIN; DELETE FROM t WHERE a > 100;
    WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<30000000) SELECT count(*) FROM c;
    COMMIT;" >/dev/null 2>&1 &
  victim=$!
  sleep 0.7
  kill -9 "$victim"
  wait "$victim" 2>/dev/null
  sqlite3 "$db" "PRAGMA integrity_check; SELECT count(*) FROM t;" >"$WORK/sql.out" 2>&1
  [ "$(tr '\n' ' ' <"$WORK/sql.out")" = "ok 20000 " ] && ok || bad "sqlite3 $mode after a killed writer: $(cat "$WORK/sql.out")"
done
# What the mount shows is what the image holds (read through the server).
expect 0 "$POISE" cat "$IMG" /cp/bin/r5
cmp -s "$WORK/out" "$SRC/bin/r5" && ok || bad "poise cat through the server differs from what was written through the mount"
# touch (UTIME_NOW), mv -n (RENAME_NOREPLACE), a punched hole, and cp inside
# the mount, which reaches copy_file_range: the copy shares the blocks.
touch -d @5 "$MNT/t" && touch "$MNT/t"
[ "$(stat -c %Y "$MNT/t")" -gt 5 ] && ok || bad "touch must set the time to now: $(stat -c %Y "$MNT/t")"
echo x >"$MNT/mv-a" && echo y >"$MNT/mv-b" && mv -n "$MNT/mv-a" "$MNT/mv-b"
[ "$(cat "$MNT/mv-b")" = y ] && [ -e "$MNT/mv-a" ] && ok || bad "mv -n must replace nothing"
head -c 20000 /dev/urandom >"$WORK/holey" && cp "$WORK/holey" "$MNT/holey" && fallocate -p -o 4096 -l 8192 "$MNT/holey"
$PY -c "
d=open('$WORK/holey','rb').read(); m=open('$MNT/holey','rb').read()
assert m == d[:4096] + bytes(8192) + d[12288:], 'punched hole'" && ok || bad "fallocate -p through the mount"
shared_blocks() { "$POISE" check "$IMG" | sed -n 's/.*(\([0-9]*\) shared).*/\1/p'; }
before=$(shared_blocks)
cp "$MNT/cp/bin/r5" "$MNT/r5-copy"
cmp -s "$MNT/r5-copy" "$SRC/bin/r5" && ok || bad "cp inside the mount"
after=$(shared_blocks)
[ $((after - before)) -ge 86 ] && ok || bad "cp inside the mount must share its 86 blocks (copy_file_range as a clone): shared $before -> $after"
# A clone of a source's partial last block must not land inside a longer
# destination: the destination's bytes after the range stay.
$PY - "$MNT/cfr-a" "$MNT/cfr-b" <<'PYEOF' && ok || bad "copy_file_range of a file's tail into a longer file changed bytes after the range"
import os, sys
a, b = sys.argv[1:3]
open(a, "wb").write(b"a" * 5000)
open(b, "wb").write(b"b" * 12000)
fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_WRONLY)
n = os.copy_file_range(fa, fb, 5000, 0, 0)
os.close(fa); os.close(fb)
assert n == 5000, n
assert open(b, "rb").read() == b"a" * 5000 + b"b" * 7000
PYEOF
# A set-group-ID directory gives its group (and its bit, to directories).
mkdir "$MNT/sgid" && chgrp 100 "$MNT/sgid" && chmod 2775 "$MNT/sgid" && mkdir "$MNT/sgid/d" && touch "$MNT/sgid/f"
[ "$(stat -c '%a %g' "$MNT/sgid/d") $(stat -c '%a %g' "$MNT/sgid/f")" = "2755 100 644 100" ] && ok ||
  bad "set-group-ID directory: $(stat -c '%n %a %g' "$MNT/sgid/d" "$MNT/sgid/f" | tr '\n' ' ')"
# poise ls -l shows the set-ID and sticky bits as ls(1) does (chmod keeps a
# directory's set-group-ID bit, inherited here).
touch "$MNT/sgid/suid" "$MNT/sgid/suid-noexec" && chmod 4755 "$MNT/sgid/suid" && chmod 4644 "$MNT/sgid/suid-noexec" &&
  mkdir "$MNT/sgid/sticky" "$MNT/sgid/sticky-noexec" && chmod 1777 "$MNT/sgid/sticky" && chmod 1770 "$MNT/sgid/sticky-noexec"
expect 0 "$POISE" ls "$IMG" /sgid -l
for want in "drwxr-sr-x .* d/" "-rwsr-xr-x .* suid$" "-rwSr--r-- .* suid-noexec$" "drwxrwsrwt .* sticky/" "drwxrws--T .* sticky-noexec/"; do
  grep -q -- "^$want" "$WORK/out" && ok || bad "ls -l must show $want: $(cat "$WORK/out")"
done
expect 0 "$POISE" ls "$IMG" / -l
grep -q -- "^drwxrwsr-x .* sgid/" "$WORK/out" && ok || bad "ls -l must show the set-group-ID directory: $(cat "$WORK/out")"
# Symbolic links made on the mount: readlink, lstat, following, removal.
ln -s ../cp/bin/r5 "$MNT/sgid/to-r5" && ln -s nowhere "$MNT/dangling"
[ "$(readlink "$MNT/sgid/to-r5")" = ../cp/bin/r5 ] && cmp -s "$MNT/sgid/to-r5" "$SRC/bin/r5" && ok ||
  bad "a symbolic link on the mount: readlink $(readlink "$MNT/sgid/to-r5")"
[ "$(stat -c '%F %s' "$MNT/dangling")" = "symbolic link 7" ] && [ ! -e "$MNT/dangling" ] && ok ||
  bad "lstat of a dangling link: $(stat -c '%F %s' "$MNT/dangling")"
rm "$MNT/dangling" && [ ! -L "$MNT/dangling" ] && ok || bad "rm of a symbolic link"
# RENAME_EXCHANGE across directories (a directory and a file trade places:
# both parents' link counts change), SEEK_DATA/SEEK_HOLE, zero-range, locks.
mkdir -p "$MNT/xa/sub" "$MNT/xb" && echo file >"$MNT/xb/f"
$PY - "$MNT" <<'PYEOF' && ok || bad "renameat2(RENAME_EXCHANGE), SEEK_DATA/SEEK_HOLE or fallocate zero-range through the mount"
import ctypes, os, sys
m = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
assert libc.renameat2(-100, f"{m}/xa/sub".encode(), -100, f"{m}/xb/f".encode(), 2) == 0, os.strerror(ctypes.get_errno())
assert open(f"{m}/xa/sub").read() == "file\n" and os.path.isdir(f"{m}/xb/f")
assert (os.stat(f"{m}/xa").st_nlink, os.stat(f"{m}/xb").st_nlink) == (2, 3)
assert libc.renameat2(-100, f"{m}/xa/sub".encode(), -100, f"{m}/xa/none".encode(), 2) != 0 and ctypes.get_errno() == 2
fd = os.open(f"{m}/seek", os.O_RDWR | os.O_CREAT)
os.pwrite(fd, b"d" * 4096, 3 * 4096)
os.ftruncate(fd, 10 * 4096)
assert (os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 0, os.SEEK_HOLE)) == (3 * 4096, 0)
assert os.lseek(fd, 3 * 4096 + 5, os.SEEK_HOLE) == 4 * 4096
try:
    os.lseek(fd, 4 * 4096, os.SEEK_DATA)
    raise AssertionError("SEEK_DATA past the last data must fail")
except OSError as e:
    assert e.errno == 6, e  # ENXIO
os.pwrite(fd, b"z" * 10000, 0)
os.posix_fallocate(fd, 0, 1)  # (allocates nothing new)
assert libc.fallocate(fd, 0x10, ctypes.c_long(100), ctypes.c_long(5000)) == 0, os.strerror(ctypes.get_errno())
data = os.pread(fd, 10000, 0)
assert data == b"z" * 100 + bytes(5000) + b"z" * 4900, "zero-range"
os.close(fd)
PYEOF
# Locks are the kernel's own (the mount takes none itself): a second process
# sees the first one's flock and POSIX lock.
exec 7>"$MNT/lockfile"
flock -x 7
flock -n -E 75 -x "$MNT/lockfile" true
[ $? -eq 75 ] && ok || bad "flock: a second process must find the lock held (exit 75)"
exec 7>&-
flock -n -x "$MNT/lockfile" true && ok || bad "flock: the lock stayed after its holder closed it"
$PY - "$MNT/lockfile" <<'PYEOF' && ok || bad "POSIX record locks through the mount"
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
pid = os.fork()
if pid == 0:
    f2 = os.open(sys.argv[1], os.O_RDWR)
    try:
        fcntl.lockf(f2, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
        os._exit(1)  # got a lock the parent holds
    except OSError:
        pass
    fcntl.lockf(f2, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 20)  # another range is free
    os._exit(0)
assert os.waitpid(pid, 0)[1] == 0
PYEOF
df -B4096 "$MNT" | tail -1 | awk '{exit !($2 == 65536)}' && ok || bad "statfs: $(df -B4096 "$MNT" | tail -1)"
# Coherence with changes by another path (the CLI, through the server's socket):
# the kernel caches pages across opens, names and attributes for an hour here,
# so only poise's invalidations can make a held descriptor or a path see them.
# Invalidations are sent asynchronously: each check waits up to 2 s.
printf 'first version, 32 bytes long...\n' >"$MNT/coh" && printf 'other' >"$MNT/coh-src"
exec 8<"$MNT/coh"
[ "$(cat "$MNT/coh")" = "first version, 32 bytes long..." ] && ok || bad "coherence: first read"
expect 0 "$POISE" truncate "$IMG" /coh 5
eventually "a truncate through the CLI must reach a descriptor held open on the mount" \
  $PY -c "import os; assert os.pread(8, 100, 0) == b'first'"
expect 0 "$POISE" reflink "$IMG" /coh-src /coh
eventually "a reflink through the CLI must replace what the held descriptor reads" \
  $PY -c "import os; assert os.pread(8, 100, 0) == b'other'"
exec 8<&-
stat "$MNT/coh-src" >/dev/null && expect 0 "$POISE" rm "$IMG" /coh-src
eventually "a name removed through the CLI must go from the mount" test ! -e "$MNT/coh-src"
echo "new" | "$POISE" put "$IMG" - /coh >"$WORK/out" 2>&1
eventually "a file replaced through the CLI must read as the new one through its path" \
  $PY -c "assert open('$MNT/coh').read() == 'new\n'"
# That read reached poise, and the access time was not later than the
# modification time: relatime makes it now.
atime_after_mtime() {
  "$POISE" stat "$IMG" /coh --json >"$WORK/coh.json" &&
    $PY -c "import json; s = json.load(open('$WORK/coh.json')); assert s['atime_ns'] > s['mtime_ns'], s"
}
eventually "a read through the mount must update the access time (relatime)" atime_after_mtime
# O_APPEND through a descriptor held while another path changes the file's size:
# the bytes go at the real end, never over the file's data.
exec 8>>"$MNT/app"
printf '%0100d' 0 >&8
head -c 20000 /dev/zero | tr '\0' S | "$POISE" put "$IMG" - /app-src
expect 0 "$POISE" reflink "$IMG" /app-src /app
printf 'XXXXX' >&8
exec 8>&-
expect 0 "$POISE" cat "$IMG" /app
[ "$(stat -c %s "$WORK/out")" = 20005 ] && [ "$(head -c 20000 "$WORK/out" | tr -d S)" = "" ] &&
  [ "$(tail -c 5 "$WORK/out")" = XXXXX ] && ok ||
  bad "an append after another path grew the file must land at its end: $(stat -c %s "$WORK/out") bytes, $(head -c 110 "$WORK/out" | tail -c 14)"
eventually "the mount must show the append at the real end" \
  $PY -c "d = open('$MNT/app', 'rb').read(); assert len(d) == 20005 and d.endswith(b'SXXXXX'), len(d)"
check_clean

# --- the model test: random operations on the mount and on tmpfs, trees compared after every step
mkdir -p "$MNT/model" "$WORK/model-ref"
if $PY "$HERE/fuse_model.py" "$MNT/model" "$WORK/model-ref" --steps 400 >"$WORK/model.out" 2>&1; then ok; else
  bad "model test: $(cat "$WORK/model.out")"
fi
head -1 "$WORK/model.out"
check_clean

# --- fio with crc32c verification (two jobs each, through read/write and
# through a shared writable mapping), then stress-ng's filesystem stressors for
# a bounded time; the image checks clean after each.
mkdir "$MNT/fio"
for engine in psync mmap; do
  if fio --name="$engine" --directory="$MNT/fio" --ioengine="$engine" --rw=randwrite --bs=4k --size=24m \
      --numjobs=2 --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --group_reporting \
      >"$WORK/fio.out" 2>&1 &&
      grep -q "err= 0" "$WORK/fio.out" && ! grep -qi "verify.*fail\|bad magic\|crc32c.*wanted" "$WORK/fio.out"; then
    ok
  else
    bad "fio $engine with verify=crc32c: $(grep -i 'err=\|verify\|error' "$WORK/fio.out" | head -4)"
  fi
done
rm -rf "$MNT/fio"
check_clean
mkdir "$MNT/stress"
if (cd "$MNT/stress" && stress-ng --temp-path . --timeout 3s --verify --dentry 1 --dir 1 --fallocate 1 --flock 1 \
    --fstat 1 --hdd 1 --link 1 --lockf 1 --open 1 --rename 1 --seek 1 --symlink 1 --sync-file 1 --utime 1 \
    --readahead 1 --mmap 1 >"$WORK/stress.out" 2>&1) && grep -q "successful run completed" "$WORK/stress.out"; then
  ok
else
  bad "stress-ng on the mount: $(grep -i 'fail\|error' "$WORK/stress.out" | head -4)"
fi
[ -z "$(ls -A "$MNT/stress")" ] && ok || bad "stress-ng left files behind: $(ls -A "$MNT/stress" | head -3)"
check_clean

# --- the writeback cache (-o writeback): the kernel keeps written pages and
# sends them later, in bigger requests. Programs see the same; after fsync (or
# the unmount) poise holds every byte.
umount_img
mount_img -o writeback,cache=3600
cp -a "$SRC" "$MNT/wb" && ok || bad "cp -a onto a writeback mount failed"
same_files "$SRC" "$MNT/wb"
printf 'one\n' >>"$MNT/wb/app"
printf 'two\n' >>"$MNT/wb/app"
[ "$(cat "$MNT/wb/app")" = "$(printf 'one\ntwo')" ] && ok || bad "appends under writeback: $(cat "$MNT/wb/app")"
head -c 1228800 /dev/urandom >"$WORK/wb.bin"
dd if="$WORK/wb.bin" of="$MNT/wb/small-writes" bs=100 conv=fsync 2>/dev/null && ok || bad "100-byte writes failed"
cmp -s "$WORK/wb.bin" "$MNT/wb/small-writes" && ok || bad "100-byte writes under writeback differ"
expect 0 "$POISE" cat "$IMG" /wb/small-writes  # fsync'd: poise has it, through its own path
cmp -s "$WORK/out" "$WORK/wb.bin" && ok || bad "after fsync poise must hold the bytes written under writeback"
if fio --name=wb --directory="$MNT/wb" --ioengine=psync --rw=randwrite --bs=4k --size=16m --numjobs=2 \
    --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --group_reporting >"$WORK/fio.out" 2>&1 &&
    grep -q "err= 0" "$WORK/fio.out"; then ok; else bad "fio under writeback: $(grep -i 'err=\|verify' "$WORK/fio.out" | head -3)"; fi
# The kernel keeps its own size of every file it knows under writeback: other
# paths may not change such a file's data or size (before, a CLI reflink over
# a file the mount knew left the kernel's old size, and an append landed in
# the middle of the new data).
printf 'hello world\n' >"$MNT/wb/ap"
cat "$MNT/wb/ap" >/dev/null
expect 9 "$POISE" reflink "$IMG" /wb/small-writes /wb/ap
contains "$WORK/err" "-o writeback"
expect 9 "$POISE" truncate "$IMG" /wb/ap 3
echo APPENDED >>"$MNT/wb/ap"
[ "$(cat "$MNT/wb/ap")" = "$(printf 'hello world\nAPPENDED')" ] && ok || bad "append under writeback: $(cat "$MNT/wb/ap")"
expect 0 "$POISE" put "$IMG" "$WORK/wb.bin" /wb/ap  # a new file under the name: the kernel looks it up anew
eventually "a file replaced through the CLI shows under writeback" cmp -s "$MNT/wb/ap" "$WORK/wb.bin"
echo MORE >>"$MNT/wb/ap"
expect 0 "$POISE" cat "$IMG" /wb/ap --offset 1228800
[ "$(cat "$WORK/out")" = "" ] || [ "$(cat "$WORK/out")" = "MORE" ] && ok || bad "an append after the replace: $(head -c 40 "$WORK/out")"
mkfifo "$MNT/wb/held-fifo"
exec 9<>"$MNT/wb/held-fifo"
rm "$MNT/wb/held-fifo"
echo through >&9
read -r line <&9
[ "$line" = through ] && ok || bad "an unlinked FIFO still open must carry data"
stat -L /proc/self/fd/9 >/dev/null 2>&1 && ok || bad "fstat of an unlinked FIFO still open failed (the inode was freed under the kernel)"
exec 9>&-
printf 'unsynced' >"$MNT/wb/late"
umount_img  # the unmount writes back what the kernel kept
expect 0 "$POISE" cat "$IMG" /wb/late
contains "$WORK/out" "unsynced"
mount_img -o cache=3600
check_clean

# --- memory failure under a file that one process holds open, has read and maps.
# Two outcomes: where the kernel holds a copy of the lost page that poise can
# vouch for (the file was written through the mount), the page is restored
# from it and nothing is lost; where it does not (the file came through the
# CLI, and the process never read that page), the page is lost: EIO, SIGBUS.
head -c 12288 /dev/urandom >"$WORK/three"
cp "$WORK/three" "$MNT/three"
expect 0 "$POISE" put "$IMG" "$WORK/three" /unc
device_offset_of() {  # device_offset_of PATH: where the file's first block lives
  "$POISE" fsmap "$IMG" --json >"$WORK/fsmap.json"
  $PY -c "import json; print([r for r in json.load(open('$WORK/fsmap.json')) if r.get('path')=='$1' and r['file_offset']==0][0]['device_offset'])"
}
cat >"$WORK/hold.py" <<'EOF'
import mmap, os, sys, time
path, go, out, local = sys.argv[1:5]
data = open(local, "rb").read()
fd = os.open(path, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead: only the pages read are cached
m = mmap.mmap(fd, 12288, prot=mmap.PROT_READ)
m.madvise(mmap.MADV_RANDOM)
assert os.pread(fd, 4096, 0) == data[:4096] and os.pread(fd, 4096, 8192) == data[8192:]
assert m[0:4] == data[0:4]
open(out, "w").write("ready\n")
while not os.path.exists(go):
    time.sleep(0.01)
res = []
for blk in range(3):
    try:
        res.append("ok" if os.pread(fd, 4096, blk * 4096) == data[blk * 4096:(blk + 1) * 4096] else "wrong")
    except OSError as e:
        res.append("errno%d" % e.errno)
open(out, "a").write(" ".join(res) + "\n")
open(out, "a").write("map0-ok\n" if m[0:16] == data[0:16] else "map0-wrong\n")
m[4096]  # the lost page, mapped: SIGBUS
open(out, "a").write("read the lost mapped page\n")
EOF
echo "(a Bus error reported below is expected: the holder touches the lost mapped page)"
# start_holder FILE: hold.py reads and maps FILE, then waits; finish_holder
# lets it look again, and leaves its exit code in $code.
start_holder() {
  rm -f "$WORK/go" "$WORK/held"
  $PY "$WORK/hold.py" "$1" "$WORK/go" "$WORK/held" "$WORK/three" &
  HOLDER=$!
  for _ in $(seq 200); do grep -q ready "$WORK/held" 2>/dev/null && break; sleep 0.05; done
}
finish_holder() {
  touch "$WORK/go"
  wait "$HOLDER"
  code=$?
}
# Restored: the kernel cached every page of /three as it was written.
OFF=$(device_offset_of /three)
start_holder "$MNT/three"
expect 0 "$POISE" inject-poison "$IMG" --offset $((OFF + 4096)) --length 64
contains "$WORK/serve.log" "poisoned device bytes $((OFF + 4096))"
eventually "the lost page must be restored from the kernel's copy" grep -q "repaired /three bytes 4096..8192" "$WORK/serve.log"
finish_holder
[ "$(sed -n 2,3p "$WORK/held" | tr '\n' ' ')" = "ok ok ok map0-ok " ] && [ "$code" -eq 0 ] && ok ||
  bad "after a restore every page must read, mapped too: $(cat "$WORK/held") (exit $code)"
expect 0 "$POISE" cat "$IMG" /three
cmp -s "$WORK/out" "$WORK/three" && ok || bad "the restored file must read whole through the socket too"
expect 0 "$POISE" badblocks "$IMG"
contains "$WORK/out" "1 range(s)"
grep -q "lost: /three" "$WORK/out" && bad "a restored file must not be listed as losing bytes: $(cat "$WORK/out")" || ok
check_clean
# Lost: nothing vouches for /unc's page 1 (never served through the mount).
OFF=$(device_offset_of /unc)
start_holder "$MNT/unc"
expect 0 "$POISE" inject-poison "$IMG" --offset $((OFF + 4096)) --length 64
contains "$WORK/serve.log" "poisoned device bytes $((OFF + 4096))"
finish_holder
[ "$(sed -n 2,3p "$WORK/held" | tr '\n' ' ')" = "ok errno5 ok map0-ok " ] && ok ||
  bad "a process holding the file open must get EIO for exactly the lost page (its cached copy dropped): $(cat "$WORK/held")"
[ "$code" -eq 135 ] && ok || bad "the lost mapped page must raise SIGBUS (exit 135), got $code: $(cat "$WORK/held")"
# A new reader: the first page reads, the second fails, the third reads.
dd if="$MNT/unc" of="$WORK/dd.out" bs=4096 2>"$WORK/dd.err"
[ "$(stat -c %s "$WORK/dd.out")" = 4096 ] && ok || bad "dd must copy exactly the page before the lost one, copied $(stat -c %s "$WORK/dd.out")"
contains "$WORK/dd.err" "Input/output error"
dd if="$MNT/unc" bs=4096 skip=2 count=1 2>/dev/null | cmp -s - <(tail -c 4096 "$WORK/three") && ok || bad "the page after the lost one must read"
expect 0 "$POISE" badblocks "$IMG"
contains "$WORK/out" "lost: /unc bytes 4096..8192"
# Rewriting the lost page through the mount moves it to good memory.
dd if="$WORK/three" of="$MNT/unc" bs=4096 seek=1 skip=1 count=1 conv=notrunc 2>/dev/null
cmp -s "$MNT/unc" "$WORK/three" && ok || bad "after rewriting the lost page the file must read whole"
check_clean

# --- file handles (what an NFS export uses) survive a remount; a removed
# file's handle is stale.
cat >"$WORK/handle.py" <<'PYEOF'
import ctypes, os, pickle, sys
libc = ctypes.CDLL(None, use_errno=True)
class Handle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]
if sys.argv[1] == "save":  # save FILE... OUT
    handles = []
    for path in sys.argv[2:-1]:
        h, mount_id = Handle(), ctypes.c_int()
        h.handle_bytes = 128
        if libc.name_to_handle_at(-100, path.encode(), ctypes.byref(h), ctypes.byref(mount_id), 0) != 0:
            raise SystemExit(f"{path}: {os.strerror(ctypes.get_errno())}")
        handles.append(bytes(h))
    pickle.dump(handles, open(sys.argv[-1], "wb"))
else:  # open MOUNT IN: what each handle opens to, or its errno
    mfd = os.open(sys.argv[2], os.O_RDONLY | os.O_DIRECTORY)
    for raw in pickle.load(open(sys.argv[3], "rb")):
        fd = libc.open_by_handle_at(mfd, ctypes.byref(Handle.from_buffer_copy(raw)), os.O_RDONLY)
        if fd < 0:
            print("errno", ctypes.get_errno())
            continue
        print(os.read(fd, 100).decode(), end="")
        os.close(fd)
PYEOF
echo "kept by handle" >"$MNT/by-handle" && echo "removed" >"$MNT/gone-by-handle"
$PY "$WORK/handle.py" save "$MNT/by-handle" "$MNT/gone-by-handle" "$WORK/handles" && ok || bad "name_to_handle_at on the mount"
umount_img
mount_img -o cache=3600
rm "$MNT/gone-by-handle"
xdump "$MNT/xcopy" >"$WORK/x.after"
cmp -s "$WORK/x.before" "$WORK/x.after" && ok || bad "attributes changed across a remount: $(diff "$WORK/x.before" "$WORK/x.after" | head -6)"
$PY "$WORK/handle.py" open "$MNT" "$WORK/handles" >"$WORK/handles.out" 2>&1
[ "$(tr '\n' ' ' <"$WORK/handles.out")" = "kept by handle errno 116 " ] && ok ||
  bad "a handle must open its file after a remount, and a removed file's must be stale (ESTALE 116): $(cat "$WORK/handles.out")"

# --- pre-remove and removal: writers wait, then fail; every access fails afterwards
# A process that has read and mapped a file before the removal must not go on
# reading the kernel's cached copy of memory that is gone: with attributes
# cached for an hour, only poise's invalidation can drop that copy.
umount_img
mount_img -o cache=3600
cp "$WORK/three" "$MNT/keep"
echo before >"$MNT/frozen"
start_holder "$MNT/keep" 2>/dev/null
expect 0 "$POISE" offline "$IMG"
(echo late >"$MNT/late"; echo "writer exit $?" >"$WORK/late.out") 2>/dev/null &
WRITER=$!
sleep 0.5
[ -e "$WORK/late.out" ] && bad "a writer must wait while the device is pre-removed: $(cat "$WORK/late.out")" || ok
# An append to an existing file waits holding a page; opening and reading that
# file must not hang in the kernel beyond reach of a signal.
expect 0 "$POISE" offline "$IMG" --cancel
wait "$WRITER"
expect 0 "$POISE" offline "$IMG"
(echo more >>"$MNT/frozen") 2>/dev/null &
APPENDER=$!
sleep 0.3
cat "$MNT/frozen" >"$WORK/frozen.out" 2>/dev/null &
READER=$!
sleep 1
kill -9 "$READER" 2>/dev/null
for _ in $(seq 20); do kill -0 "$READER" 2>/dev/null || break; sleep 0.1; done
kill -0 "$READER" 2>/dev/null && bad "a reader during pre-remove is stuck in the kernel: even SIGKILL does not end it" || ok
expect 0 "$POISE" offline "$IMG" --cancel
wait "$READER" 2>/dev/null
wait "$APPENDER"
[ "$(cat "$MNT/frozen")" = "$(printf 'before\nmore')" ] && ok || bad "the append after --cancel: '$(cat "$MNT/frozen")'"
contains "$WORK/late.out" "writer exit 0"
expect 0 "$POISE" offline "$IMG"
expect 0 "$POISE" offline "$IMG" --remove
# (Before any new open of the file: an open drops the cached pages by itself.)
finish_holder 2>/dev/null
[ "$(sed -n 2p "$WORK/held")" = "errno5 errno5 errno5" ] && ok ||
  bad "after removal a process's cached pages and mappings must be gone: $(cat "$WORK/held") (exit $code)"
[ "$code" -eq 135 ] && ok || bad "a mapped page after removal must raise SIGBUS (exit 135), got $code: $(cat "$WORK/held")"
cat "$MNT/keep" >/dev/null 2>"$WORK/cat.err" && bad "a read after removal must fail" || ok
contains "$WORK/cat.err" "Input/output error"
ls "$MNT" >/dev/null 2>&1 && bad "listing after removal must fail" || ok
umount_img
expect 0 "$POISE" cat "$IMG" /late
contains "$WORK/out" "late"
expect 0 "$POISE" cat "$IMG" /keep
cmp -s "$WORK/out" "$WORK/three" && ok || bad "a file written before the removal must be intact after it"
check_clean

# --- SIGTERM while the device is pre-removed: the removal is called off, the
# waiting writer completes, and the server stops cleanly
mount_img
echo a >"$MNT/term"
expect 0 "$POISE" offline "$IMG"
(echo b >>"$MNT/term"; echo "writer exit $?" >"$WORK/term.out") 2>/dev/null &
WRITER=$!
sleep 0.3
kill -TERM "$SERVER"
for _ in $(seq 100); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
kill -0 "$SERVER" 2>/dev/null && bad "SIGTERM during pre-remove must stop the server" || ok
wait "$WRITER"
contains "$WORK/term.out" "writer exit 0"
contains "$WORK/serve.log" "unmounted cleanly"
expect 0 "$POISE" cat "$IMG" /term
[ "$(cat "$WORK/out")" = "$(printf 'a\nb')" ] && ok || bad "the write that waited must be there: '$(cat "$WORK/out")'"
check_clean

# --- a stopped server: poise umount does not hang; the mount is detached and
# the server finishes once it runs again, with nothing lost
mount_img
echo "before the stop" >"$MNT/stopped" && sync "$MNT/stopped"
kill -STOP "$SERVER"
timeout 30 "$POISE" umount "$MNT" >"$WORK/out" 2>"$WORK/err"
rc=$?
[ $rc -eq 9 ] && ok || bad "poise umount of a stopped server: exit $rc, expected 9: $(cat "$WORK/err")"
contains "$WORK/err" "is stopped"
grep -q " $MNT fuse.poise" /proc/self/mounts && bad "the mount of a stopped server must be detached" || ok
kill -CONT "$SERVER"
for _ in $(seq 200); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.05; done
kill -0 "$SERVER" 2>/dev/null && bad "the server did not finish after SIGCONT" || ok
check_clean
expect 0 "$POISE" cat "$IMG" /stopped
[ "$(cat "$WORK/out")" = "before the stop" ] && ok || bad "the file written before the stop: '$(cat "$WORK/out")'"

# --- kill -9 of the server: the mount goes away, nothing fsync'd is lost
mount_img
head -c 1000000 /dev/urandom >"$WORK/big"
cp "$WORK/big" "$MNT/synced" && sync "$MNT/synced"
# A link, and an exchange, acknowledged just before the kill (names are journaled).
ln -s synced "$MNT/synced-link" && echo one >"$MNT/x1" && echo two >"$MNT/x2"
$PY -c "import ctypes; assert ctypes.CDLL(None).renameat2(-100, b'$MNT/x1', -100, b'$MNT/x2', 2) == 0"
sleep 1000 <"$MNT/synced" &   # a program holding a file open
HOLDER=$!
# And one holding an unnamed file (O_TMPFILE) of 2 MB, fsync'd, beside one it
# fsync'd and named: the named one survives, the unnamed one's space comes back.
used_before_unnamed=$(used_bytes)
cat >"$WORK/unnamed-held.py" <<'PYEOF'
import ctypes, os, sys, time
d, ready = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
named = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o644)
os.write(named, b"named after fsync\n")
os.fsync(named)
assert libc.linkat(-100, f"/proc/self/fd/{named}".encode(), -100, (d + "/tmp-named").encode(), 0x400) == 0
unnamed = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(unnamed, b"u" * 2000000)
os.fsync(unnamed)
open(ready, "w").close()
time.sleep(1000)
PYEOF
$PY "$WORK/unnamed-held.py" "$MNT" "$WORK/unnamed-ready" &
UNNAMED_HOLDER=$!
for _ in $(seq 100); do [ -e "$WORK/unnamed-ready" ] && break; sleep 0.05; done
[ -e "$WORK/unnamed-ready" ] && ok || bad "the unnamed files were not made"
kill -9 "$SERVER"
for _ in $(seq 100); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.05; done
ls "$MNT" >/dev/null 2>"$WORK/ls.err" && bad "the mount of a killed server must fail" || ok
contains "$WORK/ls.err" "Transport endpoint is not connected"
expect 9 "$POISE" mount "$IMG" "$MNT"
contains "$WORK/err" "poise umount"
# Busy or not, a dead mount is cleared.
expect 0 "$POISE" umount "$MNT"
contains "$WORK/err" "detached"
grep -q " $MNT fuse.poise" /proc/self/mounts && bad "the dead mount must be gone" || ok
kill "$HOLDER" "$UNNAMED_HOLDER" 2>/dev/null
wait "$HOLDER" "$UNNAMED_HOLDER" 2>/dev/null
check_clean
expect 0 "$POISE" cat "$IMG" /tmp-named
contains "$WORK/out" "named after fsync"
expect 0 "$POISE" mkdir "$IMG" /after-kill   # a read-write mount frees what the dead server left unnamed
used_after_unnamed=$(used_bytes)
[ "$used_after_unnamed" -le $((used_before_unnamed + 65536)) ] && ok ||
  bad "an unnamed file open when the server was killed must be freed ($used_before_unnamed -> $used_after_unnamed bytes in use)"
check_clean
expect 0 "$POISE" cat "$IMG" /synced
cmp -s "$WORK/out" "$WORK/big" && ok || bad "an fsync'd file must survive kill -9 of the server"
expect 0 "$POISE" stat "$IMG" /synced-link --json
contains "$WORK/out" '"target": "synced"'
expect 0 "$POISE" cat "$IMG" /x1
contains "$WORK/out" "two"

# --- a hostile caller: closed standard descriptors, and an image and mount
# point whose names hold a space and a comma (mount options and
# /proc/self/mountinfo escape both)
ODD="$WORK/odd dir,x"
mkdir -p "$ODD/m n"
expect 0 "$POISE" mkfs "$ODD/a b,c.img" --size 64M
"$POISE" mount "$ODD/a b,c.img" "$ODD/m n" <&- >&- 2>&- && ok || bad "poise mount with closed standard descriptors"
echo odd >"$ODD/m n/f" && [ "$(cat "$ODD/m n/f")" = odd ] && ok || bad "writing through a mount with an odd name"
expect 0 "$POISE" umount "$ODD/m n"
grep -qF 'odd\040dir,x/m\040n ' /proc/self/mountinfo && bad "the odd-named mount must be gone" || ok
expect 0 "$POISE" check "$ODD/a b,c.img"
expect 0 "$POISE" cat "$ODD/a b,c.img" /f
contains "$WORK/out" "odd"

# --- permissions: another user, with allow_other; the kernel checks mode bits
if command -v setpriv >/dev/null; then
  mount_img -o allow_other
  chmod 0755 "$WORK" "$MNT"
  NOBODY=(setpriv --reuid=65534 --regid=65534 --clear-groups)
  echo root >"$MNT/rootfile"
  mkdir -m 0777 "$MNT/shared"
  "${NOBODY[@]}" sh -c "echo x >>'$MNT/rootfile'" 2>"$WORK/perm.err" && bad "nobody must not write root's 0644 file" || ok
  contains "$WORK/perm.err" "Permission denied"
  "${NOBODY[@]}" sh -c "echo mine >'$MNT/shared/n'" && ok || bad "nobody must create in a 0777 directory"
  [ "$(stat -c %u:%g "$MNT/shared/n")" = "65534:65534" ] && ok || bad "a file nobody creates must be nobody's: $(stat -c %u:%g "$MNT/shared/n")"
  "${NOBODY[@]}" chmod 0600 "$MNT/rootfile" 2>/dev/null && bad "nobody must not chmod root's file" || ok
  "${NOBODY[@]}" chown 65534 "$MNT/shared/n" && ok || bad "chown to oneself is allowed"
  "${NOBODY[@]}" chown 0 "$MNT/shared/n" 2>/dev/null && bad "nobody must not give a file to root" || ok
  # POSIX ACLs, enforced by the kernel from what poise keeps
  echo secret >"$MNT/aclfile" && chmod 0600 "$MNT/aclfile"
  "${NOBODY[@]}" cat "$MNT/aclfile" >/dev/null 2>&1 && bad "nobody must not read root's 0600 file" || ok
  setfacl -m u:65534:r "$MNT/aclfile"
  [ "$("${NOBODY[@]}" cat "$MNT/aclfile" 2>&1)" = secret ] && ok || bad "an ACL entry must let nobody read"
  setfacl -m m::- "$MNT/aclfile"
  "${NOBODY[@]}" cat "$MNT/aclfile" >/dev/null 2>&1 && bad "the ACL mask must limit the named entry" || ok
  # An ACL changed by another path (the CLI, through the server) reaches the
  # kernel's cached copy: u::rw-, u:65534:r--, g::---, m::r--, o::---.
  expect 0 "$POISE" xattr "$IMG" /aclfile system.posix_acl_access --set-hex \
    0x0200000001000600ffffffff02000400feff000004000000ffffffff10000400ffffffff20000000ffffffff
  eventually "an ACL set through the CLI must reach the kernel's permission checks on the mount" \
    "${NOBODY[@]}" sh -c "cat '$MNT/aclfile' >/dev/null 2>&1"
  "${NOBODY[@]}" setfattr -n user.x -v 1 "$MNT/aclfile" 2>/dev/null && bad "nobody must not set attributes of root's file" || ok
  "${NOBODY[@]}" setfattr -n trusted.x -v 1 "$MNT/shared/n" 2>/dev/null && bad "only root may set trusted. attributes" || ok
  "${NOBODY[@]}" setfattr -n user.mine -v 1 "$MNT/shared/n" && ok || bad "nobody may set attributes of its own file"
  umount_img
  mount_img -o ro
  sh -c "echo x >'$MNT/ro-write'" 2>"$WORK/ro.err" && bad "a read-only mount must refuse writes" || ok
  contains "$WORK/ro.err" "Read-only file system"
  cmp -s "$MNT/synced" "$WORK/big" && ok || bad "a read-only mount must read"
  umount_img
  check_clean
fi

finish fuse_test
