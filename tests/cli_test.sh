#!/usr/bin/env bash
# End-to-end tests of the poise command: every command, its exact output where
# other tooling depends on it, and the documented exit codes for bad input.
# Usage: cli_test.sh PATH_TO_POISE
POISE=${1:?usage: cli_test.sh PATH_TO_POISE}
WORK_NAME=poise-cli-test
source "$(dirname "$0")/cli_lib.sh"

# --- usage and help
expect 0 "$POISE" --help
contains "$WORK/out" "Exit codes:"
expect 2 "$POISE"
expect 2 "$POISE" frobnicate
for c in mkfs info ls stat mkdir put get cat rm mv ln reflink truncate fsmap check repair demo \
         inject-poison clear-poison badblocks xattr; do
  expect 0 "$POISE" "$c" --help
done
expect 2 "$POISE" mkfs "$IMG" --size banana
expect 2 "$POISE" mkfs "$WORK/missing.img"

# --- mkfs and info
expect 0 "$POISE" mkfs "$IMG" --size 64M
contains "$WORK/out" "64.0 MiB"
expect 7 "$POISE" mkfs "$IMG" --size 64M
contains "$WORK/err" "--force"
expect 0 "$POISE" mkfs "$IMG" --size 64M --force
expect 0 "$POISE" info "$IMG" --json
python3 - "$WORK/out" <<'PY' && ok || bad "info --json fields"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["size_bytes"] == 64 << 20 and d["block_size"] == 4096 and d["files"] == 1
assert d["used_bytes"] + d["free_bytes"] == d["size_bytes"]
PY

# --- put/get/cat round trip, stdin and stdout
head -c 3000000 /dev/urandom >"$WORK/blob"
expect 0 "$POISE" mkdir "$IMG" /a/b/c -p
expect 0 "$POISE" put "$IMG" "$WORK/blob" /a/b/c/blob
expect 0 "$POISE" get "$IMG" /a/b/c/blob "$WORK/blob.back"
cmp -s "$WORK/blob" "$WORK/blob.back" && ok || bad "get returned different bytes"
echo "hello from stdin" | "$POISE" put "$IMG" - /hello && ok || bad "put from stdin"
expect 0 "$POISE" cat "$IMG" /hello
[ "$(cat "$WORK/out")" = "hello from stdin" ] && ok || bad "cat output"
expect 0 "$POISE" cat "$IMG" /hello --offset 6 --length 4
[ "$(cat "$WORK/out")" = "from" ] && ok || bad "cat --offset --length"
"$POISE" get "$IMG" /hello - >"$WORK/stdout.copy" && ok || bad "get to stdout"
[ "$(cat "$WORK/stdout.copy")" = "hello from stdin" ] && ok || bad "get - content"

# --- bulk import: several files into a directory, whole trees with -r
mkdir -p "$WORK/tree/sub/deeper" "$WORK/tree/empty"
for i in 1 2 3; do head -c $((i * 7000)) /dev/urandom >"$WORK/tree/f$i"; done
head -c 1234 /dev/urandom >"$WORK/tree/sub/deeper/g"
ln -s f1 "$WORK/tree/link-to-f1"
mkfifo "$WORK/tree/fifo"
expect 0 "$POISE" mkdir "$IMG" /many
expect 0 "$POISE" put "$IMG" "$WORK/tree/f1" "$WORK/tree/f2" "$WORK/tree/f3" /many
for i in 1 2 3; do
  "$POISE" get "$IMG" "/many/f$i" "$WORK/back" && cmp -s "$WORK/back" "$WORK/tree/f$i" && ok || bad "bulk put f$i"
done
expect 8 "$POISE" put "$IMG" "$WORK/tree/f1" "$WORK/tree/f2" /many/f1  # several files need a directory
expect 8 "$POISE" put "$IMG" "$WORK/tree" /t                         # a directory needs -r
expect 2 "$POISE" put -r "$IMG" - /t
expect 0 "$POISE" put -r "$IMG" "$WORK/tree" /t
expect 0 "$POISE" stat "$IMG" /t/fifo --json  # a FIFO is copied as a FIFO
python3 -c "import json; s = json.load(open('$WORK/out')); assert (s['type'], s['size_bytes']) == ('fifo', 0), s" &&
  ok || bad "put -r must copy a FIFO as a FIFO: $(cat "$WORK/out")"
