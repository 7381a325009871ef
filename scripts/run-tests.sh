#!/usr/bin/env bash
# The pytest part of `make test`: two pytest processes side by side, one for the IPVS director
# VMs' tests (most of it waiting on qemu and on timers) plus the ARP-invariant lab module, which
# together are about half of the suite's time, and one for everything else, so both cores are
# used. Each process brings up its own labs and
# checks its own leftovers (tests/conftest.py). The other tests print as they run; the VM tests'
# output follows when both are done. Either failing fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."

VM_TESTS=(tests/lab/test_ipvs_vm_ipvsadm.py tests/lab/test_ipvs_vm_keepalived.py
          tests/lab/test_ipvs_vm_sync.py tests/lab/test_vm_director.py
          tests/lab/test_invariants_lab.py)
others=()
for f in "${VM_TESTS[@]}"; do others+=(--ignore "$f"); done

vm_log=$(mktemp /tmp/shoal-vm-tests.XXXXXX)
trap 'rm -f "$vm_log"' EXIT
.venv/bin/pytest -q "$@" "${VM_TESTS[@]}" >"$vm_log" 2>&1 &
vm_pid=$!
# A Ctrl-C (or CI's timeout) stops both halves, not only the one in the foreground.
trap 'kill -INT "$vm_pid" 2>/dev/null; wait "$vm_pid"; rm -f "$vm_log"; exit 130' INT TERM

.venv/bin/pytest -q "$@" "${others[@]}"
others_status=$?
wait "$vm_pid"
vm_status=$?

echo
echo "== the second half: ${VM_TESTS[*]}"
cat "$vm_log"
if ((others_status != 0 || vm_status != 0)); then
  echo "make test: failed (other tests: exit $others_status, VM tests: exit $vm_status)" >&2
  exit 1
fi
