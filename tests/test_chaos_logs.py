"""scripts/chaos: what a failed scenario leaves on stderr when its directory
goes (a CI run keeps nothing else). No database."""

import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import chaos


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
