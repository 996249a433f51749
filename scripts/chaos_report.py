"""What a chaos scenario did: runs from the records, judged against the faults.

Definitions (applied the same way to every scenario and backend):

run
    One execution of a job function: its start record and the end record that
    the same process wrote next for the same key (none if it died first).
    See scripts/chaos_app.py for the records.
lost
    A dispatched key with no ended run, no row in failed_jobs and no row left
    in jobs when the run is over.
left
    A row still in jobs after the queue stopped draining (see chaos_scenarios).
duplicate run
    Every run of a key after its first, in order of start.
in flight at a fault (an explained duplicate)
    A duplicate run R is explained by a fault F when the run before it, P:

    * ran in a process that F hit: F is a database fault (restart, outage:
      every worker is hit, as none can record an outcome), or P's process
      group is the worker group F killed or stopped;
    * started no later than F ended (for a kill, when killpg had returned);
    * had not ended, or ended at most GRACE seconds before F started (a
      completion waits a moment in the worker before it is written);
    * and R started after F started (a fault cannot cause an earlier run).

    Any other duplicate is unexplained, and its key is reported.
failed_poison, failed_good
    Rows in failed_jobs for the hand-inserted poison rows, and for good jobs.
recover_s
    For each fault, the seconds from its end to the end of the first run that
    started after it; the worst over the faults.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

GRACE = 1.0
SHOWN_KEYS = 20  # keys listed per problem in the JSON line, for debugging
TOLD_DUPLICATES = 3  # unexplained duplicates told in full (runs and faults), for debugging


@dataclass(frozen=True)
class Fault:
    kind: str
    start: float  # time.time(), the same clock as the run records
    end: float
    pgid: int | None = None
    """The worker group it hit; None for a database fault, which hits every worker."""


@dataclass
class Run:
    key: int
    pid: int
    pgid: int
    start: float
    end: float | None = None


@dataclass(frozen=True)
class EndState:
    """What the database holds once the scenario is over."""

    failed: list[dict]  # failed_jobs rows: job_id, key (None for poison), class, message
    left: list[dict]  # jobs rows: id, job, key, attempts, reserved_by
    effects: dict[int, int] | None  # effects per key (idempotent scenario only)


def read_runs(records: Path) -> dict[int, list[Run]]:
    """Every run in the record files, by key, in order of start."""
    runs: dict[int, list[Run]] = {}
    for path in records.glob("*.log"):
        open_runs: dict[int, Run] = {}  # one file is one process's, in order
        for line in path.read_text().splitlines():
            kind, key, pid, pgid, at = line.split()
            if kind == "S":
                run = Run(int(key), int(pid), int(pgid), float(at))
                open_runs[run.key] = run
                runs.setdefault(run.key, []).append(run)
            elif (run := open_runs.pop(int(key), None)) is not None:
                run.end = float(at)
    for key_runs in runs.values():
        key_runs.sort(key=lambda r: r.start)
    return runs


def working_groups(records: Path) -> set[int]:
    """The process groups (workers) that have started a job so far."""
    groups = set()
    for path in records.glob("*.log"):
        with open(path) as lines:
            first = lines.readline().split()
        if len(first) == 5:  # a line being written may be incomplete
            groups.add(int(first[3]))
    return groups


def explains(fault: Fault, before: Run, again: Run) -> bool:
    return ((fault.pgid is None or fault.pgid == before.pgid)
            and before.start <= fault.end
            and (before.end is None or before.end >= fault.start - GRACE)
            and again.start >= fault.start)


def duplicates(runs: dict[int, list[Run]], faults: list[Fault]) -> tuple[int, list[int]]:
    """The number of duplicate runs, and the keys of the unexplained ones."""
    count, unexplained = 0, []
    for key, key_runs in sorted(runs.items()):
        for before, again in itertools.pairwise(key_runs):
            count += 1
            if not any(explains(f, before, again) for f in faults):
                unexplained.append(key)
    return count, unexplained


def tell_duplicate(runs: dict[int, list[Run]], faults: list[Fault], key: int) -> str:
    """The first unexplained duplicate of ``key`` told in full: both runs and
    the faults that came nearest to explaining it, in seconds from the first
    run's start (a CI run keeps no records: this is what is left to read)."""
    origin = min(run.start for key_runs in runs.values() for run in key_runs)

    def at(instant: float | None) -> str:
        return "never" if instant is None else f"{instant - origin:+.2f}"

    before, again = next((b, a) for b, a in itertools.pairwise(runs[key])
                         if not any(explains(f, b, a) for f in faults))
    hit = [f for f in faults if f.pgid is None or f.pgid == before.pgid]
    told = "; ".join(f"{f.kind} {at(f.start)}..{at(f.end)}" for f in hit) or "none"
    return (f"key {key}: ran in group {before.pgid} (pid {before.pid}) from "
            f"{at(before.start)}, ended {at(before.end)}; again in group {again.pgid} "
            f"(pid {again.pid}) from {at(again.start)}; faults on group {before.pgid}: {told}")


def recovery(runs: dict[int, list[Run]], faults: list[Fault]) -> float | None:
    """The worst time, over the faults, from a fault's end to the end of the first
    run that started after it: when the workers were taking new jobs again
    (a child may finish jobs it was handed before the fault while the
    database is still down, so any end after the fault would say too little)."""
    done = [r for key_runs in runs.values() for r in key_runs if r.end is not None]
    worst = None
    for fault in faults:
        after = [r.end for r in done if r.start > fault.end]
        if after:
            worst = max(worst or 0.0, min(after) - fault.end)
    return None if worst is None else round(worst, 2)