expect 0 "$POISE" ls "$IMG" /t -l
grep -q '^prw' "$WORK/out" && ok || bad "ls -l must show a FIFO as p: $(cat "$WORK/out")"
expect 8 "$POISE" cat "$IMG" /t/fifo
contains "$WORK/err" "is a special file (FIFO)"
expect 8 "$POISE" get "$IMG" /t/fifo "$WORK/fifo.out"
for f in f1 f2 f3 sub/deeper/g; do
  "$POISE" get "$IMG" "/t/$f" "$WORK/back" && cmp -s "$WORK/back" "$WORK/tree/$f" && ok || bad "put -r $f"
done
expect 0 "$POISE" stat "$IMG" /t/empty --json
python3 -c "import json; assert json.load(open('$WORK/out'))['type'] == 'directory'" && ok || bad "put -r empty directory"
expect 0 "$POISE" stat "$IMG" /t/link-to-f1 --json  # a link is copied as a link
python3 -c "import json; s = json.load(open('$WORK/out')); assert (s['type'], s['target']) == ('symlink', 'f1'), s" &&
  ok || bad "put -r must copy a symbolic link as a link: $(cat "$WORK/out")"
expect 0 "$POISE" put -r "$IMG" "$WORK/tree" /t  # into the existing directory: /t/tree
expect 0 "$POISE" stat "$IMG" /t/tree/sub/deeper/g
# The same tree again over itself brings it up to date: files, links and FIFOs
# are replaced (a link that changed shows its new target); nothing is left behind.
rm "$WORK/tree/link-to-f1" && ln -s sub "$WORK/tree/link-to-f1"
expect 0 "$POISE" put -r "$IMG" "$WORK/tree/" /t
expect 0 "$POISE" stat "$IMG" /t/link-to-f1 --json
python3 -c "import json; s = json.load(open('$WORK/out')); assert s['target'] == 'sub', s" &&
  ok || bad "put -r again must replace a changed link: $(cat "$WORK/out")"
expect 0 "$POISE" stat "$IMG" /t/fifo
expect 0 "$POISE" ls "$IMG" /t
not_contains "$WORK/out" "poise-put"
# Something that is not a directory never replaces a directory.
expect 0 "$POISE" mkdir "$IMG" /t/is-a-dir
mkfifo "$WORK/tree/is-a-dir"
expect 7 "$POISE" put -r "$IMG" "$WORK/tree/" /t
contains "$WORK/err" "/t/is-a-dir"
expect 0 "$POISE" stat "$IMG" /t/is-a-dir --json
contains "$WORK/out" '"type": "directory"'
rm "$WORK/tree/is-a-dir"
rm "$WORK/tree/link-to-f1" && ln -s f1 "$WORK/tree/link-to-f1"
# New directories keep the local ones' permissions and sticky bit (a private
# directory must not become readable by others); existing ones keep theirs.
mkdir -p "$WORK/modes/private" "$WORK/modes/shared" "$WORK/modes/readonly"
echo inside >"$WORK/modes/readonly/f"
chmod 700 "$WORK/modes/private" && chmod 1777 "$WORK/modes/shared" && chmod 750 "$WORK/modes" &&
  chmod 500 "$WORK/modes/readonly"
expect 0 "$POISE" put -r "$IMG" "$WORK/modes" /modes
expect 0 "$POISE" ls "$IMG" /modes -l
grep -q -- "^drwx------ .* private/" "$WORK/out" && grep -q -- "^drwxrwxrwt .* shared/" "$WORK/out" &&
  grep -q -- "^dr-x------ .* readonly/" "$WORK/out" && ok ||
  bad "put -r must keep directory modes: $(cat "$WORK/out")"
expect 0 "$POISE" stat "$IMG" /modes --json
python3 -c "import json; m = json.load(open('$WORK/out'))['mode']; assert int(m, 8) & 0o7777 == 0o750, m" &&
  ok || bad "put -r must keep the top directory's mode: $(cat "$WORK/out")"
expect 0 "$POISE" cat "$IMG" /modes/readonly/f  # a read-only directory is filled before it gets its mode
chmod 700 "$WORK/modes/readonly"
expect 0 "$POISE" rm "$IMG" /modes -r
expect 0 "$POISE" rm "$IMG" /t -r
expect 0 "$POISE" rm "$IMG" /many -r
expect 0 "$POISE" check "$IMG"

