#!/usr/bin/env bash
# The shoal demo, end to end on the demo lab (lab id "demo", 10.77.0.0/24), run by `make demo`:
#   lab up -> local bare config repo from fixtures/config-repo -> `shoal serve` in the background
#   -> push + signed webhook -> plan diff -> approve over HTTP (or on the web page:
#   SHOAL_DEMO_APPROVE=page) -> apply -> verify -> distribution
#   -> commit "web3 joins with weight 3" -> the same again -> how to look around.
# `scripts/demo.sh down` (or `make demo-down`) stops the server, removes the lab and the demo's
# directory, then checks that nothing of the demo is left (exit 1 naming what is).
# Everything stays on this machine: the API listens on 127.0.0.1, traffic stays in the lab.
#
# DEMO_DIRECTOR=ipvs: the directors lvs1/lvs2 are qemu VMs booting Debian's kernel (lab/vm.py), so
# IPVS is real; the cluster uses the IPVS backend DEMO_IPVS_BACKEND (keepalived, the default, with
# VRRP between the two VMs; or ipvsadm), and after each apply the demo shows lvs1's `ipvsadm -Ln`.
# Unset (the default): namespace directors with the nftables backend of fixtures/config-repo,
# and the cluster dual stack: the demo adds `http6` on the lab's IPv6 VIP [fd77:77:77::100]:80
# for the same real servers (the fixture itself, which many tests share, stays IPv4).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHOAL=$ROOT/.venv/bin/shoal
LABCTL=("$ROOT/.venv/bin/python" -m lab)
PY=$ROOT/.venv/bin/python

LAB_ID=demo
DEMO_DIR=${SHOAL_DEMO_DIR:-/var/tmp/shoal-demo}
PORT=${SHOAL_DEMO_PORT:-8077}
API=http://127.0.0.1:$PORT
BARE=$DEMO_DIR/config.git
WORK=$DEMO_DIR/work
STATE=$DEMO_DIR/state
DEMO_DIRECTOR=${DEMO_DIRECTOR:-}
BACKEND=${DEMO_IPVS_BACKEND:-keepalived}
# Emulated VMs: a boot takes 5-15 s, each new SSH connection about 1 s (more on a busy machine).
VM_CONNECT_TIMEOUT=60   # seconds; shoal.toml [apply] connect_timeout in the demo's repository
if [ -n "$DEMO_DIRECTOR" ]; then
  WAIT=${SHOAL_DEMO_WAIT:-600}
else
  WAIT=${SHOAL_DEMO_WAIT:-180}   # seconds to wait for a plan or a run
fi

# SHOAL_DEMO_APPROVE=page: the demo waits for each plan to be approved on its web page instead
# of approving it over the JSON API itself (SHOAL_DEMO_PAGE_WAIT seconds, 900 by default).
APPROVE=${SHOAL_DEMO_APPROVE:-api}
PAGE_WAIT=${SHOAL_DEMO_PAGE_WAIT:-900}
if [ "$APPROVE" = "page" ]; then APPROVED_WHERE="on the web page"; else APPROVED_WHERE="over HTTP"; fi

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
die() { printf '\033[31mdemo: %s\033[0m\n' "$*" >&2; exit 1; }

