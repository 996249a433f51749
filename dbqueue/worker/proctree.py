"""Killing a child process with the programs its jobs started.

They ignore the stop signals, as the child does (see child.child_main), so
that a stop lets them finish within the grace period; a timeout must end
them all, or they would outlive the job that started them.
"""

from __future__ import annotations

import contextlib
import os
import signal
from multiprocessing.process import BaseProcess


def kill_tree(process: BaseProcess) -> None:
    """Kill a child ``process`` and the programs its jobs started that are still its
    descendants, which would outlive it (they ignore SIGTERM, as the child
    does: see child.child_main). Each is stopped as it is found, so that none
    starts another meanwhile; then all are killed, the child last, so that no
    pid listed is reused before its kill. (A program that detached itself, as
    a daemon does, is the init process's and escapes.)"""
    pid = process.pid
    found: list[int] = []
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGSTOP)
        waiting = [pid]
        while waiting:
            for each in _children_of(waiting.pop()):
                if each not in found:
                    with contextlib.suppress(OSError):
                        os.kill(each, signal.SIGSTOP)
                    found.append(each)
                    waiting.append(each)
    for each in reversed(found):
        with contextlib.suppress(OSError):  # gone already
            os.kill(each, signal.SIGKILL)
    process.kill()


def _children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux; none elsewhere): from the
    kernel's list of each of its threads' children, or else by reading every
    process's parent."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    try:
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as listed:
                found += map(int, listed.read().split())
    except FileNotFoundError:  # a kernel without the list (or the thread ended)
        return _children_by_scan(pid)
    except OSError:
        return found
    return found


def _children_by_scan(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as stat:
                    # After the command's closing parenthesis: state, then ppid.
                    if int(stat.read().rpartition(b")")[2].split()[1]) == pid:
                        found.append(int(name))
            except (OSError, ValueError, IndexError):
                continue  # ended meanwhile
    return found