# --- ls / stat
expect 0 "$POISE" ls "$IMG"
contains "$WORK/out" "a/"
contains "$WORK/out" "hello"
expect 0 "$POISE" ls "$IMG" /a/b/c -l
contains "$WORK/out" "3000000"
expect 0 "$POISE" ls "$IMG" / --json
python3 -c "import json,sys; d=json.load(open('$WORK/out')); assert sorted(e['name'] for e in d)==['a','hello']" && ok || bad "ls --json"
expect 0 "$POISE" stat "$IMG" /a/b/c/blob --json
python3 -c "import json; d=json.load(open('$WORK/out')); assert d['size_bytes']==3000000 and d['nlink']==1 and d['type']=='file' and d['blocks']==733" && ok || bad "stat --json"

# --- reflink, fsmap --json shows every owner of shared blocks
expect 0 "$POISE" reflink "$IMG" /a/b/c/blob /copy1
expect 0 "$POISE" reflink "$IMG" /a/b/c/blob /copy2
expect 0 "$POISE" fsmap "$IMG" --json
python3 - "$WORK/out" <<'PY' && ok || bad "fsmap --json sharing"
import json, sys
recs = json.load(open(sys.argv[1]))
for r in recs:
    assert set(r) >= {"device_offset", "length", "owner", "shared", "refcount"}
    assert r["owner"] in ("file", "metadata", "free", "bad")
files = [r for r in recs if r["owner"] == "file"]
paths = {r["path"] for r in files}
assert paths == {"/a/b/c/blob", "/copy1", "/copy2", "/hello"}, paths
shared = [r for r in files if r["shared"]]
assert all(r["refcount"] == 3 for r in shared)
# each shared stretch appears once per owner
by_offset = {}
for r in shared: by_offset.setdefault(r["device_offset"], []).append(r["path"])
assert all(sorted(v) == ["/a/b/c/blob", "/copy1", "/copy2"] for v in by_offset.values())
kinds = {r["kind"] for r in recs if r["owner"] == "metadata"}
# Directory blocks exist once a checkpoint has absorbed the journal (unmount
# leaves a journal that is less than half full as it is).
assert {"superblock", "journal", "checkpoint_root", "inode_table"} <= kinds, kinds
total = sum(r["length"] for r in recs if r["owner"] in ("metadata", "free")) + \
        sum(length for _, length in {(r["device_offset"], r["length"]) for r in files})
assert total == 64 << 20, total
PY
expect 0 "$POISE" fsmap "$IMG" --offset 0 --length 4096
contains "$WORK/out" "superblock"

# --- mv, ln, truncate, rm
expect 0 "$POISE" mv "$IMG" /copy1 /a/moved
expect 0 "$POISE" ln "$IMG" /a/moved /a/linked
expect 0 "$POISE" stat "$IMG" /a/linked --json
python3 -c "import json; assert json.load(open('$WORK/out'))['nlink']==2" && ok || bad "ln link count"
expect 0 "$POISE" truncate "$IMG" /a/moved 10K
expect 0 "$POISE" stat "$IMG" /a/moved --json
python3 -c "import json; assert json.load(open('$WORK/out'))['size_bytes']==10240" && ok || bad "truncate size"
expect 0 "$POISE" get "$IMG" /copy2 "$WORK/copy2"
cmp -s "$WORK/blob" "$WORK/copy2" && ok || bad "reflinked copy changed by truncate of another"
expect 8 "$POISE" rm "$IMG" /a
expect 0 "$POISE" rm "$IMG" /a -r
expect 3 "$POISE" stat "$IMG" /a/linked
expect 0 "$POISE" check "$IMG"
contains "$WORK/out" "clean"

# --- bad input: distinct exit codes, nothing lost
expect 3 "$POISE" cat "$IMG" /nope
expect 3 "$POISE" info "$WORK/no-such.img"
expect 7 "$POISE" mkdir "$IMG" /copy2
expect 8 "$POISE" mkdir "$IMG" "/$(printf 'n%.0s' $(seq 300))"
expect 8 "$POISE" mv "$IMG" / /x
expect 0 "$POISE" mkdir "$IMG" /d1
expect 8 "$POISE" mv "$IMG" /d1 /d1/inside
expect 8 "$POISE" cat "$IMG" /d1
head -c 70000000 /dev/zero >"$WORK/too-big"
expect 6 "$POISE" put "$IMG" "$WORK/too-big" /big
expect 0 "$POISE" check "$IMG"
expect 0 "$POISE" get "$IMG" /copy2 "$WORK/copy2.after"
cmp -s "$WORK/blob" "$WORK/copy2.after" && ok || bad "committed data changed by ENOSPC"

