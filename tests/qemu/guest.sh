# The checks that run inside the QEMU guest (tests/qemu/run.sh makes the
# initramfs and boots it). busybox sh; runs as root (PID 1's child).
# Usage: sh /guest.sh first|again
#   first: make the device-dax namespaces, run the device-dax unit tests and a
#          CLI round trip, meet a real kernel memory failure through poise serve
#   again: after a reboot, everything the first boot left on the device is still there
phase=${1:-first}
export PATH=/bin
checks=0
failed=0
ok() { checks=$((checks + 1)); echo "ok - $1"; }
not_ok() {
  checks=$((checks + 1)); failed=$((failed + 1))
  echo "not ok - $1"
  [ -n "${2:-}" ] && printf '%s\n' "$2" | tail -n 30 | sed 's/^/#   /'
}
server_pid() {
  for p in /proc/[0-9]*; do
    tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^poise serve' && echo ${p#/proc/}
  done
}
# check NAME COMMAND...: ok when the command succeeds
check() {
  name=$1; shift
  if out=$("$@" 2>&1); then ok "$name"; else not_ok "$name (exit $?)" "$out"; fi
}
# check_exit NAME CODE COMMAND...: ok when the command exits with CODE
check_exit() {
  name=$1; code=$2; shift 2
  out=$("$@" 2>&1); got=$?
  if [ "$got" = "$code" ]; then ok "$name"; else not_ok "$name (exit $got, wanted $code)" "$out"; fi
}

echo "# guest: kernel $(uname -r), phase $phase"
for m in libnvdimm nfit nd_btt nd_pmem device_dax dax_pmem hwpoison-inject; do
  insmod /modules/$m.ko || not_ok "insmod $m"
done
# The NVDIMMs' namespaces come up asynchronously after the drivers bind.
for i in $(seq 50); do [ -e /sys/bus/nd/devices/namespace1.0 ] && break; sleep 0.1; done

dax=/dev/dax0.0     # 4 KiB alignment: direct mappings work
dax2m=/dev/dax1.0   # the default 2 MiB alignment: no direct mappings
if [ "$phase" = first ]; then
  check "a device-dax namespace with 4 KiB alignment" ndctl create-namespace -f -e namespace0.0 -m devdax --align 4K
  check "a device-dax namespace with the default alignment" ndctl create-namespace -f -e namespace1.0 -m devdax
else
  for i in $(seq 50); do [ -e $dax ] && [ -e $dax2m ] && break; sleep 0.1; done
fi
if [ -c $dax ] && [ -c $dax2m ]; then ok "$dax and $dax2m are device-dax character devices"; else
  not_ok "no device-dax devices" "$(ls -l /dev; ndctl list -N 2>&1)"
  echo "# guest: $checks checks, $failed failed"; exit 1
fi

# A deterministic 1 MiB file, so the second boot knows what the first wrote.
seq 1 160000 | head -c 1048576 > /tmp/data
data_sum=$(md5sum < /tmp/data)

