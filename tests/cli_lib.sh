# Shared by the CLI test scripts (sourced): a scratch folder, counters, and the
# checks each test line uses. Set WORK_NAME before sourcing to name the folder.
set -u
WORK=$(mktemp -d "${TMPDIR:-/tmp}/${WORK_NAME:-poise-test}.XXXXXX")
MOUNTS=()  # host mounts a test made, undone at exit
cleanup() {
  for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
IMG=$WORK/test.img
passed=0
failed=0

ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }

# expect CODE CMD...: runs CMD (output in $WORK/out and $WORK/err), checks its exit code.
expect() {
  local want=$1; shift
  "$@" >"$WORK/out" 2>"$WORK/err"
  local got=$?
  if [ "$got" -eq "$want" ]; then ok; else bad "$* exited $got, expected $want: $(head -c 300 "$WORK/err")"; fi
}
# contains FILE TEXT
contains() { if grep -qF -- "$2" "$1"; then ok; else bad "$1 lacks '$2': $(head -c 300 "$1")"; fi; }
not_contains() { if grep -qF -- "$2" "$1"; then bad "$1 has '$2': $(head -c 300 "$1")"; else ok; fi; }

# used_bytes: the bytes in use on $IMG (poise info --json; through its server if it has one).
used_bytes() { "$POISE" info "$IMG" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["used_bytes"])'; }

# slow_put DST: starts `poise put $IMG - DST`, fed 3,000,000 bytes through a
# pipe that then stays open; returns once all of them are in (at most a pipe's
# 64 KiB short: two full megabytes were read) and the put blocks reading for
# more (syscall 0, read, on descriptor 0), so both megabytes are written. Its
# pid in $PUT_PID.
slow_put() {
  rm -f "$WORK/fed"
  { head -c 3000000 /dev/urandom; touch "$WORK/fed"; sleep 30; } | "$POISE" put "$IMG" - "$1" 2>/dev/null &
  PUT_PID=$!
  for _ in $(seq 600); do [ -e "$WORK/fed" ] && break; sleep 0.05; done
  for _ in $(seq 200); do
    case "$(cat "/proc/$PUT_PID/syscall" 2>/dev/null)" in "0 0x0 "*) break ;; esac
    sleep 0.05
  done
}

# finish NAME: the closing line test runners read, and the exit code.
finish() {
  echo "$1: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}
