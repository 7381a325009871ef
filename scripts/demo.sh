#!/usr/bin/env bash
# The shoal demo, end to end on the demo lab (lab id "demo", 10.77.0.0/24), run by `make demo`:
#   lab up -> local bare config repo from fixtures/config-repo -> `shoal serve` in the background
#   -> push + signed webhook -> plan diff -> approve over HTTP -> apply -> verify -> distribution
#   -> commit "web3 joins with weight 3" -> the same again -> how to look around.
# `scripts/demo.sh down` (or `make demo-down`) stops the server, removes the lab and the demo's
# directory, then checks that nothing of the demo is left (exit 1 naming what is).
# Everything stays on this machine: the API listens on 127.0.0.1, traffic stays in the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHOAL=$ROOT/.venv/bin/shoal
PY=$ROOT/.venv/bin/python

LAB_ID=demo
DEMO_DIR=${SHOAL_DEMO_DIR:-/var/tmp/shoal-demo}
PORT=${SHOAL_DEMO_PORT:-8077}
API=http://127.0.0.1:$PORT
BARE=$DEMO_DIR/config.git
WORK=$DEMO_DIR/work
STATE=$DEMO_DIR/state
WAIT=${SHOAL_DEMO_WAIT:-180}   # seconds to wait for a plan or a run

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
die() { printf '\033[31mdemo: %s\033[0m\n' "$*" >&2; exit 1; }

stop_server() {
  local pid
  if [ -f "$DEMO_DIR/serve.pid" ]; then
    pid=$(cat "$DEMO_DIR/serve.pid")
    # Only our own server: the pid must still run `shoal serve` on the demo's state dir.
    if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--state-dir $STATE"; then
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
        print("link", name)
marker = f"{MARKER_ENV}={lab_id}/".encode()
for proc in Path("/proc").iterdir():
    if not proc.name.isdigit() or int(proc.name) == os.getpid():
        continue
    try:
        env = (proc / "environ").read_bytes().split(b"\0")
        cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
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
  "$SHOAL" lab down --lab-id "$LAB_ID"
  rm -rf "$DEMO_DIR"
  left=$(leftovers)
  if [ -n "$left" ]; then
    printf 'demo-down: left behind:\n%s\n' "$left" >&2
    exit 1
  fi
  echo "demo-down: nothing of the demo is left (namespaces, links, processes, directories)"
  exit 0
fi

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

show_verification() {  # the run's own verification phase: requests per real server, ARP
  api GET "/runs/$1" | "$PY" -c '
import json, sys
from reconciler.verify import VerificationResult
from reconciler.verify_cmd import render
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

approve_and_apply() {  # approve_and_apply PLAN_ID; a stale plan (409) is replaced by the new one
  local plan=$1 resp code run="" new
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
  note "run $run applied and verified: $API/runs/$run"
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

bold "1. demo lab (lab id $LAB_ID)"
stop_server
mkdir -p "$DEMO_DIR"
LABJSON=$DEMO_DIR/lab.json
"$SHOAL" lab up --lab-id "$LAB_ID" --json >"$LABJSON" || die "lab up failed"
KEY=$(json "d['client_key']" <"$LABJSON")
note "$(json "d['subnet']" <"$LABJSON"): $(json "' '.join(f\"{n}={h['address']}\" for n, h in d['hosts'].items())" <"$LABJSON")"
# The real servers run the lab's HTTP service (it answers with its hostname) on the VIP port.
"$PY" -m lab.httpd start --lab-id "$LAB_ID" --port 80 | sed 's/^/   /'

# --- 2. the config repository ----------------------------------------------------------------

bold "2. config repository $BARE (from fixtures/config-repo, with the lab's inventory and host keys)"
rm -rf "$BARE" "$WORK" "$STATE"
mkdir -p "$DEMO_DIR" "$STATE"
git init -q --bare -b main "$BARE"
git init -q -b main "$WORK"
"$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path
from lab import Lab
Lab.attach("demo").write_config_repo(Path("fixtures/config-repo"), Path(sys.argv[1]))
EOF
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
curl -sf "$API/healthz" >/dev/null || die "the server did not come up (see $DEMO_DIR/serve.log)"
note "server pid $(cat "$DEMO_DIR/serve.pid"), log $DEMO_DIR/serve.log"

# --- 4. first commit: the cluster as fixtures/config-repo describes it -----------------------

bold "4. first commit: cluster web, VIP 10.77.0.100:80, web1 (weight 1) and web2 (weight 2)"
push_and_plan "web cluster: lvs1/lvs2, web1 w1, web2 w2"
bold "approve over HTTP and apply (the run ends with its verification phase)"
approve_and_apply "$PLAN"
bold "verified by the run: requests from client1 through the VIP, counted on each real server"
show_verification "$RUN"
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
bold "approve over HTTP and apply"
approve_and_apply "$PLAN"
bold "verified by the run: web3 (weight 3) now takes about half of the requests"
show_verification "$RUN"

# --- 6. look around ---------------------------------------------------------------------------

bold "6. look around (the demo took $(( $(date +%s) - START ))s)"
AUTH="-H \"Authorization: Bearer \$(cat $DEMO_DIR/approver-token)\""
cat <<EOF
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
