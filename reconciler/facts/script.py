"""The facts script: the POSIX sh text every host runs, one section per fact.

`build_facts_script` writes it (pure); `reconciler.facts.parse` turns its output into
`HostFacts`, `reconciler.facts.gather` runs it over a `Transport`. One script, one SSH channel,
one round trip per host.

The script prints one section per fact:

    #shoal-facts# begin NAME
    <the command's stdout>
    #shoal-facts# end NAME RC
    <the command's stderr, if any>

A section whose command failed must fail visibly (RC != 0, the reason on stderr), never print an
empty value: an empty value would read as "absent" and could make a state remove things. The
same holds for what this login may not see: a path behind a directory it cannot search, or a
file it cannot read, fails its section with status 13 (`DENIED`) and a reason naming the path,
instead of reading as missing. Tools are looked up on a fixed PATH that includes the sbin
directories, whoever logs in. The script reads /proc/sys and pid files with shell builtins and
runs each tool once, since it runs on every plan for every host.

What a host is asked is set by the assignments at the script's head (`FILES`, `LEDGER`, ...);
the functions and the body below them are the same text for every host.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence

from reconciler.facts.hostfacts import FILE_CONTENT_MAX

MARKER = "#shoal-facts#"
# A section's status when this login may not read what it needs (`denied` in the script).
DENIED = 13
SCRIPT_VERSION = "1"

KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
LEDGER_PATH = "/var/lib/shoal/ledger.json"

# Files every host reports, whatever the caller manages (DESIGN.md's on-host layout).
DEFAULT_FILES: tuple[str, ...] = (
    KEEPALIVED_CONF,
    "/etc/sysctl.d/90-shoal-lvs-dr.conf",
    "/usr/local/sbin/shoal-restore",
    "/etc/systemd/system/shoal-restore.service",
    # What shoal-healthd holds down (reconciler.plan.compile_health): a fact of every plan.
    "/var/lib/shoal/healthd/state.json",
)
TOOLS: tuple[str, ...] = (
    "ip",
    "sysctl",
    "arptables",
    "arptables-save",
    "arptables-legacy",
    "arptables-nft",
    "iptables",
    "iptables-save",
    "iptables-legacy",
    "iptables-nft",
    "nft",
    "ipvsadm",
    "keepalived",
    "arping",
    "systemctl",
    "systemd-run",
    "sha256sum",
    "curl",
)
SERVICES: tuple[str, ...] = (
    "keepalived",
    "nftables",
    "shoal-restore",
    "shoal-healthd",
    "arptables",
    "iptables",
    "netfilter-persistent",
    "ipvsadm",
)
SYSCTL_CONF_KEYS: tuple[str, ...] = ("arp_ignore", "arp_announce", "rp_filter")
# net.ipv4.vs.* keys gathered, with the value each has right after ip_vs loads.
IPVS_MODULE_DEFAULTS: dict[str, str] = {
    "net.ipv4.vs.expire_nodest_conn": "0",
    "net.ipv4.vs.expire_quiescent_template": "0",
    "net.ipv4.vs.conn_reuse_mode": "1",
    "net.ipv4.vs.backup_only": "0",
    "net.ipv4.vs.conntrack": "0",
}
IPVS_SYSCTLS: tuple[str, ...] = tuple(k.rsplit(".", 1)[1] for k in IPVS_MODULE_DEFAULTS)

_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")

# The script's fixed part. Sections run as `sec NAME CMD...`: CMD's stdout goes straight to
# ours, its stderr is captured (the `2>&1 1>&3` swap) and printed after the end marker.
_PRELUDE = r"""
# The login's own PATH may lack the sbin directories (a non-root user's does on Debian): tools
# are looked up in the same places whoever logs in, or a tool there would read as not installed.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
M='#shoal-facts#'
tab=$(printf '\t')
sec() {
  _n=$1; shift
  printf '%s begin %s\n' "$M" "$_n"
  { _e=$("$@" 2>&1 1>&3 3>&-); _r=$?; } 3>&1
  printf '\n%s end %s %s\n' "$M" "$_n" "$_r"
  [ -z "$_e" ] || printf '%s\n' "$_e"
}
# emit NAME RC TEXT: a section whose command already ran (its output is needed twice).
emit() {
  if [ "$2" = 0 ]; then printf '%s begin %s\n%s\n\n%s end %s 0\n' "$M" "$1" "$3" "$M" "$1"
  else printf '%s begin %s\n\n%s end %s %s\n%s\n' "$M" "$1" "$M" "$1" "$2" "$3"; fi
}
# there P: 0 when P exists (a dangling link too), 1 when it surely does not, 13 when a
# directory on the way cannot be searched (a non-root login behind a 0700 directory): then P
# may well exist, and what depends on it is unknown, never absent.
there() {
  { [ -e "$1" ] || [ -L "$1" ]; } && return 0
  _tw=${1%/*}
  while [ -n "$_tw" ] && ! [ -e "$_tw" ]; do _tw=${_tw%/*}; done
  [ -n "$_tw" ] || _tw=/
  if [ -d "$_tw" ] && ! [ -x "$_tw" ]; then denied "$1"; return; fi
  return 1
}
# denied P: P exists (or may) but this login cannot read it; status 13, the reason on stderr.
denied() { printf '%s: Permission denied\n' "$1" >&2; return 13; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "$1 is not installed" >&2; return 127; }; }
version() { need "$1" && "$1" -V; }
f_login() {
  _u=$(id -u) || return
  printf 'uid=%s\nuser=%s\n' "$_u" "$(id -un 2>/dev/null || echo "#$_u")"
}
f_hostname() { rd /proc/sys/kernel/hostname && printf '%s\n' "$_v"; }
f_kernel() { rd /proc/sys/kernel/osrelease && printf '%s\n' "$_v"; }
f_addr() { need ip && ip -j addr; }
# /proc/sys files answer a read at a non-zero offset with EOF, and sh's read takes one byte at
# a time: it gets the value, then EOF instead of the newline. A value read is a value.
rd() { _v=; read -r _v < "$1" || [ -n "$_v" ]; }
f_sysctl() {
  _rc=0
  rd /proc/sys/net/ipv4/ip_forward && printf 'net.ipv4.ip_forward=%s\n' "$_v" || _rc=1
  for _d in /proc/sys/net/ipv4/conf/*/; do
    _i=${_d%/}; _i=${_i##*/}
    for _k in $SYSCTL_CONF_KEYS; do
      rd "$_d$_k" && printf 'net.ipv4.conf.%s.%s=%s\n' "$_i" "$_k" "$_v" || _rc=1
    done
  done
  for _k in $IPVS_SYSCTLS; do
    # A key that exists but cannot be read fails the section, as any other unreadable key.
    [ -e "/proc/sys/net/ipv4/vs/$_k" ] || continue
    rd "/proc/sys/net/ipv4/vs/$_k" && printf 'net.ipv4.vs.%s=%s\n' "$_k" "$_v" || _rc=1
  done
  return $_rc
}
# `arptables -L -n`, not arptables-save: the nft save tool prints a mangle address as a host
# name when /etc/hosts knows it; the listing is numeric and has the same rule syntax.
f_arp_list() { need arptables && arptables -L -n; }
f_ipt_save() {
  need iptables-save || return
  # The legacy tool creates the nat table (and loads its module) just by listing it; an absent
  # legacy nat table holds no rules, so it is reported empty without touching the kernel.
  case $_iptv in
    *nf_tables*) ;;
    *)
      _t=
      if [ -e /proc/net/ip_tables_names ]; then
        # 0440 root: a non-root login cannot tell whether a nat table exists.
        [ -r /proc/net/ip_tables_names ] || { denied /proc/net/ip_tables_names; return; }
        while read -r _x; do
          [ "$_x" = nat ] && _t=1
        done < /proc/net/ip_tables_names
      fi
      [ -n "$_t" ] || return 0
      ;;
  esac
  iptables-save -t nat
}
# The same for IPv6 (the redirect method's ip6tables rules): ip6_tables_names, ip6tables-save.
f_ip6t_save() {
  need ip6tables-save || return
  case $_ip6tv in
    *nf_tables*) ;;
    *)
      _t=
      if [ -e /proc/net/ip6_tables_names ]; then
        [ -r /proc/net/ip6_tables_names ] || { denied /proc/net/ip6_tables_names; return; }
        while read -r _x; do
          [ "$_x" = nat ] && _t=1
        done < /proc/net/ip6_tables_names
      fi
      [ -n "$_t" ] || return 0
      ;;
  esac
  ip6tables-save -t nat
}
f_nft() {
  need nft || return
  _j=$(nft -j list ruleset) || return
  printf '%s\n' "$_j"
  case $_j in *'"name": "shoal_'*) ;; *) return 0 ;; esac
  # nft 1.0.6 JSON has no table comments: add the text listing's table/comment lines.
  _t=$(nft -t list ruleset) || return
  printf '%s comments\n' "$M"
  printf '%s\n' "$_t" | while IFS= read -r _l; do
    case $_l in "table "* | "${tab}comment "*) printf '%s\n' "$_l" ;; esac
  done
}
f_ipvs() {
  # ipvsadm would load ip_vs just by listing; without /proc/net/ip_vs there is no table.
  _m=0
  rd /proc/sys/kernel/osrelease || return
  for _f in /lib/modules/"$_v"/kernel/net/netfilter/ipvs/ip_vs.ko*; do
    [ -e "$_f" ] && _m=1
  done
  [ -d /sys/module/ip_vs ] && _m=1
  if [ ! -e /proc/net/ip_vs ]; then printf 'loaded=0 module=%s\n' "$_m"; return 0; fi
  printf 'loaded=1 module=%s\n' "$_m"
}
f_ipvs_save() { need ipvsadm && ipvsadm -Sn; }
f_ipvs_list() { need ipvsadm && ipvsadm -Ln; }
f_keepalived() {
  if ! command -v keepalived >/dev/null 2>&1; then echo installed=0; return 0; fi
  echo installed=1
  _v=$(keepalived -v 2>&1)
  printf 'version=%s\n' "${_v%%
*}"
  _run=0
  # The last: where states.keepalived starts it on a host without systemd (its PID_DIR).
  for _p in /run/keepalived.pid /var/run/keepalived.pid /var/lib/shoal/keepalived.pid; do
    there "$_p" || { [ $? = 1 ] && continue; return 13; }
    [ -r "$_p" ] || { denied "$_p"; return; }
    read -r _pid < "$_p" || continue
    case $_pid in '' | *[!0-9]*) continue ;; esac
    if ! [ -e "/proc/$_pid" ]; then
      # /proc mounted with hidepid hides other users' processes: one that exists is unknown.
      case $(kill -0 "$_pid" 2>&1) in *ermitted*) denied "/proc/$_pid"; return ;; esac
      continue
    fi
    # The pid must be a keepalived in this host's network namespace (lab hosts share /proc).
    [ -r "/proc/$_pid/comm" ] && read -r _c < "/proc/$_pid/comm" || continue
    [ "$_c" = keepalived ] || continue
    # Another user's process hides its namespace links: whether it runs here is unknown.
    if ! [ -e "/proc/$_pid/ns/net" ]; then
      [ -L "/proc/$_pid/ns/net" ] && { denied "/proc/$_pid/ns/net"; return; }
      continue
    fi
    [ "/proc/$_pid/ns/net" -ef /proc/self/ns/net ] && _run=1
  done
  printf 'running=%s\n' "$_run"
}
# Each path: missing, or stat (mode, size, type); a digest if it is a file; and the content of
# a regular file (not a link) of at most CONTENT_MAX bytes, base64 on one line, so a plan can
# show a real diff. stat's size spares reading a large file; head caps what one file sends
# should it grow in between. A file base64 cannot send just has no content line.
f_files() {
  _s=; _h=; _st=
  set -- $FILES
  for _p do
    there "$_p"
    case $? in
      0) _s="$_s $_p"; [ -f "$_p" ] && _h="$_h $_p" ;;
      1) printf 'missing %s\n' "$_p" ;;
      *) return 13 ;;
    esac
  done
  [ -n "$_s" ] || return 0
  _st=$(stat -c 'stat %a %s %F|%n' -- $_s) || return
  printf '%s\n' "$_st"
  [ -z "$_h" ] || sha256sum -- $_h || return
  while read -r _x _m _z _k; do
    case $_k in "regular file|"* | "regular empty file|"*) ;; *) continue ;; esac
    [ "$_z" -le "$CONTENT_MAX" ] || continue
    _c=$(head -c "$((CONTENT_MAX + 1))" < "${_k#*|}" | base64 -w0) || continue
    printf 'content %s %s\n' "${_k#*|}" "$_c"
  done <<EOF
