"""How a connection notices that its network path died without a word.

A database host that fails over, or a firewall that starts dropping packets,
closes nothing: no FIN or RST reaches the client, and a socket waiting for an
answer waits until the kernel gives up on its retransmissions (about 15
minutes on Linux), or for ever when no data is in flight. A worker stuck so
cannot stop its overdue jobs or heed SIGTERM. So every connection dbqueue
opens to a server asks the kernel to probe a silent peer (TCP keepalive) and to
give up on data left unacknowledged (TCP_USER_TIMEOUT): a dead path then fails
within about ``seconds``, while a slow statement, whose server still answers
the probes, runs as long as it needs.

The server's end has the same problem the other way round. A client cut off
inside a transaction gives up on its socket without a word reaching the
server, whose session then waits for the client's next statement, holding
the transaction's row locks, until its own kernel notices: only when it has
an answer still unacknowledged, at its next retransmission after the path is
back (seconds to minutes later), else never (PostgreSQL), or after
wait_timeout, eight hours by default (MariaDB). Meanwhile every worker skips
the rows those locks hold, and a statement that needs one waits. So the
server is asked to probe its clients too, where it can be per session
(PostgreSQL, ``server_probes``); see also ``Dialect.limit_waits``.
"""

from __future__ import annotations

import math
import socket
from typing import Any

_PROBES = 3
_LONGEST_PROBE_WAIT = 32_767  # seconds: Linux refuses more (TCP_KEEPIDLE, TCP_KEEPINTVL)
_LONGEST_USER_TIMEOUT = 2**31 - 1  # milliseconds: a C int


def _idle_and_interval(seconds: float) -> tuple[int, int]:
    """Whole seconds of silence before the first probe, and between probes:
    together about ``seconds``, within what the kernel accepts."""
    idle = min(_LONGEST_PROBE_WAIT, max(1, math.floor(seconds / 2)))
    interval = min(_LONGEST_PROBE_WAIT, max(1, math.floor((seconds - idle) / _PROBES)))
    return idle, interval


def _user_timeout(seconds: float) -> int:
    return min(_LONGEST_USER_TIMEOUT, math.ceil(seconds * 1000))


def libpq_options(seconds: float) -> dict[str, Any]:
    """libpq's connection parameters for ``seconds`` (psycopg, psycopg2)."""
    idle, interval = _idle_and_interval(seconds)
    return {
        # libpq's own default waits for ever; it counts at least 2 s.
        "connect_timeout": max(2, math.ceil(seconds)),
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": _PROBES,
        "tcp_user_timeout": _user_timeout(seconds),
    }


def server_probes(seconds: float) -> dict[str, int]:
    """PostgreSQL's settings that have the server probe a silent client, and
    give up on one that leaves its answers unacknowledged, as the client does
    (``libpq_options``); per session, and ignored over a Unix socket."""
    idle, interval = _idle_and_interval(seconds)
    return {"tcp_keepalives_idle": idle, "tcp_keepalives_interval": interval,
            "tcp_keepalives_count": _PROBES, "tcp_user_timeout": _user_timeout(seconds)}


def keep_alive(sock: socket.socket, seconds: float) -> None:
    """Set the same on a driver's socket (PyMySQL, whose parameters have no
    keepalive of their own); options the platform lacks are left out, and a
    Unix socket, which has no network path, is left as it is."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    idle, interval = _idle_and_interval(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = [("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", _PROBES),
               ("TCP_USER_TIMEOUT", _user_timeout(seconds))]
    for name, value in options:
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
