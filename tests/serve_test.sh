#!/bin/bash
# poise serve with real processes: the CLI through a running server gives the
# same output and exit codes as on the image itself; a second server, mkfs and
# repair are refused; poison injected through the server reaches the running
# filesystem at once; permissions for other users (run as uid 65534 with
# setpriv when this runs as root); SIGTERM unmounts cleanly; kill -9 of the
# server under load loses nothing a client was told is done.
# Usage: serve_test.sh PATH_TO_POISE
POISE=${1:?usage: serve_test.sh PATH_TO_POISE}
WORK_NAME=poise-serve-test
source "$(dirname "$0")/cli_lib.sh"
SERVER_PIDS=()
stop_servers() {
  for p in "${SERVER_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  cleanup
}
trap stop_servers EXIT

# serve IMG ARGS...: starts a server in the background; its pid in $SERVER.
serve() {
  local img=$1; shift
  "$POISE" serve "$img" --background --log "$WORK/serve.log" "$@" >"$WORK/out" 2>"$WORK/err"
  local code=$?
  # The server's pid, from its last "serving ... (pid N)" log line.
  SERVER=$(grep -o 'serving .* (pid [0-9]*)' "$WORK/serve.log" 2>/dev/null | tail -1 | sed 's/.*(pid \([0-9]*\))/\1/')
  [ -n "$SERVER" ] && SERVER_PIDS+=("$SERVER")
  return $code
}
# stop: SIGTERM, then wait for the server to end (at most 30 s).
stop() {
  kill -TERM "$SERVER"
  for _ in $(seq 300); do kill -0 "$SERVER" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}

expect 0 "$POISE" mkfs "$IMG" --size 64M
head -c 300000 /dev/urandom >"$WORK/data"
echo hello >"$WORK/hello"

# --- the CLI through a server, with the same answers as without one
serve "$IMG" && ok || bad "serve --background failed: $(cat "$WORK/err")"
[ "$(cat "$WORK/out")" = "$IMG.sock" ] && ok || bad "serve --background must print the socket path, printed '$(cat "$WORK/out")'"
[ -S "$IMG.sock" ] && ok || bad "no socket at IMAGE.sock"
[ "$(stat -c %a "$IMG.sock")" = 600 ] && ok || bad "the socket must be 0600 by default, is $(stat -c %a "$IMG.sock")"
expect 0 "$POISE" mkdir "$IMG" /d
expect 0 "$POISE" put "$IMG" "$WORK/data" /d/data
expect 0 "$POISE" put "$IMG" "$WORK/hello" /d/hello
expect 0 "$POISE" reflink "$IMG" /d/data /d/copy
expect 0 "$POISE" mv "$IMG" /d/hello /d/hi
expect 0 "$POISE" get "$IMG" /d/copy "$WORK/copy.out"
same() { if cmp -s "$1" "$2"; then ok; else bad "$3"; fi; }
same "$WORK/copy.out" "$WORK/data" "get through the server"
expect 3 "$POISE" cat "$IMG" /d/missing
contains "$WORK/err" "/d/missing"
expect 8 "$POISE" rm "$IMG" /d
expect 7 "$POISE" mkdir "$IMG" /d
expect 8 "$POISE" rm "$IMG" / -r
# A path longer than PATH_MAX: ENAMETOOLONG, as on the image itself (before,
# the server took the message as malformed and dropped the client).
LONG=$(printf '/aaaaaaaaaa%.0s' $(seq 420))
expect 8 "$POISE" mkdir "$IMG" "$LONG"
contains "$WORK/err" "path longer than 4096 bytes"
expect 0 "$POISE" ls "$IMG" /d
# A put killed mid-way through the server: its bytes were in an unnamed file,
# so no name is left, and the server frees it as soon as the client is gone.
used_before=$(used_bytes)
slow_put /d/killed
[ "$(used_bytes)" -gt "$used_before" ] && ok || bad "the put under way took no space (the test did not catch it mid-way)"
kill -9 "$PUT_PID" 2>/dev/null
wait "$PUT_PID" 2>/dev/null
expect 0 "$POISE" ls "$IMG" /d
not_contains "$WORK/out" "poise-put"
not_contains "$WORK/out" "killed"
for _ in $(seq 50); do [ "$(used_bytes)" = "$used_before" ] && break; sleep 0.1; done
[ "$(used_bytes)" = "$used_before" ] && ok || bad "the killed put's blocks stay taken: $used_before before, $(used_bytes) after"
for c in "ls $IMG /d -l" "ls $IMG / --json" "stat $IMG /d/copy" "cat $IMG /d/hi" "fsmap $IMG" "check $IMG"; do
  "$POISE" $c >"$WORK/served.$(echo "$c" | tr ' /' '__')" 2>&1
  echo $? >>"$WORK/served.$(echo "$c" | tr ' /' '__')"