stop_server() {
  local pid
  if [ -f "$DEMO_DIR/serve.pid" ]; then
    pid=$(cat "$DEMO_DIR/serve.pid")
    # Only our own server: the pid must still run `shoal serve` on the demo's state dir.
    if [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "--state-dir $STATE"; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$DEMO_DIR/serve.pid"
  fi
}

leftovers() {  # everything the demo may leave behind on this machine, one line each
  "$PY" - "$LAB_ID" "$STATE" "$DEMO_DIR" <<'EOF'
import os, subprocess, sys
from pathlib import Path
from lab.naming import MARKER_ENV, bridge_name, lab_dir, netns_prefix, veth_re
lab_id, state, demo_dir = sys.argv[1:]
netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
for line in netns.splitlines():
    if line.split()[0].startswith(netns_prefix(lab_id)):
        print("network namespace", line.split()[0])
links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
for line in links.splitlines():
    name = line.split(": ")[1].split("@")[0]
    if name == bridge_name(lab_id) or veth_re(lab_id).match(name):
        # A VM director's NIC is a tap named like a veth.
        tap = Path(f"/sys/class/net/{name}/tun_flags").exists()
        print("tap" if tap else "link", name)
marker = f"{MARKER_ENV}={lab_id}/".encode()
vm_name = f"-name shoal-{lab_id}-"  # lab/vm.py names each qemu after its lab and host
for proc in Path("/proc").iterdir():
    if not proc.name.isdigit() or int(proc.name) == os.getpid():
        continue
    try:
        env = (proc / "environ").read_bytes().split(b"\0")
        cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        continue
    if "qemu-system" in cmd.split(" ", 1)[0] and vm_name in cmd:
        print("VM process (qemu)", proc.name, cmd[:100])
        continue
    if any(e.startswith(marker) for e in env) or ("serve" in cmd and f"--state-dir {state}" in cmd):
        print("process", proc.name, cmd[:100])
for path in (lab_dir(lab_id), Path(demo_dir)):
    if path.exists():
        print("directory", path)
EOF
}

if [ "${1:-}" = down ]; then
  stop_server
  "${LABCTL[@]}" down --lab-id "$LAB_ID"
  rm -rf "$DEMO_DIR"
  left=$(leftovers)
  if [ -n "$left" ]; then
    printf 'demo-down: left behind:\n%s\n' "$left" >&2
    exit 1
  fi
  echo "demo-down: nothing of the demo is left (namespaces, links, taps, processes, VMs, directories)"
  exit 0
fi

case $DEMO_DIRECTOR in
  "") ;;
  ipvs)
    case $BACKEND in
      keepalived|ipvsadm) ;;
      *) die "DEMO_IPVS_BACKEND must be keepalived or ipvsadm, not '$BACKEND'" ;;
    esac ;;
  *) die "DEMO_DIRECTOR must be unset (namespace directors, nftables) or 'ipvs' (VM directors), not '$DEMO_DIRECTOR'" ;;
esac

START=$(date +%s)

# --- HTTP helpers (the API token rides in a header; it is never echoed) ------------------------

api() {  # api METHOD PATH [JSON-BODY] -> body on stdout; fails on HTTP >= 400
  local method=$1 path=$2 body=${3:-}
  local args=(-sS --fail-with-body -X "$method" -H "Authorization: Bearer $TOKEN")
  [ -n "$body" ] && args+=(-H 'Content-Type: application/json' --data "$body")
  curl "${args[@]}" "$API$path"
}

json() {  # json EXPR: evaluate a Python expression over the JSON document `d` read from stdin
  "$PY" -c 'import json,sys; d=json.load(sys.stdin); r=eval(sys.argv[1]); print(r if isinstance(r,str) else json.dumps(r))' "$1"
}

send_webhook() {  # a GitHub-style push event, HMAC-SHA256 signed with the webhook secret
  local sha=$1 payload sig
  payload=$(printf '{"ref":"refs/heads/main","after":"%s","repository":{"full_name":"demo/config"}}' "$sha")
  sig=$(printf '%s' "$payload" | "$PY" -c 'import hashlib,hmac,sys; print("sha256="+hmac.new(open(sys.argv[1],"rb").read().strip(), sys.stdin.buffer.read(), hashlib.sha256).hexdigest())' "$DEMO_DIR/webhook-secret")
  curl -sS --fail-with-body -X POST "$API/webhooks/git" \
    -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' \
    -H "X-Hub-Signature-256: $sig" --data "$payload"
  echo
}

wait_for_plan() {  # wait_for_plan SHA -> id of the pending change plan for that revision
  local sha=$1 id
  for _ in $(seq "$WAIT"); do
    id=$(api GET "/plans?state=pending" | json "next((p['id'] for p in d if p['revision'].startswith('$sha') or '$sha'.startswith(p['revision'])), '')") || id=""
    [ -n "$id" ] && { echo "$id"; return 0; }
    sleep 1
  done
  die "no pending plan for $sha after ${WAIT}s (see $DEMO_DIR/serve.log)"
}