def poison_outcomes(poison: dict[int, str], state: EndState) -> dict[str, str]:
    """How each poison row ended: failed (with its reason), completed, or left."""
    failed = {row["job_id"]: row for row in state.failed}
    left = {row["id"] for row in state.left}
    outcomes = {}
    for job_id, label in poison.items():
        if job_id in failed:
            row = failed[job_id]
            outcomes[label] = f"failed: {row['exception_class']}: {row['message'][:240]}"
        else:
            outcomes[label] = "left in jobs" if job_id in left else "completed (harmless)"
    return outcomes


def effects_wrong(keys: int, state: EndState, unfinished: set[int]) -> list[int]:
    """Keys with more than one effect, or none although their job completed (a
    job that failed or is still queued may have none)."""
    if state.effects is None:
        return []
    return [key for key in range(keys) if state.effects.get(key, 0) > 1
            or (state.effects.get(key, 0) == 0 and key not in unfinished)]


def judge(scenario: str, backend: str, keys: int, poison: dict[int, str],
          records: Path, faults: list[Fault], state: EndState) -> dict:
    """The scenario's result: the JSON line's fields except the timing ones."""
    runs = read_runs(records)
    failed_good = [row for row in state.failed if row["job_id"] not in poison]
    failed_keys = {row["key"] for row in failed_good}
    left_keys = {row["key"] for row in state.left}
    ended = {key for key, key_runs in runs.items() if any(r.end is not None for r in key_runs)}
    lost = [k for k in range(keys) if k not in ended | failed_keys | left_keys]
    count, unexplained = duplicates(runs, faults)
    outcomes = poison_outcomes(poison, state)
    return {
        "scenario": scenario, "backend": backend, "jobs": keys, "faults": len(faults),
        "lost": len(lost), "duplicates": count, "unexplained_duplicates": len(unexplained),
        "failed_poison": len(state.failed) - len(failed_good), "failed_good": len(failed_good),
        "recover_s": recovery(runs, faults), "left": len(state.left),
        "failed_good_reasons": dict(Counter(row["exception_class"] for row in failed_good)),
        "lost_keys": lost[:SHOWN_KEYS], "unexplained_keys": unexplained[:SHOWN_KEYS],
        "unexplained_told": [tell_duplicate(runs, faults, key)
                             for key in unexplained[:TOLD_DUPLICATES]],
        "left_rows": [f"{r['id']} {r['job']} attempts={r['attempts']}"
                      + (" (leased)" if r["reserved_by"] else "") for r in state.left][:SHOWN_KEYS],
        "poison": outcomes,
        "effects_wrong_keys": effects_wrong(keys, state, failed_keys | left_keys)[:SHOWN_KEYS],
    }


def problems(result: dict, poison_scenario: bool, exits: list[int]) -> list[str]:
    """Why the scenario fails its pass line (empty: it passes)."""
    why = []
    if result["lost"]:
        why.append(f"{result['lost']} lost: keys {result['lost_keys']}")
    if result["unexplained_duplicates"]:
        why.append(f"{result['unexplained_duplicates']} unexplained duplicate run(s): "
                   f"keys {result['unexplained_keys']}")
        why += result["unexplained_told"]
    if result["left"]:
        why.append(f"{result['left']} row(s) left in jobs: {result['left_rows']}")
    if result["effects_wrong_keys"]:
        why.append(f"keys without exactly one effect: {result['effects_wrong_keys']}")
    if poison_scenario:
        if result["failed_good"]:
            why.append(f"{result['failed_good']} good job(s) failed: "
                       f"{result['failed_good_reasons']}")
        why += [f"poison row {label!r} was {outcome}" for label, outcome in
                result["poison"].items() if outcome == "left in jobs"]
        if exits:
            codes = ", ".join(f"{code} ({n}x)" for code, n in sorted(Counter(exits).items()))
            why.append(f"{len(exits)} worker(s) exited by themselves, exit code {codes} "
                       f"(workers must not exit)")
    return why


COLUMNS = [("scenario", "scenario"), ("backend", "backend"), ("jobs", "jobs"),
           ("faults", "faults"), ("lost", "lost"), ("left", "left"),
           ("duplicates", "dup runs"), ("unexplained_duplicates", "unexplained"),
           ("failed", "failed poison/good"), ("recover_s", "recover s"),
           ("worker_exits", "exits"), ("log_lines", "log lines"),
           ("seconds", "seconds"), ("passed", "result")]


def cell(result: dict, field: str) -> str:
    if field == "failed":
        return f"{result['failed_poison']}/{result['failed_good']}"
    if field == "passed":
        return "pass" if result["passed"] else "FAIL"
    value = result.get(field)
    return "-" if value is None else str(value)


def table(results: list[dict]) -> str:
    """The results as a plain-text table, followed by why each failing one fails."""
    rows = [[title for _, title in COLUMNS]]
    rows += [[cell(r, field) for field, _ in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(text.rjust(w) if i > 1 else text.ljust(w)
                       for i, (text, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        for reason in r["problems"]:
            lines.append(f"{r['scenario']}/{r['backend']}: {reason}")
    return "\n".join(lines)


def json_line(result: dict) -> str:
    return json.dumps(result, separators=(", ", ": "))
