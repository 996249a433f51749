"""The worker's helper processes, forked rather than started as new
interpreters (dbqueue.worker.forkserver), still do their work."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or sys.version_info[:2] > (3, 12),
    reason="the helpers are forked on Linux, with Python 3.11 and 3.12")

# Creates shared memory in a process that then dies without removing it.
LEAKING = textwrap.dedent("""
    import os
    from multiprocessing import resource_tracker, shared_memory

    from dbqueue.worker import forkserver

    forkserver._start_resource_tracker(resource_tracker)
    tracker = resource_tracker._resource_tracker._pid
    forked = (open(f"/proc/{tracker}/cmdline", "rb").read()
              == open("/proc/self/cmdline", "rb").read())
    memory = shared_memory.SharedMemory(create=True, size=16)
    print(forked, memory.name, flush=True)
    os._exit(0)
""")


def test_the_forked_resource_tracker_removes_what_a_dead_process_left():
    """Shared memory and named semaphores outlive a process killed before it
    removed them; multiprocessing's resource tracker removes them once every
    process it serves is gone. The worker's, forked from the supervisor, too."""
    result = subprocess.run([sys.executable, "-c", LEAKING], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    forked, name = result.stdout.split()
    assert forked == "True"
    # The tracker may still be on its way out when run() returns.
    wait_until(lambda: not (Path("/dev/shm") / name.lstrip("/")).exists(),
               what="the resource tracker to remove the leaked shared memory")