# a foreign file, a corrupt image, a truncated image, a newer format
head -c $((32 << 20)) /dev/zero | tr '\0' 'x' >"$WORK/foreign.img"
expect 5 "$POISE" info "$WORK/foreign.img"
contains "$WORK/err" "not a poise filesystem"
cp "$IMG" "$WORK/corrupt.img"
printf 'garbage!' | dd of="$WORK/corrupt.img" bs=1 seek=200 conv=notrunc status=none
printf 'garbage!' | dd of="$WORK/corrupt.img" bs=1 seek=$(((64 << 20) - 4096 + 200)) conv=notrunc status=none
expect 5 "$POISE" ls "$WORK/corrupt.img"
contains "$WORK/err" "checksum mismatch"
expect 5 "$POISE" check "$WORK/corrupt.img"
cp "$IMG" "$WORK/short.img"
truncate -s 32M "$WORK/short.img"
expect 5 "$POISE" info "$WORK/short.img"
contains "$WORK/err" "truncated"
truncate -s 1M "$WORK/tiny.img"
expect 8 "$POISE" info "$WORK/tiny.img"
contains "$WORK/err" "16 MiB"

# --- memory failure: poison a block shared by reflink
PZ=$WORK/poison.img
expect 0 "$POISE" mkfs "$PZ" --size 64M
head -c 20000 /dev/urandom >"$WORK/pz.data"
expect 0 "$POISE" put "$PZ" "$WORK/pz.data" /f
expect 0 "$POISE" reflink "$PZ" /f /g
expect 0 "$POISE" put "$PZ" "$WORK/pz.data" /other
expect 0 "$POISE" fsmap "$PZ" --json
OFF=$(python3 -c "import json; print([r for r in json.load(open('$WORK/out')) if r.get('path')=='/f' and r['file_offset']==0][0]['device_offset'])")
expect 2 "$POISE" inject-poison "$PZ" --offset banana --length 64
expect 8 "$POISE" inject-poison "$PZ" --offset $((64 << 20)) --length 64
expect 0 "$POISE" inject-poison "$PZ" --offset $((OFF + 4096 + 128)) --length 64
[ -f "$PZ.poison" ] && ok || bad "poison list not kept beside the image"
expect 4 "$POISE" cat "$PZ" /f
contains "$WORK/err" "file bytes 4096..8192 are lost"
expect 4 "$POISE" get "$PZ" /g "$WORK/g.out"
expect 0 "$POISE" cat "$PZ" /f --offset 0 --length 4096
cmp -s <(head -c 4096 "$WORK/pz.data") "$WORK/out" && ok || bad "intact range of a damaged file"
expect 0 "$POISE" cat "$PZ" /f --offset 8192 --length 11808
expect 0 "$POISE" get "$PZ" /other "$WORK/other.out"
cmp -s "$WORK/pz.data" "$WORK/other.out" && ok || bad "an unrelated file was affected"
expect 0 "$POISE" badblocks "$PZ" --json
python3 - "$WORK/out" "$OFF" <<'PY' && ok || bad "badblocks --json"
import json, sys
d = json.load(open(sys.argv[1])); off = int(sys.argv[2])
assert d["device"] == [{"offset": off + 4096 + 128, "length": 64}], d["device"]
fs = d["filesystem"]
assert len(fs) == 1 and fs[0]["device_offset"] == off + 4096 and fs[0]["length"] == 4096, fs
owners = sorted((o["path"], o["file_offset"]) for o in fs[0]["owners"])
assert owners == [("/f", 4096), ("/g", 4096)], owners
PY
expect 0 "$POISE" mkdir "$PZ" /rw   # a read-write mount records the range for good
expect 0 "$POISE" clear-poison "$PZ" --offset 0 --length $((64 << 20))
expect 4 "$POISE" cat "$PZ" /g
contains "$WORK/err" "are lost"
expect 0 "$POISE" fsmap "$PZ" --json
python3 -c "import json; r=[x for x in json.load(open('$WORK/out')) if x['owner']=='bad']; assert len(r)==1 and r[0]['device_offset']==$OFF+4096" && ok || bad "fsmap bad record"
expect 0 "$POISE" put "$PZ" "$WORK/pz.data" /g   # a rewrite of the whole file relocates it
expect 0 "$POISE" get "$PZ" /g "$WORK/g.out"
cmp -s "$WORK/pz.data" "$WORK/g.out" && ok || bad "relocated file content"
expect 0 "$POISE" check "$PZ"
contains "$WORK/out" "failed"

