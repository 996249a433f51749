"""The built wheel: distribution dbqueue-sql, import package and command dbqueue.

The name dbqueue on PyPI belongs to an unrelated project. The wheel carries its
migrations: `dbqueue migrate` works from any directory.
"""

import subprocess
import sys
import sysconfig
import zipfile

import pytest

import dbqueue
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # builds a wheel and a virtualenv

VERSIONS = "dbqueue/migrations/versions/0"


def test_the_wheel_installs_the_dbqueue_package_and_command_and_migrates_anywhere(tmp_path):
    wheels, venv, empty = tmp_path / "wheels", tmp_path / "venv", tmp_path / "empty"
    empty.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(wheels), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name == f"dbqueue_sql-{dbqueue.__version__}-py3-none-any.whl"
    info = f"dbqueue_sql-{dbqueue.__version__}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "Name: dbqueue-sql\n" in archive.read(f"{info}/METADATA").decode()
        assert "dbqueue = dbqueue.cli:main" in archive.read(f"{info}/entry_points.txt").decode()
        assert {"dbqueue/migrations/env.py", "dbqueue/migrations/charset.py",
                "dbqueue/py.typed"} <= names
        shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith(VERSIONS)}
        assert shipped == {p.name for p in (ROOT / "migrations/versions").glob("0*.py")}

    # A virtualenv of its own, which finds the dependencies (SQLAlchemy, Alembic,
    # click) after its own site-packages, in this interpreter's: no network.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    (site,) = venv.glob("lib/python3*/site-packages")
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install",
                    "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)

    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin"}
    code = ("import dbqueue, importlib.metadata as m, sys;"
            "assert dbqueue.__file__.startswith(sys.argv[1]), dbqueue.__file__;"
            "print(m.version('dbqueue-sql'))")
    imported = subprocess.run([venv / "bin/python", "-c", code, str(site)], cwd=empty, env=env,
                              capture_output=True, text=True, timeout=120)
    assert (imported.returncode, imported.stdout) == (0, f"{dbqueue.__version__}\n"), \
        imported.stderr
    version = subprocess.run(["dbqueue", "--version"], cwd=empty, env=env,
                             capture_output=True, text=True, timeout=120)
    assert (version.returncode, version.stdout) == (0, f"dbqueue, version {dbqueue.__version__}\n")
    result = subprocess.run(["dbqueue", "migrate"], cwd=empty, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"revision {max(shipped)[:4]}" in result.stdout  # the newest
    assert (empty / "dbqueue.db").exists()