show_plan() {
  api GET "/plans/$1" | json "'\n'.join(f\"--- {h} ({len(hp['steps'])} steps)\n{hp['diff']}\" for h, hp in sorted(d['hosts'].items()) if hp['steps'])"
}

show_ipvs() {  # after an apply with VM directors: lvs1's real IPVS table, and who holds the VIPs
  [ -n "$DEMO_DIRECTOR" ] || return 0
  bold "ipvsadm -Ln on lvs1 (the VM's kernel IPVS table, read over SSH), and the VIPs per director"
  "$PY" - "$LAB_ID" <<'EOF' | sed 's/^/   /'
import asyncio, ipaddress, sys
from lab import Lab

# VIPs are .100-.199 of the lab's /24 (lab/topology.py); only the active director holds them.
SHOW = "ipvsadm -Ln; echo ==; ip -o -4 addr show dev eth0"

async def main() -> None:
    lab = Lab.attach(sys.argv[1])
    outs = await asyncio.gather(*(lab.exec(d, ["sh", "-c", SHOW]) for d in ("lvs1", "lvs2")))
    for name, out in zip(("lvs1", "lvs2"), outs):
        table, addrs = out.stdout.split("==\n", 1)
        if name == "lvs1":
            print(table, end="")
        vips = [f.split("/")[0] for line in addrs.splitlines() for f in line.split()[3:4]]
        vips = [a for a in vips if 100 <= ipaddress.IPv4Address(a).packed[3] <= 199]
        print(f"VIPs on {name}: {' '.join(vips) or 'none'}")

asyncio.run(main())
EOF
}

show_verification() {  # the run's own verification phase: requests per real server, ARP
  api GET "/runs/$1" | "$PY" -c '
import json, sys
from reconciler.verify.run import VerificationResult
from reconciler.cli.verify import render
data = (json.load(sys.stdin).get("result") or {}).get("verification")
if data is None:
    sys.exit("the run has no verification (verify.clients empty?)")
data.pop("distribution", None)  # derived; the model computes it
for line in render(VerificationResult.model_validate(data)):
    print("   " + line)'
}

wait_for_run() {  # wait_for_run RUN_ID -> 0 when applied
  local run=$1 state
  for _ in $(seq "$WAIT"); do
    state=$(api GET "/runs/$run" | json "d['state']") || state=""
    case $state in
      applied) return 0 ;;
      failed|interrupted)
        api GET "/runs/$run" | json "d.get('error') or d"
        show_verification "$run" || true
        die "run $run $state (see $DEMO_DIR/serve.log)" ;;
    esac
    sleep 1
  done
  die "run $run still not finished after ${WAIT}s"
}

approve_in_page() {  # approve_in_page PLAN_ID: wait for a person to approve it on its web page
  local plan=$1 state new
  note "approve it on its page: $API/ui/plans/$plan"
  note "(sign in with the approver token in $DEMO_DIR/approver-token; waiting up to ${PAGE_WAIT}s)"
  for _ in $(seq "$PAGE_WAIT"); do
    state=$(api GET "/plans/$plan" | json "d['state']") || state=""
    case $state in
      applying|applied|failed|interrupted) run=$(api GET "/plans/$plan" | json "d['runs'][0]"); return 0 ;;
      rejected) die "plan $plan was rejected on its page" ;;
      stale|superseded)
        # The page refused the approval and linked the plan made from the new facts.
        new=$(api GET "/plans?state=pending&cluster=web" | json "d[0]['id'] if d else ''")
        if [ -n "$new" ] && [ "$new" != "$plan" ]; then
          plan=$new
          note "the facts moved: approve the new plan on its page: $API/ui/plans/$plan"
        fi ;;
    esac
    sleep 1
  done
  die "plan $plan was not approved on its page within ${PAGE_WAIT}s"
}

