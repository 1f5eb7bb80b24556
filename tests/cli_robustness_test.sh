#!/usr/bin/env bash
# The poise command tried as a hostile user and a failing machine would: closed
# standard streams, empty and root paths, names that are not UTF-8, output that
# cannot be written, numbers that overflow, the image named as its own input or
# output, a host filesystem that fills up, a put that fails or is killed, mkfs
# over something that is not empty. Each check asserts that nothing committed
# is lost and that the error is the documented one.
# Usage: cli_robustness_test.sh PATH_TO_POISE
POISE=${1:?usage: cli_robustness_test.sh PATH_TO_POISE}
WORK_NAME=poise-robust-test
source "$(dirname "$0")/cli_lib.sh"
same() { if cmp -s "$1" "$2"; then ok; else bad "$3"; fi; }
# clean IMAGE: the checker finds nothing wrong.
clean() { if "$POISE" check "$1" >"$WORK/check" 2>&1; then ok; else bad "check $1: $(head -c 300 "$WORK/check")"; fi; }
# content IMAGE PATH LOCAL: the file in the image holds exactly LOCAL's bytes.
content() {
  if "$POISE" get "$1" "$2" "$WORK/content.out" 2>"$WORK/err" && cmp -s "$3" "$WORK/content.out"; then ok
  else bad "$2 in $1 does not hold $3's bytes: $(head -c 300 "$WORK/err")"; fi
}
is_root() { [ "$(id -u)" -eq 0 ]; }

head -c 200000 /dev/urandom >"$WORK/old"
head -c 300000 /dev/urandom >"$WORK/new"
"$POISE" mkfs "$IMG" --size 64M >/dev/null || { echo "mkfs failed" >&2; exit 1; }
"$POISE" put "$IMG" "$WORK/old" /keep >/dev/null
"$POISE" put "$IMG" "$WORK/old" /f >/dev/null

# --- 1. closed standard streams never turn into the image
cp "$IMG" "$WORK/before.img"
# Output to a closed stdout is a write error (exit 1, as GNU cat), never lost
# with exit 0; a command with nothing to write succeeds.
"$POISE" cat "$IMG" /f >&- 2>"$WORK/err"
[ $? -eq 1 ] && ok || bad "cat with stdout closed must fail (exit 1)"
contains "$WORK/err" "standard output is closed"
[ "$(wc -l <"$WORK/err")" -eq 1 ] && ok || bad "one message for one failed output, got: $(cat "$WORK/err")"
same "$IMG" "$WORK/before.img" "cat with stdout closed changed the image"
"$POISE" get "$IMG" /f - >&- 2>/dev/null
[ $? -eq 1 ] && ok || bad "get to a closed stdout must fail (exit 1)"
"$POISE" mkdir "$IMG" /made-with-stdout-closed >&-
[ $? -eq 0 ] && ok || bad "mkdir (no output) with stdout closed must succeed"
"$POISE" rm "$IMG" /made-with-stdout-closed -r >/dev/null
cp "$IMG" "$WORK/before.img"
"$POISE" ls "$IMG" /missing 2>&-
[ $? -eq 3 ] && ok || bad "ls /missing with stderr closed should exit 3"
same "$IMG" "$WORK/before.img" "an error message with stderr closed changed the image"
"$POISE" info "$IMG" >&- 2>&- <&-
[ $? -eq 1 ] && ok || bad "info with every stream closed: its output cannot be written (exit 1)"
same "$IMG" "$WORK/before.img" "info with every stream closed changed the image"
"$POISE" put "$IMG" - /keep <&- 2>"$WORK/err"
[ $? -eq 2 ] && ok || bad "put from a closed stdin must be refused (exit 2), not store an empty file"
contains "$WORK/err" "standard input is closed"
content "$IMG" /keep "$WORK/old"
# The image as a standard stream is refused like the image as LOCAL.
cp "$IMG" "$WORK/before.img"
"$POISE" get "$IMG" /keep - 1<>"$IMG" 2>/dev/null
[ $? -eq 8 ] && ok || bad "get to stdout opened on the image must be refused"
"$POISE" put "$IMG" - /x <"$IMG" 2>/dev/null
[ $? -eq 8 ] && ok || bad "put from stdin opened on the image must be refused"
same "$IMG" "$WORK/before.img" "a standard stream on the image changed it"
clean "$IMG"