$_st
EOF
}
f_tools() {
  for _t in $TOOLS; do
    if command -v "$_t" >/dev/null 2>&1; then echo "$_t=1"; else echo "$_t=0"; fi
  done
}
f_services() {
  if [ ! -d /run/systemd/system ]; then echo "systemd is not running" >&2; return 3; fi
  systemctl show -p Id -p ActiveState -p UnitFileState -- $SERVICES
}
f_ledger() {
  there "$LEDGER" || { [ $? = 1 ] && echo absent && return 0; return 13; }
  [ -r "$LEDGER" ] || { denied "$LEDGER"; return; }
  echo present
  while IFS= read -r _l || [ -n "$_l" ]; do printf '%s\n' "$_l"; done < "$LEDGER"
}
"""

_BODY = """
printf '%s facts v{version}\\n' "$M"
sec login f_login
sec hostname f_hostname
sec kernel f_kernel
sec addr f_addr
sec sysctl f_sysctl
_v=$(version arptables 2>&1); emit arptables-version $? "$_v"
sec arptables-list f_arp_list
_iptv=$(version iptables 2>&1); emit iptables-version $? "$_iptv"
sec iptables-save f_ipt_save
_ip6tv=$(version ip6tables 2>&1); emit ip6tables-version $? "$_ip6tv"
sec ip6tables-save f_ip6t_save
sec nft f_nft
sec ipvs f_ipvs
if [ -e /proc/net/ip_vs ]; then
  sec ipvs-save f_ipvs_save
  sec ipvs-list f_ipvs_list