done
expect 0 "$POISE" check "$IMG"
contains "$WORK/out" "clean"
# A second server, mkfs and repair on a served image are refused and name the server.
"$POISE" serve "$IMG" --background >"$WORK/out" 2>"$WORK/err"
[ $? -eq 9 ] && ok || bad "a second server on the same image must exit 9"
contains "$WORK/err" "served by poise serve (pid $SERVER)"
expect 9 "$POISE" mkfs "$IMG" --size 64M --force
contains "$WORK/err" "stop the server first"
expect 9 "$POISE" repair "$IMG"
# SIGTERM: clients are let go, the filesystem unmounted cleanly, the socket removed.
stop && ok || bad "the server did not stop on SIGTERM"
[ -e "$IMG.sock" ] && bad "the socket outlived the server" || ok
contains "$WORK/serve.log" "unmounted cleanly"
# The same commands on the image itself answer the same.
for c in "ls $IMG /d -l" "ls $IMG / --json" "stat $IMG /d/copy" "cat $IMG /d/hi" "fsmap $IMG" "check $IMG"; do
  f=$WORK/served.$(echo "$c" | tr ' /' '__')
  "$POISE" $c >"$f.direct" 2>&1
  echo $? >>"$f.direct"
  same "$f" "$f.direct" "'poise $c' through the server differs from the image itself: $(diff "$f" "$f.direct" | head -5)"
done
# A caller that captures the output ($(...)) gets it once the server is ready:
# the server keeps none of the caller's descriptors (its log has a file).
captured=$(timeout 30 "$POISE" serve "$IMG" --background --log "$WORK/serve.log" 2>&1)
[ $? -eq 0 ] && [ "$captured" = "$IMG.sock" ] && ok || bad "serve --background --log held the caller's output open: '$captured'"
SERVER=$(grep -o 'serving .* (pid [0-9]*)' "$WORK/serve.log" | tail -1 | sed 's/.*(pid \([0-9]*\))/\1/')
SERVER_PIDS+=("$SERVER")
stop && ok || bad "the server did not stop on SIGTERM"

serve "$IMG"
# rm -r through the server removes a tree that mv made deeper than any path
# a message can carry (it names entries by directory inode).
deep_a=/deep$(printf '/dddd%.0s' $(seq 700))
deep_b=/other$(printf '/eeee%.0s' $(seq 700))
expect 0 "$POISE" mkdir "$IMG" -p "$deep_a"
expect 0 "$POISE" mkdir "$IMG" -p "$deep_b"
expect 0 "$POISE" put "$IMG" "$WORK/hello" "$deep_b/leaf"
expect 0 "$POISE" mv "$IMG" /other "$deep_a/other"
expect 8 "$POISE" stat "$IMG" "$deep_a/other${deep_b#/other}/leaf"
expect 0 "$POISE" rm "$IMG" /deep -r
expect 3 "$POISE" stat "$IMG" /deep
stop

# --- poison injected through the server reaches the running filesystem at once,
# and the event stream names every owner
serve "$IMG"
"$POISE" events "$IMG" --json >"$WORK/events.json" 2>&1 &
EVENTS_JSON=$!
"$POISE" events "$IMG" >"$WORK/events.txt" 2>&1 &
EVENTS_TEXT=$!
for _ in $(seq 300); do [ "$(grep -c 'subscribed to events' "$WORK/serve.log")" -ge 2 ] && break; sleep 0.1; done
expect 0 "$POISE" fsmap "$IMG" --json
OFF=$(python3 -c "import json; print([r for r in json.load(open('$WORK/out')) if r.get('path')=='/d/data' and r['file_offset']==0][0]['device_offset'])")
expect 0 "$POISE" inject-poison "$IMG" --offset $((OFF + 8192)) --length 64
contains "$WORK/serve.log" "poisoned device bytes $((OFF + 8192))"
# Told at once: the block is recorded bad (and both reflink sharers lose it) before anyone reads it.
expect 0 "$POISE" badblocks "$IMG"
contains "$WORK/out" "lost: /d/data bytes 8192..12288"
contains "$WORK/out" "lost: /d/copy bytes 8192..12288"
expect 4 "$POISE" cat "$IMG" /d/copy
contains "$WORK/err" "file bytes 8192..12288 are lost"
expect 0 "$POISE" cat "$IMG" /d/copy --offset 12288 --length 4096
expect 0 "$POISE" offline "$IMG"
expect 0 "$POISE" offline "$IMG" --cancel
stop
wait "$EVENTS_JSON" && ok || bad "poise events --json did not end cleanly when the server stopped"
wait "$EVENTS_TEXT" && ok || bad "poise events did not end cleanly when the server stopped"
python3 - "$WORK/events.json" "$((OFF + 8192))" <<'PY' && ok || bad "the event stream: $(head -c 600 "$WORK/events.json")"
import json, sys
events = [json.loads(line) for line in open(sys.argv[1])]
kinds = [e["event"] for e in events]
failure = [e for e in events if e["event"] == "memory_failure"][0]
assert failure["device_offset"] == int(sys.argv[2]) // 4096 * 4096, failure
paths = sorted((f["path"], f["file_offset"], f["length"]) for f in failure["files"])
assert paths == [("/d/copy", 8192, 4096), ("/d/data", 8192, 4096)], paths
assert "recorded bad" in failure["action"], failure
assert kinds.index("pre_remove") < kinds.index("removal_cancelled") < kinds.index("server_stopped"), kinds
PY
contains "$WORK/events.txt" "memory_failure: device bytes"
contains "$WORK/events.txt" "lost: /d/copy bytes 8192..12288"
contains "$WORK/events.txt" "server_stopped"