# --- 2. a failed or killed put leaves the destination as it was
expect 3 "$POISE" put "$IMG" "$WORK/no-such-file" /f
expect 8 "$POISE" put "$IMG" "$WORK" /f
contains "$WORK/err" "is a directory"
head -c 80000000 /dev/zero | tr '\0' 'x' >"$WORK/too-big"
expect 6 "$POISE" put "$IMG" "$WORK/too-big" /f
content "$IMG" /f "$WORK/old"
# Killed in the middle: the new bytes are half in when the process dies.
used_before=$(used_bytes)
slow_put /f
kill -9 "$PUT_PID" 2>/dev/null
wait "$PUT_PID" 2>/dev/null
content "$IMG" /f "$WORK/old"
clean "$IMG"
# Its bytes were in an unnamed file: no name is left behind, and the next
# read-write command frees the blocks it had taken (a read-only one leaves them).
used_killed=$(used_bytes)
[ "$used_killed" -gt "$used_before" ] && ok || bad "the killed put had written nothing (the test did not catch it mid-way)"
expect 0 "$POISE" ls "$IMG" /
not_contains "$WORK/out" "poise-put"
expect 0 "$POISE" mkdir "$IMG" /after-kill
expect 0 "$POISE" rm "$IMG" /after-kill -r
used_after=$(used_bytes)
[ "$used_after" = "$used_before" ] && ok || bad "the killed put's blocks stay taken: $used_before before, $used_after after"
# A successful put replaces the whole file at once and leaves nothing hidden behind.
expect 0 "$POISE" put "$IMG" "$WORK/new" /f
content "$IMG" /f "$WORK/new"
expect 0 "$POISE" ls "$IMG" /
not_contains "$WORK/out" "poise-put"
# A name in the way of a put's hidden file never blocks it: the same process id
# (containers reuse them) finds its old name taken and picks another.
sh -c "\"$POISE\" mkdir \"$IMG\" /.poise-put-\$\$ && exec \"$POISE\" put \"$IMG\" \"$WORK/old\" /g" >/dev/null 2>"$WORK/err"
[ $? -eq 0 ] && ok || bad "a leftover hidden name blocked put: $(cat "$WORK/err")"
content "$IMG" /g "$WORK/old"
expect 0 "$POISE" ls "$IMG" /
for name in $(grep "^.poise-put-" "$WORK/out"); do "$POISE" rm "$IMG" "/$name" -r >/dev/null; done
"$POISE" rm "$IMG" /g >/dev/null
expect 0 "$POISE" ls "$IMG" /
if grep -q "poise-put" "$WORK/out"; then bad "a hidden put file is left: $(cat "$WORK/out")"; else ok; fi

# --- 3. names that are not UTF-8 are reported losslessly in JSON
weird=$(printf '/caf\xe9\xff')
expect 0 "$POISE" put "$IMG" "$WORK/old" "$weird"
expect 0 "$POISE" ls "$IMG" / --json
python3 - "$WORK/out" <<'PY' && ok || bad "ls --json of a non-UTF-8 name"
import json, sys
rows = [r for r in json.load(open(sys.argv[1])) if "name_hex" in r]
assert len(rows) == 1 and bytes.fromhex(rows[0]["name_hex"]) == b"caf\xe9\xff", rows
assert rows[0]["name"].startswith("caf")
PY
expect 0 "$POISE" stat "$IMG" "$weird" --json
python3 -c "import json; d=json.load(open('$WORK/out')); assert bytes.fromhex(d['path_hex']) == b'/caf\xe9\xff'" && ok || bad "stat --json path_hex"
expect 0 "$POISE" fsmap "$IMG" --json
python3 -c "import json; d=json.load(open('$WORK/out')); assert any(r.get('path_hex') == '2f636166e9ff' for r in d)" && ok || bad "fsmap --json path_hex"
expect 0 "$POISE" check "$IMG" --json
expect 0 "$POISE" badblocks "$IMG" --json
expect 0 "$POISE" ls "$IMG" / -l
expect 0 "$POISE" rm "$IMG" "$weird"

