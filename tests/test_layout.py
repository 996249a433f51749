"""How the source is laid out: small modules (STYLE.md, "Small pieces"). No database."""

from pathlib import Path

from tests.conftest import ROOT

MAX_MODULE_LINES = 400
"""A module longer than this is split before it grows further: by then it
holds more than one idea, and its readers scroll more than they read."""

PACKAGE = ROOT / "dbqueue"


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_has_modules_to_measure():
    # Guards the test below: a wrong path would make it pass on nothing.
    assert PACKAGE / "__init__.py" in modules()


def test_no_module_is_longer_than_the_limit():
    too_long = []
    for path in modules():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)} has {lines} lines")
    assert not too_long, (
        f"modules over the limit of {MAX_MODULE_LINES} lines (split them into "
        f"modules of one idea each): " + "; ".join(too_long)
    )
