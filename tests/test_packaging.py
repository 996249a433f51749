"""The built wheel carries its migrations: `dbqueue migrate` works from any directory."""

import subprocess
import sys
import zipfile

from tests.conftest import ROOT

VERSIONS = "dbqueue/migrations/versions/0"


def test_the_wheel_migrates_from_an_empty_directory(tmp_path):
    wheels, site, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(wheels), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("dbqueue-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "dbqueue/migrations/env.py" in names and "dbqueue/py.typed" in names
        shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith(VERSIONS)}
        assert shipped == {p.name for p in (ROOT / "migrations/versions").glob("0*.py")}
        archive.extractall(site)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    code = ("import dbqueue, sys; assert dbqueue.__file__.startswith(sys.argv[1]);"
            "from dbqueue.cli import main; sys.argv = ['dbqueue', 'migrate']; main()")
    result = subprocess.run([sys.executable, "-c", code, str(site)], cwd=empty, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"revision {max(shipped)[:4]}" in result.stdout  # the newest
    assert (empty / "dbqueue.db").exists()