# --- 4. empty paths and the root
for cmd in "ls" "stat" "cat" "rm" "mkdir"; do expect 2 "$POISE" $cmd "$IMG" ""; done
expect 2 "$POISE" rm "$IMG" "" -r
expect 2 "$POISE" get "$IMG" "" "$WORK/x"
expect 2 "$POISE" put "$IMG" "$WORK/old" ""
expect 2 "$POISE" mv "$IMG" "" /x
"$POISE" mkdir "$IMG" /d >/dev/null
for root in / /. // /./ /d/.. "/d/../d/.."; do
  expect 8 "$POISE" rm "$IMG" "$root" -r
  contains "$WORK/err" "refusing to remove the root"
done
content "$IMG" /keep "$WORK/old"
# A file named with a trailing slash is not a file.
expect 8 "$POISE" cat "$IMG" /keep/
expect 8 "$POISE" rm "$IMG" /keep/
expect 8 "$POISE" rm "$IMG" /keep/..
expect 3 "$POISE" put "$IMG" "$WORK/old" /newfile/  # no directory /newfile to put into
expect 3 "$POISE" stat "$IMG" /newfile
content "$IMG" /keep "$WORK/old"
# mv can build a tree deeper than any path can name (each part is short enough):
# rm -r still removes all of it, and nothing else.
deep_a=/deep$(printf '/dddd%.0s' $(seq 700))
deep_b=/other$(printf '/eeee%.0s' $(seq 700))
expect 0 "$POISE" mkdir "$IMG" -p "$deep_a"
expect 0 "$POISE" mkdir "$IMG" -p "$deep_b"
expect 0 "$POISE" put "$IMG" "$WORK/old" "$deep_b/leaf"
expect 0 "$POISE" mv "$IMG" /other "$deep_a/other"
expect 8 "$POISE" stat "$IMG" "$deep_a/other${deep_b#/other}/leaf"  # longer than PATH_MAX: ENAMETOOLONG
contains "$WORK/err" "path longer than 4096 bytes"
expect 0 "$POISE" rm "$IMG" /deep -r
expect 3 "$POISE" stat "$IMG" /deep
expect 0 "$POISE" check "$IMG"
content "$IMG" /keep "$WORK/old"

# --- 5. read-only commands work on an image that cannot be written
if is_root; then
  mkdir -p "$WORK/ro"
  if mount --bind "$WORK" "$WORK/ro" 2>/dev/null; then
    MOUNTS+=("$WORK/ro")
    if mount -o remount,bind,ro "$WORK/ro" 2>/dev/null; then
      RO=$WORK/ro/test.img
      for c in "info $RO" "ls $RO /" "cat $RO /keep" "fsmap $RO" "check $RO" "badblocks $RO" "stat $RO /keep"; do
        expect 0 "$POISE" $c
      done
      expect 0 "$POISE" get "$RO" /keep "$WORK/ro-copy"
      same "$WORK/ro-copy" "$WORK/old" "get from a read-only image"
      expect 11 "$POISE" mkdir "$RO" /nope  # the host's read-only filesystem: permission denied, nothing written
      contains "$WORK/err" "read-only filesystem"
    else
      bad "could not remount the bind mount read-only"
    fi
    umount "$WORK/ro"
  else
    bad "could not bind-mount (needed for the read-only image test)"
  fi
else
  chmod 0444 "$IMG"
  expect 0 "$POISE" ls "$IMG" /
  expect 0 "$POISE" check "$IMG"
  chmod 0644 "$IMG"
fi