# --- another user, checked as the kernel would check it (needs root for setpriv)
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
  AS_NOBODY=(setpriv --reuid=65534 --regid=65534 --clear-groups)
  chmod 755 "$WORK"
  chmod 644 "$IMG"
  serve "$IMG"
  expect 11 "${AS_NOBODY[@]}" "$POISE" ls "$IMG" /
  contains "$WORK/err" "permission denied by the socket's mode"
  stop
  serve "$IMG" --socket-mode 0666
  [ "$(stat -c %a "$IMG.sock")" = 666 ] && ok || bad "--socket-mode 0666 not applied"
  expect 0 "$POISE" mkdir "$IMG" /pub --mode 1777
  expect 0 "$POISE" mkdir "$IMG" /closed --mode 700
  chmod 600 "$WORK/hello"
  expect 0 "$POISE" put "$IMG" "$WORK/hello" /secret
  expect 0 "$POISE" put "$IMG" "$WORK/hello" /pub/roots
  expect 0 "$POISE" put "$IMG" "$WORK/hello" /closed/inner
  expect 0 "${AS_NOBODY[@]}" "$POISE" ls "$IMG" /
  # Every entry is listed (ls names each by number once it is listed; before,
  # another user's ls printed nothing and exited 0).
  for name in pub/ closed/ secret; do contains "$WORK/out" "$name"; done
  expect 11 "${AS_NOBODY[@]}" "$POISE" cat "$IMG" /secret
  # Special files through the socket: nobody may make a FIFO where it may
  # write, never a device node (mknod(2)'s CAP_MKNOD rule); root may.
  mkdir -p "$WORK/sptree"
  mkfifo -m 0640 "$WORK/sptree/fifo"
  mknod "$WORK/sptree/null" c 1 3
  chmod 755 "$WORK/sptree"
  expect 8 "${AS_NOBODY[@]}" "$POISE" put -r "$IMG" "$WORK/sptree" /pub/sp
  contains "$WORK/err" "only root may make a device node"
  expect 0 "$POISE" stat "$IMG" /pub/sp/fifo --json
  contains "$WORK/out" '"type": "fifo"'
  contains "$WORK/out" '"uid": 65534'
  contains "$WORK/out" '"mode": "0640"'
  expect 3 "$POISE" stat "$IMG" /pub/sp/null
  expect 0 "$POISE" put -r "$IMG" "$WORK/sptree" /pub/rootsp
  expect 0 "$POISE" stat "$IMG" /pub/rootsp/null --json
  contains "$WORK/out" '"type": "char_device"'
  contains "$WORK/out" '"rdev_minor": 3'
  expect 11 "${AS_NOBODY[@]}" "$POISE" ls "$IMG" /closed
  expect 11 "${AS_NOBODY[@]}" "$POISE" stat "$IMG" /closed/inner
  expect 11 "${AS_NOBODY[@]}" "$POISE" mkdir "$IMG" /mine
  expect 11 "${AS_NOBODY[@]}" "$POISE" rm "$IMG" /secret
  expect 11 "${AS_NOBODY[@]}" "$POISE" fsmap "$IMG"
  expect 11 "${AS_NOBODY[@]}" "$POISE" inject-poison "$IMG" --offset 0 --length 64
  expect 0 "${AS_NOBODY[@]}" "$POISE" put "$IMG" "$WORK/data" /pub/theirs
  expect 0 "$POISE" stat "$IMG" /pub/theirs --json
  contains "$WORK/out" '"uid": 65534'
  contains "$WORK/out" '"gid": 65534'
  # An inode number is no way around a directory the user cannot search, and
  # direct mappings (the device descriptor) are for root and the server's user.
  expect 0 "$POISE" stat "$IMG" /closed/inner --json
  INNER=$(python3 -c "import json; print(json.load(open('$WORK/out'))['ino'])")
  # Raw requests (docs/protocol.md): ask(op, body) answers the reply's status.
  cat >"$WORK/wire.py" <<'PY'