approve_and_apply() {  # approve_and_apply PLAN_ID; a stale plan (409) is replaced by the new one
  local plan=$1 resp code run="" new
  if [ "$APPROVE" = "page" ]; then
    approve_in_page "$plan"
    note "approved on the page: run $run"
    wait_for_run "$run"
    note "run $run applied and verified: $API/ui/runs/$run"
    RUN=$run
    return
  fi
  for _ in 1 2 3; do
    resp=$(curl -sS -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
      --data '{"comment":"approved by the demo"}' -w '\n%{http_code}' "$API/plans/$plan/approve")
    code=${resp##*$'\n'}
    resp=${resp%$'\n'*}
    case $code in
      202) run=$(json "d['run_id']" <<<"$resp"); break ;;
      409)
        note "plan $plan cannot be approved: $(json "d['detail']" <<<"$resp")"
        new=$(json "d.get('new_plan_id') or ''" <<<"$resp")
        [ -n "$new" ] || die "no newer plan to approve"
        plan=$new
        bold "the facts moved, so the server made plan $plan"
        show_plan "$plan" ;;
      *) die "approve failed: HTTP $code: $resp" ;;
    esac
  done
  [ -n "$run" ] || die "could not approve a current plan"
  note "approved plan $plan: run $run"
  wait_for_run "$run"
  note "run $run applied and verified: $API/ui/runs/$run (JSON: $API/runs/$run)"
  RUN=$run
}

push_and_plan() {  # push_and_plan MESSAGE -> prints the plan diff, sets PLAN
  local sha
  git -C "$WORK" add -A
  git -C "$WORK" -c user.name=demo -c user.email=demo@shoal.invalid commit -q -m "$1"
  git -C "$WORK" push -q origin HEAD:main
  sha=$(git -C "$WORK" rev-parse HEAD)
  note "pushed $sha: $1"
  note "webhook: $(send_webhook "$sha")"
  PLAN=$(wait_for_plan "$sha")
  bold "plan $PLAN (what will change, per host)"
  show_plan "$PLAN"
}

# --- 1. the lab ------------------------------------------------------------------------------

LAB_ARGS=(--lab-id "$LAB_ID" --json)
if [ -n "$DEMO_DIRECTOR" ]; then
  LAB_ARGS+=(--director-kind vm)
  if [ "$BACKEND" = keepalived ]; then
    BACKEND_DESC="keepalived (it programs IPVS; VRRP between lvs1 and lvs2 moves the VIP)"
  else
    BACKEND_DESC="ipvsadm (shoal programs IPVS directly; the VIP on the primary, lvs1)"
  fi
  bold "DEMO_DIRECTOR=ipvs: the directors lvs1 and lvs2 are virtual machines running real IPVS"
  note "director backend: $BACKEND_DESC"
  note "each is qemu (CPU emulation) booting Debian's kernel, which has IPVS: a boot takes 5-15 s"
  note "and each new SSH connection about 1 s, so this demo is slower than the namespace one"
  bold "1. demo lab (lab id $LAB_ID, directors: VMs)"
else
  bold "1. demo lab (lab id $LAB_ID)"
fi
stop_server
mkdir -p "$DEMO_DIR"
LABJSON=$DEMO_DIR/lab.json
"${LABCTL[@]}" up "${LAB_ARGS[@]}" >"$LABJSON" || die "lab up failed"
KEY=$(json "d['client_key']" <"$LABJSON")
note "$(json "d['subnet']" <"$LABJSON"): $(json "' '.join(f\"{n}={h['address']}\" for n, h in d['hosts'].items())" <"$LABJSON")"
if [ -n "$DEMO_DIRECTOR" ]; then
  KERNEL=$("$PY" -c 'from lab.vm_image import kernel_release; print(kernel_release())')
  note "$(json "', '.join(f\"{n} is a VM (qemu pid {h['qemu_pid']})\" for n, h in d['hosts'].items() if h['kind'] == 'vm')" <"$LABJSON"): kernel $KERNEL; lab up in $(json "d['seconds']" <"$LABJSON")s"
fi
# The real servers run the lab's HTTP service (it answers with its hostname) on the VIP port.
"$PY" -m lab.httpd start --lab-id "$LAB_ID" --port 80 | sed 's/^/   /'

# --- 2. the config repository ----------------------------------------------------------------

