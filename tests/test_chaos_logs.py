"""scripts/chaos: what a failed scenario leaves on stderr when its directory
goes (a CI run keeps nothing else). No database."""

import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import chaos
import chaos_report
from chaos_report import Fault, Run


def test_a_failed_scenario_shows_the_end_of_each_workers_log(tmp_path, capsys):
    failed, passed = tmp_path / "mariadb-partition", tmp_path / "postgresql-partition"
    failed.mkdir()
    passed.mkdir()
    (failed / "worker-1.log").write_text("".join(f"line {n}\n" for n in range(40)))
    (failed / "worker-2.log").write_text("only line\n")
    (passed / "worker-1.log").write_text("not shown\n")
    chaos.show_failed_logs([
        {"scenario": "partition", "backend": "mariadb", "passed": False},
        {"scenario": "partition", "backend": "postgresql", "passed": True},
    ], tmp_path)
    shown = [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert shown == [
        f"--- mariadb-partition/worker-1.log, last {chaos.LOG_TAIL} line(s):",
        *(f"    line {n}" for n in range(40 - chaos.LOG_TAIL, 40)),
        "--- mariadb-partition/worker-2.log, last 1 line(s):",
        "    only line",
    ]


def test_a_stuck_workers_stacks_are_shown_whole(tmp_path, capsys):
    directory = tmp_path / "mariadb-partition"
    directory.mkdir()
    stacks = [chaos.STACKS, *(f"  frame {n}" for n in range(60))]
    (directory / "worker-1.log").write_text(
        "".join(f"{line}\n" for line in [*(f"line {n}" for n in range(40)), *stacks]))
    chaos.show_failed_logs([{"scenario": "partition", "backend": "mariadb", "passed": False}],
                           tmp_path)
    shown = [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert shown[1:] == [f"    {line}" for line in [*(f"line {n}" for n in range(35, 40)),
                                                     *stacks]]


def test_an_unexplained_duplicate_is_told_with_its_runs_and_the_faults_near_it():
    # Key 7 ended in group 100 two seconds before that group was killed, then
    # ran again in group 200: the kill does not explain it (GRACE is 1 s).
    runs = {7: [Run(7, 101, 100, start=1000.0, end=1001.0),
                Run(7, 201, 200, start=1004.5, end=1004.6)],
            8: [Run(8, 101, 100, start=1000.5, end=1003.2)]}
    faults = [Fault("kill", 1003.0, 1003.1, pgid=100), Fault("kill", 1003.5, 1003.6, pgid=300)]
    assert chaos_report.duplicates(runs, faults) == (1, [7])
    assert chaos_report.tell_duplicate(runs, faults, 7) == (
        "key 7: ran in group 100 (pid 101) from +0.00, ended +1.00; again in group 200 "
        "(pid 201) from +4.50; faults on group 100: kill +3.00..+3.10")
