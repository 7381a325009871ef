#!/usr/bin/env bash
# The pytest part of `make test`: five pytest processes side by side, so both cores are used.
# - two processes of IPVS director VM tests, each with its own pair of VMs: the ipvsadm backend
#   with connection sync and shoal-healthd, and keepalived with the import of a hand-written
#   keepalived.conf (a third VM process for the dual-stack scenarios made the whole run slower:
#   six VMs on 2 cores, load 19);
# - the ARP-invariant lab module with the crash-recovery and VRRP failover modules and the
#   executor's verification and real-plan modules: namespace hosts that mostly wait (ARP probes,
#   kill points, VRRP timers, traffic);
# - the lab modules of sudo, IPv6, import, the browser and the server replicas: mostly waiting
#   on hosts too;
# - everything else, printing as it runs.
# Each process brings up its own labs and checks its own leftovers (tests/conftest.py). The
# background processes' output follows when all are done. Any failing fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."

existing() {  # the given test files that exist, one per line
  local f
  for f in "$@"; do [ -e "$f" ] && printf '%s\n' "$f"; done
}

mapfile -t VM_IPVSADM < <(existing tests/lab/test_ipvs_vm_ipvsadm.py tests/lab/test_ipvs_vm_sync.py \
  tests/lab/test_vm_director.py tests/lab/test_healthd_ipvs_vm.py)
mapfile -t VM_KEEPALIVED < <(existing tests/lab/test_ipvs_vm_keepalived.py \
  tests/lab/test_import_vm_keepalived.py)
mapfile -t ARP_TESTS < <(existing tests/lab/test_invariants_lab.py \
  tests/lab/test_serve_crash_recovery.py tests/lab/test_failover_keepalived.py \
  tests/lab/test_executor_verify.py tests/lab/test_executor_plans.py)
mapfile -t LAB_TESTS < <(existing tests/lab/test_sudo_lab.py tests/lab/test_import_lab.py \
  tests/lab/test_web_browser.py tests/lab/test_dual_stack_*lab.py tests/lab/test_nd_probe_lab.py \
  tests/lab/test_lab_ipv6.py tests/lab/test_serve_replicas_lab.py)
others=()
for f in "${VM_IPVSADM[@]}" "${VM_KEEPALIVED[@]}" "${ARP_TESTS[@]}" "${LAB_TESTS[@]}"; do
  others+=(--ignore "$f")
done

GROUPS_NAMES=("VM directors, ipvsadm" "VM directors, keepalived" "ARP invariants, executor"
              "sudo/IPv6/import/browser/replicas")
logs=() pids=()
trap 'rm -f "${logs[@]}"' EXIT
# --durations: every run says where its time went, so the split can follow it.
set -- --durations=12 "$@"
start() {  # start PYTEST_ARGS...: one background pytest process, its output to a log
  local log
  log=$(mktemp /tmp/shoal-tests.XXXXXX)
  logs+=("$log")
  .venv/bin/pytest -q "$@" >"$log" 2>&1 &
  pids+=($!)
}
start "$@" "${VM_IPVSADM[@]}"
start "$@" "${VM_KEEPALIVED[@]}"
start "$@" "${ARP_TESTS[@]}"
start "$@" "${LAB_TESTS[@]}"
# A Ctrl-C (or CI's timeout) stops every process, not only the one in the foreground.
trap 'kill -INT "${pids[@]}" 2>/dev/null; wait "${pids[@]}"; rm -f "${logs[@]}"; exit 130' INT TERM

.venv/bin/pytest -q "$@" "${others[@]}"
others_status=$?
statuses=()
for pid in "${pids[@]}"; do
  wait "$pid"
  statuses+=($?)
done

failed=$((others_status != 0))
summary="other tests: exit $others_status"
for i in "${!pids[@]}"; do
  echo
  echo "== beside them (${GROUPS_NAMES[$i]})"
  cat "${logs[$i]}"
  summary+=", ${GROUPS_NAMES[$i]}: exit ${statuses[$i]}"
  ((statuses[i] != 0)) && failed=1
done
if ((failed)); then
  echo "make test: failed ($summary)" >&2
  exit 1
fi
