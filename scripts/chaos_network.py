"""A network path that can go dark: the failure a closed or crashed server is not.

When a database host fails over, or a firewall starts dropping packets, no
error reaches the client: its packets vanish, and a socket waiting for an
answer waits. ``Island`` is a network namespace of the caller's own, joined to
this one by a veth pair; a server started inside it (chaos_servers.py, with
``namespace`` and ``host``) is reached from here over that pair. ``cut()``
takes the far end of the pair down, so that packets sent to the server vanish
without an error; ``heal()`` brings it back.

Only addresses inside 10.213.0.0/16 on the pair are used; nothing is sent
anywhere else. Needs root and iproute2 (``ip``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

ISLANDS_PER_PROCESS = 4


class Island:
    @staticmethod
    def unavailable() -> str | None:
        """Why no island can be made here, or None."""
        if os.geteuid() != 0:
            return "making a network namespace needs root"
        if shutil.which("ip") is None:
            return "iproute2's ip is not installed"
        return None

    def __init__(self, index: int = 0) -> None:
        """``index``: which of this process's islands (0 to 3)."""
        if not 0 <= index < ISLANDS_PER_PROCESS:
            raise ValueError(f"index must be in 0..{ISLANDS_PER_PROCESS - 1}, not {index}")
        pid = os.getpid()
        # Per process and index, so that test processes running side by side
        # each have their own names and their own /30.
        self.namespace = f"dbqueue-{pid}-{index}"
        self._outer, self._inner = f"dbq{pid}o{index}", f"dbq{pid}i{index}"  # <= 15 characters
        block = (pid // 250 * ISLANDS_PER_PROCESS + index) % 64
        subnet, first = f"10.213.{pid % 250 + 1}", block * 4  # a /30
        here = f"{subnet}.{first + 1}"
        self.host = f"{subnet}.{first + 2}"
        """The address inside the island: where its server listens."""
        self._forget_stale()
        try:
            self._ip("netns", "add", self.namespace)
            self._ip("link", "add", self._outer, "type", "veth", "peer", "name", self._inner,
                     "netns", self.namespace)
            self._ip("addr", "add", f"{here}/30", "dev", self._outer)
            self._ip("link", "set", self._outer, "up")
            self._ip("-n", self.namespace, "addr", "add", f"{self.host}/30", "dev", self._inner)
            self._ip("-n", self.namespace, "link", "set", "lo", "up")
            self.heal()
            # Fixed neighbours: no ARP on the pair, whose failures while the
            # link is down would linger after heal() as errors no real
            # network would give.
            self._ip("neigh", "replace", self.host, "lladdr", self._mac(), "dev", self._outer,
                     "nud", "permanent")
            self._ip("-n", self.namespace, "neigh", "replace", here, "lladdr",
                     self._mac(outer=True), "dev", self._inner, "nud", "permanent")
        except BaseException:
            self.close()
            raise

    def _forget_stale(self) -> None:
        """A namespace of this name is left from an earlier process with this
        pid that was killed: end what still runs in it and delete it."""
        listed = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True,
                                text=True)
        if listed.returncode != 0:
            return  # there is none
        for pid in listed.stdout.split():
            subprocess.run(["kill", "-9", pid], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "del", self.namespace], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "link", "del", self._outer], stderr=subprocess.DEVNULL)

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, stdout=subprocess.DEVNULL)

    def _mac(self, outer: bool = False) -> str:
        where = ["link", "show", self._outer] if outer else [
            "-n", self.namespace, "link", "show", self._inner]
        shown = subprocess.run(["ip", "-j", *where], check=True, capture_output=True, text=True)
        return str(json.loads(shown.stdout)[0]["address"])

    def cut(self) -> None:
        """From now on, packets to the island vanish without an error."""
        self._ip("-n", self.namespace, "link", "set", self._inner, "down")

    def heal(self) -> None:
        self._ip("-n", self.namespace, "link", "set", self._inner, "up")

    def close(self) -> None:
        """Remove the namespace and the pair (stop the island's server first)."""
        subprocess.run(["ip", "netns", "del", self.namespace], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "link", "del", self._outer], stderr=subprocess.DEVNULL)