import socket, struct, sys
def frame(op, body, id=1): return struct.pack('<IHHQ', len(body), op, 0, id) + body
def string(b): return struct.pack('<I', len(b)) + b
sock = socket.socket(socket.AF_UNIX); sock.connect(sys.argv[1])
def ask(op, body):
    sock.sendall(frame(op, body))
    head = sock.recv(16, socket.MSG_WAITALL)
    n = struct.unpack('<I', head[:4])[0]
    data = sock.recv(n, socket.MSG_WAITALL) if n else b''
    return struct.unpack('<i', data[:4])[0]
assert ask(1, struct.pack("<I", 8)) == 0  # hello (protocol version 8)
PY
  cat >"$WORK/raw.py" <<'PY'
from wire import *
ino = int(sys.argv[2])
print(ask(13, struct.pack('<QQQ', ino, 0, 16)), ask(11, struct.pack('<Q', ino)), ask(12, struct.pack('<Q', ino)),
      ask(32, bytes([0])), ask(51, struct.pack('<QQQ', ino, 0, 16)))
PY
  "${AS_NOBODY[@]}" /usr/bin/python3 "$WORK/raw.py" "$IMG.sock" "$INNER" >"$WORK/out" 2>"$WORK/err"
  [ "$(cat "$WORK/out")" = "13 13 13 13 13" ] && ok || bad "read/stat/path-of by inode number, the device descriptor or a pin, given to another user: $(cat "$WORK/out" "$WORK/err")"
  # A NUL byte in a name is refused (it would make the image unmountable).
  cat >"$WORK/nul.py" <<'PY'
from wire import *
name = b'/pub/a\0b'
print(ask(3, string(name) + struct.pack('<I', 0o644)), ask(4, string(name) + struct.pack('<I', 0o755)))
PY
  "${AS_NOBODY[@]}" /usr/bin/python3 "$WORK/nul.py" "$IMG.sock" >"$WORK/out" 2>"$WORK/err"
  [ "$(cat "$WORK/out")" = "22 22" ] && ok || bad "a name with a NUL byte was not refused: $(cat "$WORK/out" "$WORK/err")"
  # Unnamed files (O_TMPFILE): made only where the caller may make a name, and
  # linked only by the client that made them, only where it may make a name.
  cat >"$WORK/tmpfile.py" <<'PY'
from wire import *
def ask_ino(op, body):
    sock.sendall(frame(op, body))
    head = sock.recv(16, socket.MSG_WAITALL)
    data = sock.recv(struct.unpack('<I', head[:4])[0], socket.MSG_WAITALL)
    status = struct.unpack('<i', data[:4])[0]
    return status, struct.unpack('<Q', data[4:12])[0] if status == 0 else 0
mode = struct.pack('<I', 0o644)
denied, _ = ask_ino(58, string(b'/') + mode)
made, ino = ask_ino(58, string(b'/pub') + mode)
print(denied, made, ask(59, struct.pack('<Q', int(sys.argv[2])) + string(b'/pub/not-mine') + b'\0'),
      ask(59, struct.pack('<Q', ino) + string(b'/not-here') + b'\0'),
      ask(59, struct.pack('<Q', ino) + string(b'/pub/roots') + b'\1'),  # root's file in the sticky /pub
      ask(59, struct.pack('<Q', ino) + string(b'/pub/tmp-linked') + b'\0'))
