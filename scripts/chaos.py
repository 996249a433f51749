"""Run fault scenarios against real database servers; run it through ./scripts/chaos.

    ./scripts/chaos [--quick] [--only SCENARIO,...] [--backends postgresql,mariadb,sqlite]
                    [--jobs N] [--keep]

Scenarios (scripts/chaos_scenarios.py), each with three ``dbqueue work -c 2``:

kill        SIGKILL of a random worker's process group every 1-3 s, and a
            replacement worker, until the queue is empty
db-restart  immediate restarts of the database server (not on SQLite)
outage      the database server stops for 30 s (--quick: 5 s), then starts
stall       SIGSTOP of one worker's supervisor and of another worker's whole
            group for longer than their lease, then SIGCONT
poison      hand-inserted rows that no worker can run, among good jobs: each
            must end in failed_jobs with a reason (or run harmlessly), every
            good job must complete, and no worker may exit
partition   the network path to the server goes dark for 30 s (--quick: 5 s):
            packets vanish, no connection is closed; the workers' network
            timeout is 2 s (not on SQLite; needs root to make a network
            namespace, else skipped, or failed under CI=true)
idempotent  kill, with idempotent jobs that write one row per run to an effects
            table without a unique constraint: exactly one effect per key

The script starts PostgreSQL and MariaDB servers of its own on spare ports of
127.0.0.1 (for partition, each inside a network namespace of its own, on an
address of 10.213.0.0/16 reached over a veth pair: scripts/chaos_network.py),
with data under a temporary directory that it removes at the end (unless
--keep), also after Ctrl-C or an error. Backends run in parallel (one thread
each: their faults hit only their own server); scenarios on one backend run one
after another.

Prints one JSON line per scenario on stdout as it ends, then a table, with why
each failing scenario fails; progress goes to stderr. A scenario passes when
nothing is lost, no duplicate run is unexplained by a fault, no job is left
queued, and, for idempotent, every key has exactly one effect (poison: see
above). Definitions: scripts/chaos_report.py. Exit status 1 when any fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import chaos_fleet
from chaos_network import Island
from chaos_report import json_line, table
from chaos_scenarios import BY_NAME, SCENARIOS, Scale, run_scenario
from chaos_servers import SERVERS

FIRST_FIELDS = ["scenario", "backend", "jobs", "faults", "lost", "duplicates",
                "unexplained_duplicates", "failed_poison", "failed_good", "recover_s",
                "seconds", "passed"]
_output = threading.Lock()


def say(message: str) -> None:
    with _output:
        print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def choices(allowed: list[str]):
    def parse(text: str) -> list[str]:
        chosen = [name.strip() for name in text.split(",") if name.strip()]
        if not chosen or set(chosen) - set(allowed):
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list among {','.join(allowed)}, not {text!r}")
        return [name for name in allowed if name in chosen]
    return parse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [s.name for s in SCENARIOS]
    parser.add_argument("--quick", action="store_true",
                        help="fewer jobs and shorter faults: the whole run in about 2 minutes")
    parser.add_argument("--only", type=choices(names), default=names, metavar="SCENARIOS",
                        help=f"run only these [default: {','.join(names)}]")
    parser.add_argument("--backends", type=choices(list(SERVERS)), default=list(SERVERS),
                        metavar="BACKENDS", help=f"[default: {','.join(SERVERS)}]")
    parser.add_argument("--jobs", type=int, help="good jobs per scenario "
                        "[default: 10000, --quick: 1500]")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (records, worker and server logs)")
    args = parser.parse_args()
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def failed_to_run(name: str, backend: str, scale: Scale, error: BaseException) -> dict:
    """The result of a scenario that could not run to its end."""
    say(f"[{backend} {name}] error: {''.join(traceback.format_exception(error)).rstrip()}")
    return {**dict.fromkeys(FIRST_FIELDS), "scenario": name, "backend": backend,
            "jobs": scale.jobs, "passed": False,
            "problems": [f"error: {type(error).__name__}: {error}"]}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")  # as tests/conftest.py


def island_for(backend: str, names: list[str]) -> tuple[Island | None, str | None]:
    """A network island for ``backend``'s server if a scenario among ``names``
    cuts its network path; else None, with why if one was needed."""
    if not (SERVERS[backend].has_server
            and any(BY_NAME[name].network_timeout is not None for name in names)):
        return None, None
    reason = Island.unavailable()
    if reason:
        return None, reason
    try:
        return Island(list(SERVERS).index(backend)), None
    except subprocess.CalledProcessError as error:  # root, but no CAP_NET_ADMIN here
        return None, f"no network namespace could be made: {error}"


def start_server(backend: str, names: list[str], root: Path,
                 servers: dict) -> tuple[object, str | None]:
    """``backend``'s server (inside an island if a scenario cuts its network
    path, and one can be made: else, why not)."""
    island, no_island = island_for(backend, names)
    try:
        inside = {"namespace": island.namespace, "host": island.host} if island else {}
        server = servers[backend] = SERVERS[backend](root / backend, **inside)
    except BaseException:
        if island:
            island.close()
        raise
    server.island = island
    return server, no_island


def run_backend(backend: str, names: list[str], scale: Scale, root: Path,
                servers: dict, results: list[dict]) -> None:
    """Start ``backend``'s server and run the scenarios there, one after another.
    An error fails its scenario (or, starting the server, all of them), not the run."""
    say(f"[{backend}] starting the server")
    no_island = None
    try:
        server, no_island = start_server(backend, names, root, servers)
    except Exception as error:
        server, setup_error = None, error
    for name in names:
        scenario = BY_NAME[name]
        if scenario.server_faults and not SERVERS[backend].has_server:
            continue
        cannot = no_island if scenario.network_timeout is not None else None
        if cannot and not in_ci():
            say(f"[{backend} {name}] skipped: {cannot}")
            continue
        say(f"[{backend} {name}] {scale.jobs} jobs")
        try:
            if cannot:
                raise RuntimeError(f"{cannot} (CI=true: every scenario must run)")
            if server is None:
                raise RuntimeError(f"the {backend} server did not start") from setup_error
            result = run_scenario(scenario, server, scale, root / f"{backend}-{name}",
                                  lambda message, n=name: say(f"[{backend} {n}] {message}"))
        except chaos_fleet.Aborted:
            raise
        except Exception as error:
            result = failed_to_run(name, backend, scale, error)
        result = {**{k: result[k] for k in FIRST_FIELDS}, **result}
        with _output:
            print(json_line(result), flush=True)
            results.append(result)
        say(f"[{backend} {name}] {'passed' if result['passed'] else 'FAILED'}")


def run_all(args: argparse.Namespace, root: Path) -> list[dict]:
    scale = Scale(args.quick, args.jobs or (1500 if args.quick else 10000))
    results: list[dict] = []
    servers: dict = {}
    pool = ThreadPoolExecutor(len(args.backends))
    try:
        futures = [pool.submit(run_backend, backend, args.only, scale, root, servers, results)
                   for backend in args.backends]
        for future in futures:
            while not future.done():  # waits in slices: Ctrl-C must reach this thread
                time.sleep(0.2)
            future.result()
    finally:
        chaos_fleet.STOP.set()  # other backends leave their scenarios at once
        pool.shutdown(wait=True)
        chaos_fleet.kill_everything()
        for server in servers.values():
            server.close()
            if server.island:
                server.island.close()
    order = {(s.name, b): i for i, (s, b) in enumerate(
        (s, b) for s in SCENARIOS for b in SERVERS)}
    return sorted(results, key=lambda r: order[(r["scenario"], r["backend"])])


LOG_TAIL = 25  # lines of each worker's log shown for a failed scenario
STACKS = "Fatal Python error: Aborted"  # the head of a stuck worker's stacks (chaos_fleet)


def show_failed_logs(results: list[dict], root: Path) -> None:
    """The end of each worker's log of every failed scenario, on stderr: a
    run without --keep (CI) leaves nothing else to find out why."""
    for result in results:
        if result["passed"]:
            continue
        directory = root / f"{result['backend']}-{result['scenario']}"
        for path in sorted(directory.glob("worker-*.log")):
            lines = path.read_text(errors="replace").splitlines()
            # A stuck worker's stacks in full, with a few lines before them.
            start = next((i - 5 for i, line in enumerate(lines) if STACKS in line),
                         len(lines) - LOG_TAIL)
            lines = lines[max(0, start):]
            say(f"--- {directory.name}/{path.name}, last {len(lines)} line(s):")
            for line in lines:
                say(f"    {line}")


def on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    root = Path(tempfile.mkdtemp(prefix="dbqueue-chaos-"))
    if os.geteuid() == 0 and "postgresql" in args.backends:
        shutil.chown(root, "postgres")  # PostgreSQL, run as postgres, must reach its data
    started = time.monotonic()
    results: list[dict] = []
    try:
        results = run_all(args, root)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception:
        traceback.print_exc()
        return 2
    finally:
        show_failed_logs(results, root)
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(table(results))
    say(f"chaos: {len(results)} scenario run(s) in {time.monotonic() - started:.0f} s")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