bold "2. config repository $BARE (from fixtures/config-repo, with the lab's inventory and host keys)"
rm -rf "$BARE" "$WORK" "$STATE"
mkdir -p "$DEMO_DIR" "$STATE"
git init -q --bare -b main "$BARE"
git init -q -b main "$WORK"
BACKEND_ARG=""   # empty: the fixture as it is
if [ -n "$DEMO_DIRECTOR" ]; then BACKEND_ARG=$BACKEND; fi
"$PY" - "$WORK" "$BACKEND_ARG" "$VM_CONNECT_TIMEOUT" <<'EOF'
import re, sys
from pathlib import Path
from lab import Lab
import ipaddress
work, backend, connect_timeout = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
lab = Lab.attach("demo")
lab.write_config_repo(Path("fixtures/config-repo"), work)
if not backend:  # dual stack: http6 on the lab's IPv6 VIP, the same real servers as http
    vip6 = ipaddress.IPv6Network(lab.subnet6).network_address + 0x100
    web = work / "clusters" / "web.toml"
    text = web.read_text()
    http = text.index("[[service]]")
    # Before http, so that step 5's web3 (appended to the file) joins http, the last service.
    http6 = (
        "# The same real servers over IPv6: one virtual service per family, as in IPVS.\n"
        f'[[service]]\nname = "http6"\nvip = "{vip6}"\nport = 80\nprotocol = "tcp"\n'
        'scheduler = "wlc"\ncheck = { type = "http", path = "/healthz", expect = 200 }\n\n'
        '  [[service.real_server]]\n  host = "web1"\n  weight = 1\n\n'
        '  [[service.real_server]]\n  host = "web2"\n  weight = 2\n\n'
    )
    web.write_text(text[:http] + http6 + text[http:])
if backend:  # DEMO_DIRECTOR=ipvs: the fixture's cluster with an IPVS backend, slower SSH allowed
    def rewrite(path: Path, pattern: str, new: str) -> None:
        text, n = re.subn(pattern, new, path.read_text(), count=1, flags=re.M)
        if n != 1:
            sys.exit(f"demo: {path}: no line matching {pattern!r} to rewrite")
        path.write_text(text)
    rewrite(work / "clusters" / "web.toml", r'^director = "nftables" .*$',
            f'director = "{backend}"  # the VM directors have real IPVS (DEMO_DIRECTOR=ipvs)')
    rewrite(work / "shoal.toml", r"^\[apply\]\n",
            f"[apply]\nconnect_timeout = {connect_timeout}  # SSH to emulated VMs is slow\n")
EOF
if [ -n "$DEMO_DIRECTOR" ]; then
  note "clusters/web.toml: $(grep '^director = ' "$WORK/clusters/web.toml")"
  note "shoal.toml: [apply] $(grep '^connect_timeout = ' "$WORK/shoal.toml")"
fi
git -C "$WORK" remote add origin "$BARE"
"$SHOAL" validate "$WORK" | sed 's/^/   /'

# --- 3. the server ---------------------------------------------------------------------------

bold "3. shoal serve on $API"
umask 077
"$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$DEMO_DIR/webhook-secret"
TOKEN=$("$SHOAL" token create --role approver --state-dir "$STATE" --name demo-approver)
printf '%s\n' "$TOKEN" >"$DEMO_DIR/approver-token"
umask 022
nohup "$SHOAL" serve --repo "$BARE" --state-dir "$STATE" --listen "127.0.0.1:$PORT" \
  --key "$KEY" --webhook-secret-file "$DEMO_DIR/webhook-secret" --poll 300 \
  >"$DEMO_DIR/serve.log" 2>&1 &
echo $! >"$DEMO_DIR/serve.pid"
for _ in $(seq 100); do curl -sf "$API/healthz" >/dev/null && break; sleep 0.2; done
if ! curl -sf "$API/healthz" >/dev/null; then
  tail -n 20 "$DEMO_DIR/serve.log" >&2 || true
  die "the server did not come up (its log's end above; all of it in $DEMO_DIR/serve.log)"