PY
  "${AS_NOBODY[@]}" /usr/bin/python3 "$WORK/tmpfile.py" "$IMG.sock" "$INNER" >"$WORK/out" 2>"$WORK/err"
  [ "$(cat "$WORK/out")" = "13 0 9 13 1 0" ] && ok || bad "unnamed files through the server: $(cat "$WORK/out" "$WORK/err")"
  expect 0 "$POISE" stat "$IMG" /pub/tmp-linked
  contains "$WORK/out" "uid: 65534"
  # Hard links as the kernel with fs.protected_hardlinks: not to another user's 0600 file.
  expect 8 "${AS_NOBODY[@]}" "$POISE" ln "$IMG" /secret /pub/stolen-link
  # The sticky bit: nobody may remove root's file in /pub, only its own.
  "${AS_NOBODY[@]}" "$POISE" rm "$IMG" /pub/roots >"$WORK/out" 2>"$WORK/err"
  [ $? -ne 0 ] && ok || bad "a sticky directory let another user remove root's file"
  expect 0 "$POISE" stat "$IMG" /pub/roots
  expect 0 "${AS_NOBODY[@]}" "$POISE" rm "$IMG" /pub/theirs
  # rm -r removes by directory inode through the server, with the same rules:
  # nothing in root's directory, and in a sticky directory only one's own.
  expect 0 "$POISE" mkdir "$IMG" -p /rootdir/sub
  expect 0 "$POISE" put "$IMG" "$WORK/hello" /rootdir/sub/f
  expect 11 "${AS_NOBODY[@]}" "$POISE" rm "$IMG" /rootdir -r
  expect 0 "$POISE" stat "$IMG" /rootdir/sub/f
  expect 0 "${AS_NOBODY[@]}" "$POISE" mkdir "$IMG" /pub/mixed
  expect 0 "$POISE" mkdir "$IMG" /pub/mixed/sticky --mode 1777
  expect 0 "$POISE" put "$IMG" "$WORK/hello" /pub/mixed/sticky/roots
  expect 8 "${AS_NOBODY[@]}" "$POISE" rm "$IMG" /pub/mixed -r
  contains "$WORK/err" "sticky"
  expect 0 "$POISE" stat "$IMG" /pub/mixed/sticky/roots
  expect 0 "$POISE" rm "$IMG" /pub/mixed/sticky/roots
  expect 0 "${AS_NOBODY[@]}" "$POISE" rm "$IMG" /pub/mixed -r
  expect 3 "$POISE" stat "$IMG" /pub/mixed
  # A directory reached once is not reachable for good: moved where the user
  # cannot search, it can no longer be listed or changed by inode number.
  expect 0 "${AS_NOBODY[@]}" "$POISE" mkdir "$IMG" -p /pub/walk/inner
  expect 0 "${AS_NOBODY[@]}" "$POISE" put "$IMG" "$WORK/data" /pub/walk/inner/f
  cat >"$WORK/walk.py" <<'PY'
import os, time
from wire import *
def ask_body(op, body):
    sock.sendall(frame(op, body))
    head = sock.recv(16, socket.MSG_WAITALL)
    n = struct.unpack('<I', head[:4])[0]
    return sock.recv(n, socket.MSG_WAITALL) if n else b''