# --- two copies of all metadata: damage one copy of a block, check says so, repair rewrites
RP="$WORK/repair.img"
expect 0 "$POISE" mkfs "$RP" --size 32M
echo "kept" | "$POISE" put "$RP" - /kept && ok || bad "put for repair"
expect 0 "$POISE" repair "$RP"
contains "$WORK/out" "nothing to repair"
expect 0 "$POISE" fsmap "$RP" --json
TABLE=$(python3 -c "import json; print(min(r['device_offset'] for r in json.load(open('$WORK/out')) if r['owner']=='metadata' and r.get('kind')=='checkpoint_root'))")
printf '\xff\xff\xff\xff' | dd of="$RP" bs=1 seek=$((TABLE + 300)) conv=notrunc status=none
expect 0 "$POISE" check "$RP"                       # survived: the other copy is used
contains "$WORK/out" "note: checkpoint root copy"
cp "$RP" "$WORK/repair.before"
expect 0 "$POISE" repair "$RP" --dry-run --json
python3 -c "import json; d=json.load(open('$WORK/out')); assert d['dry_run'] and d['clean'] and d['changes'], d" && ok || bad "repair --dry-run --json"
cmp -s "$RP" "$WORK/repair.before" && ok || bad "repair --dry-run changed the image"
expect 0 "$POISE" repair "$RP"
contains "$WORK/out" "fixed: checkpoint root copy"
expect 0 "$POISE" check "$RP"
not_contains "$WORK/out" "note:"
expect 0 "$POISE" cat "$RP" /kept
[ "$(cat "$WORK/out")" = "kept" ] && ok || bad "data after repair"
expect 3 "$POISE" repair "$WORK/no-such.img"
head -c $((32 << 20)) /dev/zero >"$WORK/zeros.img"
expect 5 "$POISE" repair "$WORK/zeros.img"
contains "$WORK/err" "not a poise filesystem"

# --- extended attributes: set, read (raw bytes), list, JSON, remove, errors
XI=$WORK/xattr.img
expect 0 "$POISE" mkfs "$XI" --size 32M
echo hello >"$WORK/xattr-hello"
expect 0 "$POISE" put "$XI" "$WORK/xattr-hello" /f
expect 0 "$POISE" xattr "$XI" /f user.color --set blue
expect 0 "$POISE" xattr "$XI" /f user.bin --set-hex 0x00ff0a
expect 0 "$POISE" xattr "$XI" /f user.empty --set-hex 0x
expect 0 "$POISE" xattr "$XI" /f user.color
[ "$(cat "$WORK/out")" = blue ] && ok || bad "xattr NAME prints the value's bytes: $(cat "$WORK/out")"
expect 0 "$POISE" xattr "$XI" /f user.bin
[ "$(od -An -tx1 "$WORK/out" | tr -d ' \n')" = 00ff0a ] && ok || bad "a binary value must come out byte for byte"
expect 0 "$POISE" xattr "$XI" /f
[ "$(cat "$WORK/out")" = "$(printf 'user.bin=0x00ff0a\nuser.color="blue"\nuser.empty=""')" ] && ok ||
  bad "xattr lists names in order with their values: $(cat "$WORK/out")"