fi
note "server pid $(cat "$DEMO_DIR/serve.pid"), log $DEMO_DIR/serve.log"
note "web pages:  $API/ui/   (sign in with the approver token in $DEMO_DIR/approver-token)"

# --- 4. first commit: the cluster as fixtures/config-repo describes it -----------------------

ON=""
if [ -n "$DEMO_DIRECTOR" ]; then ON=", director $BACKEND on the VMs"; fi
VIPS="VIP 10.77.0.100:80"
if [ -z "$DEMO_DIRECTOR" ]; then VIPS="VIPs 10.77.0.100:80 (http) and [fd77:77:77::100]:80 (http6)"; fi
bold "4. first commit: cluster web$ON, $VIPS, web1 (weight 1) and web2 (weight 2)"
push_and_plan "web cluster: lvs1/lvs2, web1 w1, web2 w2"
bold "approve $APPROVED_WHERE and apply (the run ends with its verification phase)"
approve_and_apply "$PLAN"
bold "verified by the run: requests from client1 through the VIP, counted on each real server"
show_verification "$RUN"
show_ipvs
FIRST_RUN=$RUN

# --- 5. a change: web3 joins with weight 3 ----------------------------------------------------

bold "5. change: web3 joins the http service with weight 3"
cat >>"$WORK/clusters/web.toml" <<'EOF'

  [[service.real_server]]
  host = "web3"
  weight = 3
EOF
push_and_plan "web3 joins http with weight 3"
# Adding a real server changes the directors and web3 only, and removes nothing anywhere.
changes=$(api GET "/plans/$PLAN" | json "' '.join(sorted(h for h, hp in d['hosts'].items() if hp['steps'])) + ' removals=' + str(sum(s['state_id'].startswith('remove-') for hp in d['hosts'].values() for s in hp['steps']))")
[ "$changes" = "lvs1 lvs2 web3 removals=0" ] || die "the web3 plan should change lvs1 lvs2 web3 and remove nothing: $changes"
bold "approve $APPROVED_WHERE and apply"
approve_and_apply "$PLAN"
bold "verified by the run: web3 (weight 3) now takes about half of the requests"
show_verification "$RUN"
show_ipvs

# --- 6. look around ---------------------------------------------------------------------------

bold "6. look around (the demo took $(( $(date +%s) - START ))s)"
AUTH="-H \"Authorization: Bearer \$(cat $DEMO_DIR/approver-token)\""
if [ -n "$DEMO_DIRECTOR" ]; then
  cat <<EOF
   directors:      lvs1, lvs2 are VMs (qemu, Debian kernel $KERNEL) running real IPVS
   backend:        $BACKEND_DESC
   IPVS on lvs1:   ssh -i $KEY -o UserKnownHostsFile=$WORK/known_hosts root@10.77.0.11 ipvsadm -Ln
EOF
fi
cat <<EOF
   web pages:      $API/ui/   (sign in with the approver token in $DEMO_DIR/approver-token)
   the 2nd plan:   $API/ui/plans/$PLAN   its run: $API/ui/runs/$RUN   audit: $API/ui/audit
   API:            $API   (approver token in $DEMO_DIR/approver-token; API docs at $API/docs)
   clusters:       curl -s $AUTH $API/clusters
   plans:          curl -s $AUTH $API/plans
   the 2nd plan:   curl -s $AUTH $API/plans/$PLAN
   its run:        curl -s $AUTH $API/runs/$RUN     (steps, backups, verification)
   the 1st run:    curl -s $AUTH $API/runs/$FIRST_RUN
   audit log:      curl -s $AUTH $API/audit
   a plan locally: $SHOAL plan $WORK --key $KEY     (in sync: exit 0)
   verify:         $SHOAL verify $WORK --key $KEY
   load:           $PY -m lab.httpd load --lab-id $LAB_ID --vip 10.77.0.100 --count 60
   change it:      edit $WORK/clusters/web.toml, commit, git -C $WORK push origin HEAD:main
   a host:         ssh -i $KEY -o UserKnownHostsFile=$WORK/known_hosts root@10.77.0.11
   server log:     $DEMO_DIR/serve.log
   when done:      make demo-down
EOF
