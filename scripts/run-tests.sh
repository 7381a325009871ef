#!/usr/bin/env bash
# The pytest part of `make test`: four pytest processes side by side, so both cores are used.
# - the IPVS director VMs' tests: busy with qemu's emulated CPUs;
# - the ARP-invariant lab module: a few minutes of namespace hosts that mostly wait (ARP probes,
#   pings from the VIP), so it costs the others little CPU, yet run after the VM tests it
#   made that process the longest by minutes;
# - the lab modules of sudo, IPv6, import, the browser and the three servers on PostgreSQL:
#   mostly waiting on hosts too;
# - everything else, printing as it runs.
# Each process brings up its own labs and checks its own leftovers (tests/conftest.py). The
# background processes' output follows when all are done. Any failing fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."

VM_TESTS=(tests/lab/test_ipvs_vm_ipvsadm.py tests/lab/test_ipvs_vm_keepalived.py
          tests/lab/test_ipvs_vm_sync.py tests/lab/test_vm_director.py)
# With the ARP invariants, two more modules that mostly wait (kill points, VRRP timers).
ARP_TESTS=(tests/lab/test_invariants_lab.py tests/lab/test_serve_crash_recovery.py
           tests/lab/test_failover_keepalived.py)
LAB_TESTS=()
for f in tests/lab/test_sudo_lab.py tests/lab/test_import_lab.py tests/lab/test_web_browser.py \
         tests/lab/test_dual_stack_*lab.py tests/lab/test_nd_probe_lab.py tests/lab/test_lab_ipv6.py \
         tests/lab/test_serve_replicas_lab.py; do
  [ -e "$f" ] && LAB_TESTS+=("$f")
done
others=()
for f in "${VM_TESTS[@]}" "${ARP_TESTS[@]}" "${LAB_TESTS[@]}"; do others+=(--ignore "$f"); done

vm_log=$(mktemp /tmp/shoal-vm-tests.XXXXXX)
arp_log=$(mktemp /tmp/shoal-arp-tests.XXXXXX)
lab_log=$(mktemp /tmp/shoal-lab-tests.XXXXXX)
trap 'rm -f "$vm_log" "$arp_log" "$lab_log"' EXIT
# --durations: every run says where its time went, so the split can follow it.
set -- --durations=12 "$@"
.venv/bin/pytest -q "$@" "${VM_TESTS[@]}" >"$vm_log" 2>&1 &
vm_pid=$!
.venv/bin/pytest -q "$@" "${ARP_TESTS[@]}" >"$arp_log" 2>&1 &
arp_pid=$!
.venv/bin/pytest -q "$@" "${LAB_TESTS[@]}" >"$lab_log" 2>&1 &
lab_pid=$!
# A Ctrl-C (or CI's timeout) stops every process, not only the one in the foreground.
trap 'kill -INT "$vm_pid" "$arp_pid" "$lab_pid" 2>/dev/null; wait "$vm_pid" "$arp_pid" "$lab_pid"
      rm -f "$vm_log" "$arp_log" "$lab_log"; exit 130' INT TERM

.venv/bin/pytest -q "$@" "${others[@]}"
others_status=$?
wait "$vm_pid"
vm_status=$?
wait "$arp_pid"
arp_status=$?
wait "$lab_pid"
lab_status=$?

echo
echo "== beside them: ${LAB_TESTS[*]}"
cat "$lab_log"
echo
echo "== beside them: ${ARP_TESTS[*]}"
cat "$arp_log"
echo
echo "== beside them: ${VM_TESTS[*]}"
cat "$vm_log"
if ((others_status != 0 || vm_status != 0 || arp_status != 0 || lab_status != 0)); then
  echo "make test: failed (other tests: exit $others_status, VM tests: exit $vm_status," \
    "ARP invariant tests: exit $arp_status, sudo/IPv6/import/browser: exit $lab_status)" >&2
  exit 1
fi