if [ "$phase" = first ]; then
  # --- the device-dax unit tests, one line each ---
  tests=$(dax_guest_test --gtest_list_tests --gtest_filter=-DaxServed.* 2>&1)
  listed=$?
  tests=$(printf '%s\n' "$tests" | awk '/^[^ ]/ {suite=$1} /^  / {print suite $1}')
  count=$(printf '%s\n' "$tests" | grep -c .)
  if [ $listed -eq 0 ] && [ "$count" -ge 5 ]; then ok "dax_guest_test lists its $count tests"; else
    not_ok "dax_guest_test could not list its tests (exit $listed, $count listed)" "$(dax_guest_test --gtest_list_tests 2>&1)"
  fi
  for t in $tests; do
    out=$(POISE_DAX=$dax POISE_DAX_2M=$dax2m dax_guest_test --gtest_filter="$t" 2>&1)
    rc=$?
    printf '%s\n' "$out" | grep '^# '
    if [ $rc -eq 0 ] && ! printf '%s\n' "$out" | grep -q '\[  SKIPPED \]'; then ok "$t"; else not_ok "$t" "$out"; fi
  done

  # --- a CLI round trip on the real device ---
  check "mkfs on $dax" poise mkfs $dax --force
  check "put a 1 MiB file" poise put $dax /tmp/data /data
  check "reflink it" poise reflink $dax /data /clone
  check "get the clone back" poise get $dax /clone /tmp/clone
  check "the clone is the file" cmp /tmp/data /tmp/clone
  records=$(poise fsmap $dax --json | tr -d ' \n')
  data_at=$(printf '%s' "$records" | grep -o '{[^{}]*"path":"/data"[^{}]*}' | head -n1 | sed -n 's/.*"device_offset":\([0-9]*\).*/\1/p')
  clone_at=$(printf '%s' "$records" | grep -o '{[^{}]*"path":"/clone"[^{}]*}' | head -n1 | sed -n 's/.*"device_offset":\([0-9]*\).*/\1/p')
  if [ -n "$data_at" ] && [ "$data_at" = "$clone_at" ] &&
     printf '%s' "$records" | grep -o '{[^{}]*"path":"/clone"[^{}]*}' | head -n1 | grep -q '"shared":true'; then
    ok "fsmap shows the file and its clone on the same shared blocks (device offset $data_at)"
  else
    not_ok "fsmap: /data at '$data_at', /clone at '$clone_at'" "$(poise fsmap $dax)"
  fi
  check "check is clean" poise check $dax
  check "mkfs on the 2 MiB namespace $dax2m" poise mkfs $dax2m --force
  check "put and cat on $dax2m" sh -c "poise put $dax2m /tmp/data /f && poise cat $dax2m /f | cmp - /tmp/data"

  # --- a real kernel memory failure under a served filesystem ---
  poise serve $dax --background --log /tmp/serve.log >/tmp/serve.out 2>&1
  if [ $? -eq 0 ]; then ok "poise serve $dax"; else not_ok "poise serve" "$(cat /tmp/serve.out /tmp/serve.log)"; fi
  poise events $dax --json > /tmp/events.json 2>&1 &
  events=$!
  check "put through the server" poise put $dax /tmp/data /served
  # A client process maps a file and meets a real machine check, then pins
  # more of it and meets another: the kernel tells the client; the server
  # must hear of both.
  check "put /mapped through the server" poise put $dax /tmp/data /mapped
  out=$(POISE_SOCKET=$dax.sock dax_guest_test --gtest_filter=DaxServed.* 2>&1)
  rc=$?
  printf '%s\n' "$out" | grep '^# '
  if [ $rc -eq 0 ] && ! printf '%s\n' "$out" | grep -q '\[  SKIPPED \]'; then
    ok "DaxServed.* (a real machine check in a client's mapping, and in a client's pin)"
  else
    not_ok "DaxServed.* (a real machine check in a client's mapping, and in a client's pin)" "$out"
  fi
  grep 'machine check' /tmp/serve.log | head -n 2 | sed 's/^/# server log: /'
  check "the server's log names the client's report" grep -q 'reported a machine check in its mapping' /tmp/serve.log
  # The block holding bytes 64 KiB.. of /served, and the physical frame behind it.
  record=$(poise fsmap $dax --json | tr -d ' \n' | grep -o '{[^{}]*"path":"/served"[^{}]*}' | head -n1)
  offset=$(printf '%s' "$record" | sed -n 's/.*"device_offset":\([0-9]*\).*/\1/p')
  file_offset=$(printf '%s' "$record" | sed -n 's/.*"file_offset":\([0-9]*\).*/\1/p')
  dax_start=$(cat /sys/bus/dax/devices/dax0.0/resource 2>/dev/null || echo "")
  if [ -n "$offset" ] && [ -n "$dax_start" ]; then
    block=$((offset + 65536 - ${file_offset:-0}))
    pfn=$(( (dax_start + block) / 4096 ))
    echo "# /served: device offset $offset; failing device bytes $block..$((block + 4096)), frame $(printf 0x%x $pfn)"
    echo "$(printf 0x%x $pfn)" > /sys/kernel/debug/hwpoison/corrupt-pfn
    for i in $(seq 100); do poise badblocks $dax 2>/dev/null | grep -qw "$block" && break; sleep 0.1; done
    check "the server took in the kernel's report (badblocks lists device byte $block)" sh -c "poise badblocks $dax | grep -qw $block"
    check "the next boot is told which block to expect" sh -c "printf '%s' $block | poise put $dax - /expected-bad"
    check_exit "cat of the file fails with EIO (exit 4)" 4 poise cat $dax /served
    check "the bytes before the lost block read" sh -c "poise cat $dax /served --length 65536 | cmp -n 65536 - /tmp/data"
    check "the bytes after it read" sh -c "poise cat $dax /served --offset 69632 | cmp - /tmp/data 0 69632"
    check "the server is alive" poise info $dax
    pid=$(server_pid)
    kill -TERM $pid
    alive() { [ -e /proc/$1 ] && ! grep -q '^State:.*Z' /proc/$1/status 2>/dev/null; }  # (a zombie has stopped)
    for i in $(seq 100); do alive $pid || [ -e $dax.sock ] || break; sleep 0.1; done
    if [ -n "$pid" ] && ! alive $pid && [ ! -e $dax.sock ]; then ok "the server stops on SIGTERM"; else
      not_ok "the server (pid '$pid') did not stop on SIGTERM" "$(ls -l $dax.sock 2>&1)"
    fi
  else
    not_ok "no device offset or dax resource" "offset=$offset dax_start=$dax_start $(poise fsmap $dax)"
  fi
  kill $events 2>/dev/null
  grep '"memory_failure"' /tmp/events.json | head -n 3 | sed 's/^/# event: /'
  check "the event stream named /served" grep -q '"/served"' /tmp/events.json
  # --- the kernel's own bad-block list, if this NVDIMM can be given one ---
  if out=$(ndctl inject-error --block=4096 --count=1 namespace0.0 2>&1); then
    check "poise takes in the kernel's bad-block list" sh -c "poise badblocks $dax --json | tr -d ' \n' | grep -vq '\"device\":\[\]'"
  else
    echo "# the emulated NVDIMM takes no injected bad blocks (ndctl inject-error: $(printf '%s' "$out" | head -n 1))"
  fi
else
  # --- after a reboot (the NVDIMMs' backing files are shared: what poise left
  # on the device is found again; unflushed stores are not what this checks) ---
  check "the clone is there after a reboot" sh -c "poise cat $dax /clone | md5sum | grep -q '${data_sum%% *}'"
  expected=$(poise cat $dax /expected-bad 2>/dev/null)
  check "the lost block ($expected) is still recorded" sh -c "[ -n '$expected' ] && poise badblocks $dax | grep -qw '$expected'"
  check_exit "and still fails with EIO" 4 poise cat $dax /served
  check "check is clean after the reboot" poise check $dax
  check "the 2 MiB namespace's file too" sh -c "poise cat $dax2m /f | cmp - /tmp/data"
fi
echo "# guest: $checks checks, $failed failed"
[ $failed -eq 0 ]
