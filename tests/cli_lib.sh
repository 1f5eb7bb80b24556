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

# finish NAME: the closing line test runners read, and the exit code.
finish() {
  echo "$1: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}
