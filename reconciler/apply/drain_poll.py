"""The drain wait that ends a step with `Step.drain`: poll IPVS until a real server is idle.

The poll runs on the director between the step's commands (which set the real server's weight
to 0) and the next step, and reports `drain <step> <connections left> <seconds waited>`.
"""

from __future__ import annotations

import math

from reconciler.apply.sh_library import quote
from reconciler.plan.steps import Step

_DRAIN_FLAGS = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service", "fwmark": "-f"}
# IPVS states of a TCP connection whose client has already sent its FIN (or reset it). In Direct
# Routing IPVS sees only the client's half, and such entries stay in InActConn for the state's
# timeout (FIN_WAIT: 2 minutes): they carry nothing a drain must wait for.
_CLOSING_TCP_STATES = "FIN_WAIT|TIME_WAIT|CLOSE|CLOSE_WAIT|LAST_ACK"


def drain_poll(i: int, step: Step) -> str:
    assert step.drain is not None
    proto, _, service = step.drain.service.partition(" ")
    flag = _DRAIN_FLAGS.get(proto)
    if flag is None or not service:
        raise ValueError(f"cannot drain service {step.drain.service!r}")
    seconds = max(0, math.ceil(step.drain.timeout))
    rs = quote(step.drain.real_server)
    # ActiveConn and InActConn are the 5th and 6th fields of a `->` line of `ipvsadm -Ln`.
    count = (
        f"    _n=$(ipvsadm -Ln {flag} {quote(service)} 2>/dev/null | awk -v rs={rs} "
        "'$1 == \"->\" && $2 == rs { a += $5; s += $5 + $6 } END { print s + 0, a + 0 }')\n"
        '    _a=${_n#* }; _n=${_n%% *}\n'
    )
    if proto == "tcp":
        # Only inactive entries left: count those still opening or open (SYN_RECV, persistence
        # templates) in the connection list; the closing ones are done (see above).
        count += (
            '    if [ "${_a:-0}" -eq 0 ] && [ "${_n:-0}" -gt 0 ]; then\n'
            f"      _n=$(ipvsadm -Lnc 2>/dev/null | awk -v vs={quote(service)} -v rs={rs} "
            f"'$1 == \"TCP\" && $5 == vs && $6 == rs && $3 !~ /^({_CLOSING_TCP_STATES})$/ "
            "{ n++ } END { print n + 0 }')\n"
            "    fi\n"
        )
    return (
        f'if [ -z "$failed" ]; then\n'
        f"  _end=$(( $(date +%s) + {seconds} )); _start=$(date +%s)\n"
        f"  while :; do\n"
        f"{count}"
        f'    [ "${{_n:-0}}" -eq 0 ] && break\n'
        f'    [ "$(date +%s)" -ge "$_end" ] && break\n'
        f"    sleep 1\n"
        f"  done\n"
        f'  mark drain {i} "${{_n:-0}}" $(( $(date +%s) - _start ))\n'
        f"fi"
    )