fi
sec keepalived f_keepalived
sec files f_files
sec tools f_tools
sec services f_services
sec ledger f_ledger
printf '%s done\\n' "$M"
"""


# Paths are word-split by the script (it has no arrays), so only plain path characters pass.
_PATH_RE = re.compile(r"^/[A-Za-z0-9._/@+:,=-]*$")


def _check_path(path: str) -> str:
    if not _PATH_RE.match(path):
        raise ValueError(f"managed path {path!r} must be absolute and use plain characters only")
    return path


def build_facts_script(
    managed_paths: Iterable[str] = (),
    *,
    services: Sequence[str] = SERVICES,
    tools: Sequence[str] = TOOLS,
) -> str:
    """The facts script for one host; `managed_paths` are reported as `files` facts.

    Paths and names are validated and quoted: nothing from the config reaches the shell as
    code.
    """
    paths = list(dict.fromkeys([*DEFAULT_FILES, *(_check_path(p) for p in managed_paths)]))
    for name in (*services, *tools):
        if not _NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a plain unit or tool name")
    assignments = {
        "FILES": " ".join(paths),
        "TOOLS": " ".join(tools),
        "SERVICES": " ".join(services),
        "SYSCTL_CONF_KEYS": " ".join(SYSCTL_CONF_KEYS),
        "IPVS_SYSCTLS": " ".join(IPVS_SYSCTLS),
        "LEDGER": LEDGER_PATH,
        "CONTENT_MAX": str(FILE_CONTENT_MAX),
    }
    head = "".join(f"{k}={shlex.quote(v)}\n" for k, v in assignments.items())
    return head + _PRELUDE + _BODY.replace("{version}", SCRIPT_VERSION)