expect 0 "$POISE" xattr "$XI" /f --json
python3 -c "
import json; d = json.load(open('$WORK/out'))
assert [(e['name'], e['value_hex']) for e in d] == [('user.bin', '00ff0a'), ('user.color', '626c7565'), ('user.empty', '')], d
" && ok || bad "xattr --json: $(cat "$WORK/out")"
expect 7 "$POISE" xattr "$XI" /f user.color --set red --create
expect 3 "$POISE" xattr "$XI" /f user.none --set red --replace
expect 0 "$POISE" xattr "$XI" /f user.color --set red --replace
expect 3 "$POISE" xattr "$XI" /f user.none
contains "$WORK/err" "no such attribute"
expect 10 "$POISE" xattr "$XI" /f other.name --set x
expect 8 "$POISE" xattr "$XI" /f user.big --set "$(head -c 3073 /dev/zero | tr '\0' x)"
expect 8 "$POISE" xattr "$XI" /f system.posix_acl_access --set-hex 0x03000000   # not version 2
expect 0 "$POISE" xattr "$XI" /f system.posix_acl_access --set-hex 0x02000000   # no entries: a removal
expect 2 "$POISE" xattr "$XI" /f --remove
expect 2 "$POISE" xattr "$XI" /f user.color --set a --remove
expect 2 "$POISE" xattr "$XI" /f user.color --set-hex 0xzz
expect 3 "$POISE" xattr "$XI" /missing
expect 0 "$POISE" xattr "$XI" /f user.empty --remove
expect 3 "$POISE" xattr "$XI" /f user.empty --remove
expect 0 "$POISE" xattr "$XI" /f user.empty --set ""      # an empty value is a value
expect 0 "$POISE" xattr "$XI" /f user.empty --json
contains "$WORK/out" '"value_hex": ""'
expect 2 "$POISE" xattr "$XI" /f user.color --create       # --create goes with a value
# put over a file keeps its attributes and ACL (u::rw-, u:1000:rwx, g::r--, m::rwx,
# o::---: mode 0670), but not a file capability (new bytes drop it, as a write does)
expect 0 "$POISE" xattr "$XI" /f security.capability --set-hex 0X01
expect 0 "$POISE" xattr "$XI" /f system.posix_acl_access --set-hex \
  0x0200000001000600ffffffff02000700e803000004000400ffffffff10000700ffffffff20000000ffffffff
echo new >"$WORK/xattr-new" && chmod 644 "$WORK/xattr-new"
expect 0 "$POISE" put "$XI" "$WORK/xattr-new" /f
expect 0 "$POISE" cat "$XI" /f
[ "$(cat "$WORK/out")" = new ] && ok || bad "put did not replace the content"
expect 0 "$POISE" xattr "$XI" /f user.color
[ "$(cat "$WORK/out")" = red ] && ok || bad "put over a file must keep its attributes"
expect 3 "$POISE" xattr "$XI" /f security.capability
expect 0 "$POISE" xattr "$XI" /f system.posix_acl_access
expect 0 "$POISE" stat "$XI" /f --json
contains "$WORK/out" '"mode": "0670"'
# A replaced file keeps its mode even where a default ACL (u::rwx, g::r-x,
# o::---) would narrow a new one.
expect 0 "$POISE" mkdir "$XI" /dacl
expect 0 "$POISE" put "$XI" "$WORK/xattr-new" /dacl/f
expect 0 "$POISE" xattr "$XI" /dacl system.posix_acl_default --set-hex 0x0200000001000700ffffffff04000500ffffffff20000000ffffffff
expect 0 "$POISE" put "$XI" "$WORK/xattr-new" /dacl/f
expect 0 "$POISE" stat "$XI" /dacl/f --json
contains "$WORK/out" '"mode": "0644"'
expect 3 "$POISE" xattr "$XI" /dacl/f system.posix_acl_access
expect 0 "$POISE" put "$XI" "$WORK/xattr-new" /dacl/g   # a new file takes the default ACL's narrowing
expect 0 "$POISE" stat "$XI" /dacl/g --json
contains "$WORK/out" '"mode": "0640"'
expect 0 "$POISE" check "$XI"
contains "$WORK/out" "clean"
chmod 0444 "$XI"
expect 0 "$POISE" xattr "$XI" /f user.color          # read-only commands work on a read-only image
[ "$(cat "$WORK/out")" = red ] && ok || bad "the value after --replace, read from a 0444 image"
chmod 0644 "$XI"

# --- the image is locked against a second process
( exec 9<"$IMG"; flock -x 9; sleep 2 ) &
sleep 0.5
expect 9 "$POISE" info "$IMG"
wait

# --- demo
expect 0 "$POISE" demo
contains "$WORK/out" "clean"
contains "$WORK/out" "unchanged (verified)"

finish cli