reply = ask_body(2, string(b'/pub/walk/inner'))       # lookup
assert struct.unpack('<i', reply[:4])[0] == 0, reply
ino = struct.unpack('<Q', reply[4:12])[0]
print(ask(55, struct.pack('<QQ', ino, 0)), flush=True)  # readdir-at while reachable
while not os.path.exists(sys.argv[2]): time.sleep(0.02)
print(ask(55, struct.pack('<QQ', ino, 0)), ask(56, struct.pack('<Q', ino) + string(b'f')), flush=True)
PY
  rm -f "$WORK/walk.go"
  "${AS_NOBODY[@]}" /usr/bin/python3 "$WORK/walk.py" "$IMG.sock" "$WORK/walk.go" >"$WORK/walk.out" 2>"$WORK/walk.err" &
  WALKER=$!
  for _ in $(seq 200); do [ -s "$WORK/walk.out" ] && break; sleep 0.05; done
  expect 0 "$POISE" mv "$IMG" /pub/walk /closed/walk
  touch "$WORK/walk.go"
  wait "$WALKER"
  [ "$(tr '\n' ' ' <"$WORK/walk.out")" = "0 13 13 " ] && ok ||
    bad "a directory moved out of reach was still usable by inode number: $(cat "$WORK/walk.out" "$WORK/walk.err")"
  expect 0 "$POISE" stat "$IMG" /closed/walk/inner/f
  # Root's 0644 file is readable but not writable by others.
  expect 0 "$POISE" put "$IMG" "$WORK/data" /readable
  expect 0 "${AS_NOBODY[@]}" "$POISE" cat "$IMG" /readable
  echo other >"$WORK/other"
  chmod 644 "$WORK/other"
  expect 11 "${AS_NOBODY[@]}" "$POISE" put "$IMG" "$WORK/other" /readable
  expect 0 "$POISE" cat "$IMG" /readable
  same "$WORK/out" "$WORK/data" "a denied put changed the file"
  # Extended attributes as the kernel checks them: user. by the file's mode,
  # trusted. root's alone (not even listed for others), ACLs by the owner.
  expect 0 "$POISE" xattr "$IMG" /readable user.k --set v
  expect 0 "$POISE" xattr "$IMG" /readable trusted.t --set root-only
  expect 0 "$POISE" xattr "$IMG" /secret user.s --set hidden
  expect 0 "${AS_NOBODY[@]}" "$POISE" xattr "$IMG" /readable
  contains "$WORK/out" 'user.k="v"'
  not_contains "$WORK/out" "trusted.t"
  expect 3 "${AS_NOBODY[@]}" "$POISE" xattr "$IMG" /readable trusted.t
  expect 11 "${AS_NOBODY[@]}" "$POISE" xattr "$IMG" /readable user.k --set x
  expect 11 "${AS_NOBODY[@]}" "$POISE" xattr "$IMG" /secret user.s
  expect 8 "${AS_NOBODY[@]}" "$POISE" xattr "$IMG" /readable trusted.t --set mine
  expect 8 "${AS_NOBODY[@]}" "$POISE" xattr "$IMG" /readable system.posix_acl_access --set-hex 0x0200000001000600ffffffff04000400ffffffff20000400ffffffff
  expect 0 "${AS_NOBODY[@]}" "$POISE" put "$IMG" "$WORK/data" /pub/mine
  expect 0 "${AS_NOBODY[@]}" "$POISE" xattr "$IMG" /pub/mine user.mine --set ok
  # Its own ACL: u::rw-, g::r--, o::r-- in Linux's form sets the mode bits.
  expect 0 "${AS_NOBODY[@]}" "$POISE" xattr "$IMG" /pub/mine system.posix_acl_access --set-hex 0x0200000001000600ffffffff04000400ffffffff20000000ffffffff
  expect 0 "$POISE" stat "$IMG" /pub/mine --json
  contains "$WORK/out" '"mode": "0640"'
  expect 0 "$POISE" xattr "$IMG" /readable user.k
  [ "$(cat "$WORK/out")" = v ] && ok || bad "a denied xattr change changed the value"
  # A write through the socket drops a file capability (as the kernel's
  # file_remove_privs does for every writer).
  expect 0 "${AS_NOBODY[@]}" "$POISE" put "$IMG" "$WORK/data" /pub/cap
  expect 0 "$POISE" xattr "$IMG" /pub/cap security.capability --set-hex 0x01
  expect 0 "$POISE" xattr "$IMG" /pub/cap user.keep --set yes
  expect 0 "${AS_NOBODY[@]}" "$POISE" truncate "$IMG" /pub/cap 1
  expect 3 "$POISE" xattr "$IMG" /pub/cap security.capability
  expect 0 "$POISE" xattr "$IMG" /pub/cap user.keep
  # ... and so does a reflink into it (as FICLONE); a directory's bits are never
  # touched by a write refused as EISDIR.
  expect 0 "$POISE" xattr "$IMG" /pub/cap security.capability --set-hex 0x01
  expect 0 "${AS_NOBODY[@]}" "$POISE" put "$IMG" "$WORK/data" /pub/src
  expect 0 "${AS_NOBODY[@]}" "$POISE" reflink "$IMG" /pub/src /pub/cap
  expect 3 "$POISE" xattr "$IMG" /pub/cap security.capability
  expect 0 "$POISE" mkdir "$IMG" /pub/sgid --mode 2777
  expect 8 "${AS_NOBODY[@]}" "$POISE" truncate "$IMG" /pub/sgid 0
  expect 0 "$POISE" stat "$IMG" /pub/sgid --json
  contains "$WORK/out" '"mode": "2777"'
  # A file nobody makes there belongs to root's group: no set-group-ID for it.
  chmod 2755 "$WORK/data"
  expect 0 "${AS_NOBODY[@]}" "$POISE" put "$IMG" "$WORK/data" /pub/sgid/made
  chmod 0644 "$WORK/data"
  expect 0 "$POISE" stat "$IMG" /pub/sgid/made --json
  contains "$WORK/out" '"mode": "0755"'
  contains "$WORK/out" '"gid": 0'
  # Moving a directory to another parent needs write permission on it (its
  # ".." changes); within its parent it does not.
  expect 0 "$POISE" mkdir "$IMG" /open --mode 0777
  expect 0 "$POISE" mkdir "$IMG" /open/p1 --mode 0777
  expect 0 "$POISE" mkdir "$IMG" /open/p2 --mode 0777
  expect 0 "$POISE" mkdir "$IMG" /open/p1/victim --mode 0755
  expect 11 "${AS_NOBODY[@]}" "$POISE" mv "$IMG" /open/p1/victim /open/p2/victim
  expect 0 "$POISE" stat "$IMG" /open/p1/victim
  expect 0 "${AS_NOBODY[@]}" "$POISE" mv "$IMG" /open/p1/victim /open/p1/renamed
  # --mode is mkdir -m's: set-group-ID only in a group of the caller's. A
  # write by one outside the file's group drops set-group-ID even without
  # group execute (Linux 6.2 on).
  expect 0 "${AS_NOBODY[@]}" "$POISE" mkdir "$IMG" /open/d6 --mode 6777
  expect 0 "$POISE" stat "$IMG" /open/d6 --json
  contains "$WORK/out" '"mode": "6777"'
  expect 0 "${AS_NOBODY[@]}" "$POISE" mkdir "$IMG" /pub/sgid/d2 --mode 0777
  expect 0 "$POISE" stat "$IMG" /pub/sgid/d2 --json
  contains "$WORK/out" '"mode": "2777"'
  chmod 2767 "$WORK/data"
  expect 0 "$POISE" put "$IMG" "$WORK/data" /open/sgnx
  chmod 0644 "$WORK/data"
  expect 0 "${AS_NOBODY[@]}" "$POISE" truncate "$IMG" /open/sgnx 5
  expect 0 "$POISE" stat "$IMG" /open/sgnx --json
  contains "$WORK/out" '"mode": "0767"'
  # In a sticky directory only its owner changes its user. attributes.
  expect 8 "${AS_NOBODY[@]}" "$POISE" xattr "$IMG" /pub user.x --set 1
  # The socket honours ACLs as the kernel does: u::rw-, u:65534:---, g::r--,
  # m::r--, o::r-- denies nobody what the mode bits (0644) would allow.
  expect 0 "$POISE" put "$IMG" "$WORK/data" /acl-denied
  expect 0 "$POISE" xattr "$IMG" /acl-denied system.posix_acl_access --set-hex \
    0x0200000001000600ffffffff02000000feff000004000400ffffffff10000400ffffffff20000400ffffffff
  expect 11 "${AS_NOBODY[@]}" "$POISE" cat "$IMG" /acl-denied
  expect 0 "$POISE" xattr "$IMG" /acl-denied system.posix_acl_access --remove
  expect 0 "${AS_NOBODY[@]}" "$POISE" cat "$IMG" /acl-denied
  stop
  expect 0 "$POISE" check "$IMG"
  # A socket another user bound beside an image is not believed.
  mkdir -m 1777 "$WORK/open"
  cp "$IMG" "$WORK/open/img"
  cat >"$WORK/fake.py" <<'PY'
import socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4)
print("ready", flush=True)
c, _ = s.accept()
head = c.recv(16, socket.MSG_WAITALL)
n, op, _, rid = struct.unpack('<IHHQ', head)
c.recv(n, socket.MSG_WAITALL)
body = struct.pack('<iIIQ', 0, 1, 4242, 7)
c.sendall(struct.pack('<IHHQ', len(body), op, 0, rid) + body)
c.recv(1 << 16)
PY
  "${AS_NOBODY[@]}" /usr/bin/python3 "$WORK/fake.py" "$WORK/open/img.sock" >"$WORK/fake.out" 2>&1 &
  FAKE=$!
  for _ in $(seq 100); do grep -q ready "$WORK/fake.out" 2>/dev/null && break; sleep 0.1; done
  expect 11 "$POISE" ls "$WORK/open/img" /
  contains "$WORK/err" "not trusted"
  kill "$FAKE" 2>/dev/null; wait "$FAKE" 2>/dev/null
else
  echo "serve_test: not root (or no setpriv): the other-user checks are skipped"
fi

# --- kill -9 of the server under load: every put a client was told is done survives
serve "$IMG"
"$POISE" events "$IMG" >"$WORK/events.killed" 2>"$WORK/events.killed.err" &
EVENTS_KILLED=$!
(
  for i in $(seq 1 400); do
    [ -e "$WORK/stop-writing" ] && break
    "$POISE" put "$IMG" "$WORK/hello" "/load$i" >/dev/null 2>&1 && echo "$i" >>"$WORK/acked"
  done
) &
WRITER=$!
for _ in $(seq 100); do [ -s "$WORK/acked" ] && [ "$(wc -l <"$WORK/acked")" -ge 20 ] && break; sleep 0.1; done
kill -9 "$SERVER"
touch "$WORK/stop-writing"  # (one or two more puts go to the image itself)
wait "$WRITER"
wait "$EVENTS_KILLED" && bad "poise events must fail when its server is killed, not end as after a stop" || ok
contains "$WORK/events.killed.err" "went away without stopping"
[ -S "$IMG.sock" ] && ok || bad "expected the killed server's socket to be left behind"
# The socket left behind answers nobody: commands use the image itself.
expect 0 "$POISE" check "$IMG"
contains "$WORK/out" "clean"
acked=$(wc -l <"$WORK/acked")
[ "$acked" -ge 20 ] && ok || bad "only $acked puts were acknowledged before the kill"
missing=0
while read -r i; do
  "$POISE" stat "$IMG" "/load$i" >/dev/null 2>&1 || missing=$((missing + 1))
