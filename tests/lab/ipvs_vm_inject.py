"""An injected failure of one command on a VM director, for the IPVS VM rollback test.

The real program is copied into the guest's own /run and a wrapper is bind-mounted over its path
in the guest (the VM's mount namespace only: the shared root and this machine's copy are not
touched). The wrapper exits 3 on the `nth` call whose arguments contain a given string and runs
the real program otherwise, so facts, snapshots and the rollback's proof still read the host.
"""

from __future__ import annotations

from lab import Lab

# $1 path of the program, $2 the argument string to fail on, $3 which such call fails (1 = first).
_FAIL_WHEN = """set -e
real=/run/shoal-lab/real-$(basename "$1"); mkdir -p /run/shoal-lab
cp "$1" "$real"
printf '%s\\n' "$2" >"$real.when"
echo "$3" >"$real.nth"
{
  echo '#!/bin/sh'
  printf 'w=$(cat %s.when); c=%s.nth\\n' "$real" "$real"
  echo 'case " $* " in *"$w"*)'
  echo '  n=$(($(cat "$c") - 1)); echo $n >"$c"'
  echo '  if [ $n -eq 0 ]; then echo "shoal test: injected failure of $0" >&2; exit 3; fi ;;'
  echo 'esac'
  printf 'exec %s "$@"\\n' "$real"
} >"$real.wrap"
chmod 0755 "$real.wrap"
mount --bind "$real.wrap" "$1"
"""


async def inject_failure_when(lab: Lab, host: str, path: str, args: str, nth: int = 1) -> None:
    """Make `path` on the VM `host` exit 3 on the `nth` call whose arguments contain `args`."""
    await lab.exec(host, ["sh", "-c", _FAIL_WHEN, "sh", path, args, str(nth)])


async def clear_failure(lab: Lab, host: str, path: str) -> None:
    """Undo `inject_failure_when`: the real program is back at `path`."""
    await lab.exec(host, ["umount", path])