# --- 6. the image is never its own input or output
cp "$IMG" "$WORK/before.img"
expect 8 "$POISE" get "$IMG" /keep "$IMG"
ln -s "$IMG" "$WORK/link.img"
expect 8 "$POISE" get "$IMG" /keep "$WORK/link.img"
ln "$IMG" "$WORK/hard.img"
expect 8 "$POISE" get "$IMG" /keep "$WORK/hard.img"
expect 8 "$POISE" put "$IMG" "$WORK/link.img" /copy
same "$IMG" "$WORK/before.img" "naming the image as input or output changed it"
rm -f "$WORK/link.img" "$WORK/hard.img"

# --- get never empties LOCAL for a PATH it cannot read; a failed reflink leaves no DST
echo "precious" >"$WORK/precious"
expect 3 "$POISE" get "$IMG" /no-such-file "$WORK/precious"
expect 8 "$POISE" get "$IMG" /d "$WORK/precious"
[ "$(cat "$WORK/precious")" = precious ] && ok || bad "get emptied LOCAL although PATH could not be read"
# get replaces LOCAL whole or not at all: a read that fails midway (a poisoned
# block) keeps LOCAL's old content and leaves no hidden file; a symbolic link
# LOCAL stays a link and its target is replaced; a replaced file keeps its mode.
head -c 3000000 /dev/urandom >"$WORK/three"
expect 0 "$POISE" put "$IMG" "$WORK/three" /three
expect 0 "$POISE" fsmap "$IMG" --json
GOFF=$(python3 -c "
import json
r = [r for r in json.load(open('$WORK/out')) if r.get('path') == '/three' and r['file_offset'] <= 2097152 < r['file_offset'] + r['length']][0]
print(r['device_offset'] + 2097152 - r['file_offset'])")
mkdir -p "$WORK/getdir"
echo precious >"$WORK/getdir/local"
chmod 640 "$WORK/getdir/local"
ln -s local "$WORK/getdir/link"
expect 0 "$POISE" inject-poison "$IMG" --offset "$GOFF" --length 64
expect 4 "$POISE" get "$IMG" /three "$WORK/getdir/local"
[ "$(cat "$WORK/getdir/local")" = precious ] && ok || bad "a get that failed midway destroyed LOCAL"
[ "$(ls -A "$WORK/getdir" | wc -l)" -eq 2 ] && ok || bad "a failed get left files behind: $(ls -A "$WORK/getdir")"
expect 0 "$POISE" clear-poison "$IMG" --offset "$GOFF" --length 64
expect 0 "$POISE" put "$IMG" "$WORK/three" /three
expect 0 "$POISE" get "$IMG" /three "$WORK/getdir/link"
[ -L "$WORK/getdir/link" ] && ok || bad "get replaced the symbolic link instead of its target"
same "$WORK/getdir/local" "$WORK/three" "get through a symbolic link"
[ "$(stat -c %a "$WORK/getdir/local")" = 640 ] && ok || bad "get changed the mode of the file it replaced"
[ "$(ls -A "$WORK/getdir" | wc -l)" -eq 2 ] && ok || bad "a get left files behind: $(ls -A "$WORK/getdir")"
rm -rf "$WORK/getdir" "$WORK/three"
expect 0 "$POISE" rm "$IMG" /three
expect 8 "$POISE" reflink "$IMG" /d /reflink-of-a-dir
expect 3 "$POISE" stat "$IMG" /reflink-of-a-dir
# Relative paths are relative to the root, for every command.
expect 0 "$POISE" mkdir "$IMG" rel
expect 0 "$POISE" put "$IMG" "$WORK/old" rel/f
expect 0 "$POISE" mv "$IMG" rel/f rel/g
content "$IMG" /rel/g "$WORK/old"
expect 0 "$POISE" rm "$IMG" rel -r
# put -r of a tree that holds the image skips the image.
mkdir -p "$WORK/holder"
"$POISE" mkfs "$WORK/holder/inner.img" --size 24M >/dev/null
echo small >"$WORK/holder/small"
expect 0 "$POISE" put -r "$WORK/holder/inner.img" "$WORK/holder" /h
contains "$WORK/err" "it is the image itself"
expect 3 "$POISE" stat "$WORK/holder/inner.img" /h/inner.img
rm -rf "$WORK/holder"

# --- 8. output that cannot be written is an error
for c in "info $IMG" "ls $IMG /" "ls $IMG / --json" "check $IMG" "fsmap $IMG --json" "cat $IMG /keep" "stat $IMG /keep"; do
  "$POISE" $c >/dev/full 2>"$WORK/err"
  code=$?
  if [ $code -ne 0 ] && [ $code -lt 128 ] && grep -q "cannot write the output" "$WORK/err"; then ok
  else bad "$c > /dev/full exited $code: $(head -c 200 "$WORK/err")"; fi
done
"$POISE" ls "$IMG" /missing 2>/dev/full
code=$?
[ $code -eq 3 ] && ok || bad "an error report into /dev/full must keep its exit code 3, got $code"
"$POISE" rm "$IMG" / -r 2>/dev/full
[ $? -eq 8 ] && ok || bad "rm -r / with stderr full must still exit 8"
# A warning that cannot be written never stops the work.
"$POISE" put "$IMG" "$WORK/no-such" "$WORK/old" /d 2>/dev/full
[ $? -eq 3 ] && ok || bad "put with stderr full: exit code of the first failure"
content "$IMG" /d/old "$WORK/old"
# A reader that goes away: exit 1 with a message, not death by SIGPIPE.
head -c 3000000 /dev/urandom >"$WORK/big3m"
"$POISE" put "$IMG" "$WORK/big3m" /big3m >/dev/null
"$POISE" cat "$IMG" /big3m 2>"$WORK/err" | head -c 1 >/dev/null
code=${PIPESTATUS[0]}
[ $code -eq 1 ] && ok || bad "cat into a closed pipe exited $code"
contains "$WORK/err" "cannot write the output"
echo tiny | "$POISE" put "$IMG" - /tiny
expect 1 "$POISE" get "$IMG" /tiny /dev/full
contains "$WORK/err" "failed"

# --- 9. numbers are parsed strictly
expect 2 "$POISE" cat "$IMG" /keep --offset 4000 --length 18446744073709551615
expect 2 "$POISE" cat "$IMG" /keep --length -1
expect 2 "$POISE" cat "$IMG" /keep --offset 0x10
expect 2 "$POISE" cat "$IMG" /keep --offset 18446744073709551616
expect 2 "$POISE" fsmap "$IMG" --offset -1
expect 2 "$POISE" fsmap "$IMG" --offset 1 --length 18446744073709551615
expect 2 "$POISE" truncate "$IMG" /keep -5
expect 2 "$POISE" inject-poison "$IMG" --offset 0x1000 --length 64
expect 2 "$POISE" cat "$IMG" /keep --offset ""
expect 2 "$POISE" fsmap "$IMG" --offset 18446744073709551615
expect 0 "$POISE" cat "$IMG" /keep --offset 199990 --length 1000000000000000
[ "$(wc -c <"$WORK/out")" -eq 10 ] && ok || bad "cat of the last 10 bytes with a huge length"

# --- 7. a full host filesystem is an error at open, never a crash
if is_root; then
  mkdir -p "$WORK/small"
  if mount -t tmpfs -o size=40m tmpfs "$WORK/small" 2>/dev/null; then
    MOUNTS+=("$WORK/small")
    expect 6 "$POISE" mkfs "$WORK/small/big.img" --size 64M
    contains "$WORK/err" "host filesystem"
    [ ! -e "$WORK/small/big.img" ] && ok || bad "a failed mkfs left its file"
    expect 0 "$POISE" mkfs "$WORK/small/fits.img" --size 24M
    head -c 100000000 /dev/zero >"$WORK/small/filler" 2>/dev/null  # the host filesystem is now full
    expect 0 "$POISE" put "$WORK/small/fits.img" "$WORK/old" /a
    content "$WORK/small/fits.img" /a "$WORK/old"
    rm -f "$WORK/small/fits.img" "$WORK/small/filler"
    # An image made sparse elsewhere: read-write commands refuse with ENOSPC, reads work.
    "$POISE" mkfs "$WORK/sparse.img" --size 24M >/dev/null
    "$POISE" put "$WORK/sparse.img" "$WORK/old" /a >/dev/null
    cp --sparse=always "$WORK/sparse.img" "$WORK/small/sparse.img"
    head -c 100000000 /dev/zero >"$WORK/small/filler" 2>/dev/null
    expect 6 "$POISE" mkdir "$WORK/small/sparse.img" /d
    contains "$WORK/err" "host filesystem holding the image is full"
    expect 6 "$POISE" ls "$WORK/small/sparse.img" /  # on tmpfs even reading a hole needs memory
    contains "$WORK/err" "sparse on a tmpfs that is full"
    rm -f "$WORK/small/filler"
    content "$WORK/small/sparse.img" /a "$WORK/old"
    clean "$WORK/small/sparse.img"
    umount "$WORK/small"
  else
    bad "could not mount a small tmpfs (needed for the full host filesystem test)"
  fi
fi

# --- 11. ENOSPC never wedges the filesystem
FULL=$WORK/full.img
"$POISE" mkfs "$FULL" --size 16M >/dev/null
for size in 15000000 14000000 13000000; do
  head -c $size /dev/zero | "$POISE" put "$FULL" - /data 2>/dev/null && break
done
long=$(printf 'n%.0s' $(seq 240))
links=0
while [ $links -lt 5000 ]; do
  "$POISE" ln "$FULL" /data "/$long$links" 2>"$WORK/err" || break
  links=$((links + 1))
done
[ $links -lt 5000 ] && ok || bad "5000 long links never ran out of space"
contains "$WORK/err" "free"
expect 6 "$POISE" ln "$FULL" /data "/x$long"
expect 0 "$POISE" check "$FULL"
expect 0 "$POISE" rm "$FULL" "/${long}0"
expect 0 "$POISE" rm "$FULL" /data
for i in $(seq 1 $((links - 1))); do "$POISE" rm "$FULL" "/$long$i" 2>"$WORK/err" || { bad "rm of link $i after ENOSPC: $(cat "$WORK/err")"; break; }; done
expect 0 "$POISE" mkdir "$FULL" /works-again
expect 0 "$POISE" put "$FULL" "$WORK/old" /works-again/file
content "$FULL" /works-again/file "$WORK/old"
clean "$FULL"

# --- 13. mkfs never destroys what it was not told to
expect 2 "$POISE" mkfs "$WORK/tiny.img" --size 1M
[ ! -e "$WORK/tiny.img" ] && ok || bad "mkfs with an invalid size created a file"
expect 2 "$POISE" mkfs "$WORK/odd.img" --size 16777217
[ ! -e "$WORK/odd.img" ] && ok || bad "mkfs with an odd size created a file"
echo "precious notes" >"$WORK/notes.txt"
cp "$WORK/notes.txt" "$WORK/notes.orig"
expect 7 "$POISE" mkfs "$WORK/notes.txt" --size 64M
same "$WORK/notes.txt" "$WORK/notes.orig" "mkfs resized or overwrote a text file"
head -c 20000000 /dev/urandom >"$WORK/data.bin"
cp "$WORK/data.bin" "$WORK/data.orig"
expect 7 "$POISE" mkfs "$WORK/data.bin"
same "$WORK/data.bin" "$WORK/data.orig" "mkfs overwrote a file of other data"
expect 0 "$POISE" check "$IMG" --strict  # a healthy image has no notes
cp "$IMG" "$WORK/damaged.img"
printf 'XXXX' | dd of="$WORK/damaged.img" conv=notrunc status=none  # the primary magic is gone
expect 0 "$POISE" ls "$WORK/damaged.img" /  # the secondary superblock still mounts it
# check: clean (nothing is lost), with a note; --strict fails on the note.
expect 0 "$POISE" check "$WORK/damaged.img"
contains "$WORK/out" "note: primary superblock"
expect 5 "$POISE" check "$WORK/damaged.img" --strict
expect 7 "$POISE" mkfs "$WORK/damaged.img"
contains "$WORK/err" "poise filesystem"
expect 0 "$POISE" ls "$WORK/damaged.img" /
contains "$WORK/out" "keep"
truncate -s 32M "$WORK/zeros.img"
expect 0 "$POISE" mkfs "$WORK/zeros.img"  # an all-zero file holds nothing to lose
truncate -s 64M "$WORK/mid.dat"  # data in the middle, far from the first and last 64 KiB
printf 'IMPORTANT' | dd of="$WORK/mid.dat" bs=1 seek=10485760 conv=notrunc status=none
cp "$WORK/mid.dat" "$WORK/mid.orig"
expect 7 "$POISE" mkfs "$WORK/mid.dat"
same "$WORK/mid.dat" "$WORK/mid.orig" "mkfs overwrote data in the middle of a file"
head -c 100 /dev/zero >"$WORK/zeros100"
expect 0 "$POISE" mkfs "$WORK/zeros100" --size 16M  # 100 zero bytes: nothing to lose
mkdir -p "$WORK/a-directory"
expect 8 "$POISE" mkfs "$WORK/a-directory" --size 16M
expect 2 "$POISE" mkfs "$WORK/j.img" --size 16M --journal 0

# --- 10. damage in the middle of the journal is never taken for its end
# Five commands, each a mount whose transactions were written back when it
# ended; one byte flipped in an early transaction in both journal copies.
expect 0 "$POISE" mkfs "$WORK/mid-log.img" --size 16M
for i in 0 1 2 3 4; do
  head -c $(( (i + 1) * 50000 )) /dev/urandom >"$WORK/mid$i"
  expect 0 "$POISE" put "$WORK/mid-log.img" "$WORK/mid$i" "/f$i"
done
expect 0 "$POISE" fsmap "$WORK/mid-log.img" --json
copies=$(python3 -c 'import json,sys; print(" ".join(str(r["device_offset"]) for r in json.load(open(sys.argv[1])) if r.get("kind") == "journal"))' "$WORK/out")
[ "$(echo $copies | wc -w)" = 2 ] && ok || bad "fsmap names two journal copies: '$copies'"
for at in $copies; do printf '\x5a' | dd of="$WORK/mid-log.img" bs=1 seek=$((at + 800)) conv=notrunc status=none; done
expect 5 "$POISE" check "$WORK/mid-log.img"
contains "$WORK/out" "written back"
"$POISE" put "$WORK/mid-log.img" "$WORK/mid0" /after 2>"$WORK/err"
[ $? -ne 0 ] && ok || bad "a read-write command went on past damage in the middle of the journal"
expect 5 "$POISE" check "$WORK/mid-log.img"
# The last command's own last transaction is covered too: each command ends by
# marking the log written back.
expect 0 "$POISE" mkfs "$WORK/last-tx.img" --size 16M
expect 0 "$POISE" mkdir "$WORK/last-tx.img" /d
expect 0 "$POISE" put "$WORK/last-tx.img" "$WORK/mid1" /d/f
expect 0 "$POISE" fsmap "$WORK/last-tx.img" --json
python3 - "$WORK/last-tx.img" "$WORK/out" <<'PY' && ok || bad "could not damage the put's last transaction"
import json, struct, sys
img, records = sys.argv[1], json.load(open(sys.argv[2]))
with open(img, "r+b") as f:
    for r in records:
        if r.get("kind") != "journal":
            continue
        f.seek(r["device_offset"]); region = f.read(r["length"])
        # The transactions (magic "JPTX"): the last one is the end mark; the one
        # before it is the put naming its file.
        starts = [o for o in range(0, len(region), 64) if region[o:o + 4] == struct.pack("<I", 0x5854504A)
                  and struct.unpack_from("<Q", region, o + 24)[0] == o]
        f.seek(r["device_offset"] + starts[-2] + 48); b = f.read(1)
        f.seek(r["device_offset"] + starts[-2] + 48); f.write(bytes([b[0] ^ 0x5A]))
PY
expect 5 "$POISE" check "$WORK/last-tx.img"
contains "$WORK/out" "written back"

# --- 11. the newest checkpoint lost in both copies: the previous one stands in
# Two bulk puts, each filling the journal (a checkpoint each): the older
# checkpoint is kept, with the journal written between the two.
mkdir -p "$WORK/fb-tree"
for i in $(seq 1 1500); do echo "file $i" >"$WORK/fb-tree/f$i"; done
expect 0 "$POISE" mkfs "$WORK/fb.img" --size 64M
expect 0 "$POISE" put -r "$WORK/fb.img" "$WORK/fb-tree" /t1
expect 0 "$POISE" put -r "$WORK/fb.img" "$WORK/fb-tree" /t2
expect 0 "$POISE" mkdir "$WORK/fb.img" /in-journal
expect 0 "$POISE" info "$WORK/fb.img" --json
python3 -c 'import json,sys; i=json.load(open(sys.argv[1])); sys.exit(0 if i["previous_checkpoint_generation"] == i["checkpoint_generation"] - 1 and i["previous_checkpoint_bytes"] > 0 else 1)' "$WORK/out" \
  && ok || bad "info names the kept checkpoint: $(cat "$WORK/out")"
expect 0 "$POISE" info "$WORK/fb.img"
contains "$WORK/out" "fallback:   generation"
expect 0 "$POISE" fsmap "$WORK/fb.img" --json
contains "$WORK/out" '"previous_checkpoint"'
contains "$WORK/out" '"carried_journal"'
roots=$(python3 -c 'import json,sys; print(" ".join(str(r["device_offset"]) for r in json.load(open(sys.argv[1])) if r.get("kind") == "checkpoint_root"))' "$WORK/out")
[ "$(echo $roots | wc -w)" = 2 ] && ok || bad "fsmap names two checkpoint roots: '$roots'"
for at in $roots; do printf '\x5a' | dd of="$WORK/fb.img" bs=1 seek=$((at + 100)) conv=notrunc status=none; done
expect 0 "$POISE" check "$WORK/fb.img"
contains "$WORK/out" "stand in"
expect 0 "$POISE" ls "$WORK/fb.img" /t2
[ "$(wc -l <"$WORK/out")" = 1500 ] && ok || bad "ls /t2 after the fallback: $(wc -l <"$WORK/out") names"
contains "$WORK/err" "the previous one stood in"  # every command warns: redundancy was used up
expect 0 "$POISE" cat "$WORK/fb.img" /t2/f1234
contains "$WORK/out" "file 1234"
expect 0 "$POISE" stat "$WORK/fb.img" /in-journal
expect 0 "$POISE" repair "$WORK/fb.img" --dry-run
contains "$WORK/out" "stand in"
expect 0 "$POISE" mkdir "$WORK/fb.img" /after-fallback  # read-write: a new checkpoint, both copies whole
expect 0 "$POISE" info "$WORK/fb.img"
contains "$WORK/out" "fallback:   none kept"
expect 0 "$POISE" check "$WORK/fb.img"
not_contains "$WORK/out" "stand in"
# Both checkpoints lost: refused, as a corrupt image.
expect 0 "$POISE" put -r "$WORK/fb.img" "$WORK/fb-tree" /t3
expect 0 "$POISE" fsmap "$WORK/fb.img" --json
python3 - "$WORK/fb.img" "$WORK/out" <<'PY' && ok || bad "could not damage both checkpoints"
import json, sys
img, records = sys.argv[1], json.load(open(sys.argv[2]))
with open(img, "r+b") as f:
    for r in records:
        if r.get("kind") not in ("checkpoint_root", "previous_checkpoint", "carried_journal"):
            continue
        for at in range(r["device_offset"], r["device_offset"] + r["length"], 4096):
            f.seek(at + 100); b = f.read(1)
            f.seek(at + 100); f.write(bytes([b[0] ^ 0x5A]))
PY
expect 5 "$POISE" ls "$WORK/fb.img" /
contains "$WORK/err" "cannot stand in"
expect 5 "$POISE" check "$WORK/fb.img" --json
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if not r["clean"] and r["problems"] else 1)' "$WORK/out" \
  && ok || bad "check --json of an image with both checkpoints lost: $(head -c 300 "$WORK/out")"
contains "$WORK/out" "cannot stand in"

finish robustness