done <"$WORK/acked"
[ "$missing" -eq 0 ] && ok || bad "$missing acknowledged puts were lost when the server was killed"
# A new server replaces the dead one's socket.
serve "$IMG" && ok || bad "a server could not start over a dead server's socket: $(cat "$WORK/err")"
expect 0 "$POISE" ls "$IMG" /

# --- put -r through a server killed partway, on a terminal (Python's pty), so
# that its progress line shows: it stops at the first failure and tells it
# once, on a line of its own, not once for every file left.
mkdir "$WORK/many"
for i in $(seq 1 2000); do echo "$i" >"$WORK/many/f$i"; done
python3 -c 'import pty, sys; sys.exit(1 if pty.spawn(sys.argv[1:]) else 0)' \
  "$POISE" put -r "$IMG" "$WORK/many" /many >"$WORK/many.tty" 2>&1 &
TTY_PID=$!
for _ in $(seq 500); do
  [ "$("$POISE" ls "$IMG" /many 2>/dev/null | wc -l)" -ge 20 ] && break
  sleep 0.01
done
PUT_MANY=$(pgrep -n -f "put -r $IMG $WORK/many")
kill -STOP "$PUT_MANY"  # (so that files are left whatever the machine's speed)
kill -9 "$SERVER"
sleep 0.2
kill -CONT "$PUT_MANY"
wait "$TTY_PID" && bad "put -r must fail when its server is killed" || ok
[ "$(grep -ac 'poise: ' "$WORK/many.tty")" -eq 1 ] && ok ||
  bad "put -r through a killed server must tell it once: $(grep -a 'poise: ' "$WORK/many.tty" | head -3) ... ($(grep -ac 'poise: ' "$WORK/many.tty") lines)"
contains "$WORK/many.tty" "server went away"
contains "$WORK/many.tty" "put: "  # (the progress line was shown)
grep -aq 'MiBpoise' "$WORK/many.tty" && bad "the error must start a line of its own: $(grep -a 'MiBpoise' "$WORK/many.tty" | head -c 200)" || ok
serve "$IMG" && ok || bad "a server could not start after put -r lost its server: $(cat "$WORK/err")"
stop

# --- poise offline: pre-remove, cancel, remove
expect 8 "$POISE" offline "$IMG"
contains "$WORK/err" "not served"
expect 8 "$POISE" events "$IMG"
contains "$WORK/err" "not served"
serve "$IMG"
expect 8 "$POISE" offline "$IMG" --cancel   # nothing to cancel
contains "$WORK/err" "no removal is under way"
expect 0 "$POISE" offline "$IMG"
contains "$WORK/out" "pre-removed"
expect 0 "$POISE" ls "$IMG" /     # reading goes on while frozen
expect 0 "$POISE" offline "$IMG" --cancel
expect 0 "$POISE" mkdir "$IMG" /after-cancel
expect 2 "$POISE" offline "$IMG" --cancel --remove
expect 0 "$POISE" offline "$IMG" --remove
contains "$WORK/out" "removed"
contains "$WORK/serve.log" "removed"
"$POISE" mkdir "$IMG" /after-removal >"$WORK/out" 2>"$WORK/err"
[ $? -ne 0 ] && ok || bad "a write after removal succeeded"
expect 4 "$POISE" info "$IMG"          # nothing describes a removed filesystem as if it were there
contains "$WORK/err" "removed"
expect 4 "$POISE" check "$IMG"
expect 1 "$POISE" offline "$IMG" --cancel   # already removed
stop && ok || bad "the server did not stop after a removal"
expect 0 "$POISE" check "$IMG"        # mounts again where the memory now lives
expect 0 "$POISE" stat "$IMG" /after-cancel
expect 3 "$POISE" stat "$IMG" /after-removal

# --- explicit sockets and bad arguments
serve "$IMG" --socket "$WORK/custom.sock"
expect 0 "$POISE" --socket "$WORK/custom.sock" ls "$IMG" /d
expect 0 "$POISE" ls "$IMG" /d --socket "$WORK/custom.sock"
expect 3 "$POISE" --socket "$WORK/nobody.sock" ls "$IMG" /d
stop
expect 2 "$POISE" serve "$IMG" --socket-mode 999
expect 2 "$POISE" serve "$IMG" --socket-group no-such-group-here
expect 3 "$POISE" serve "$WORK/missing.img" --background
touch "$WORK/not-a-socket"
expect 7 "$POISE" serve "$IMG" --background --socket "$WORK/not-a-socket"
[ -f "$WORK/not-a-socket" ] && ok || bad "serve removed a file that was not a socket"

finish serve_test
