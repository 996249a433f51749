"""Finding the application's App from a ``module:attribute`` reference."""

from __future__ import annotations

import importlib
import os
import site
import sys
import sysconfig
import traceback
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .app import App


def load_app(reference: str) -> App:
    """Import ``module:attribute`` (the attribute defaults to ``app``) and return the App.

    The working directory is put on ``sys.path`` first (see ``search_cwd``).
    """
    from .app import App  # here: `dbqueue work` imports this module before SQLAlchemy

    module_name, _, attribute = reference.partition(":")
    attribute_given = bool(attribute)
    attribute = attribute or "app"
    if not module_name:
        raise ConfigurationError(
            f"--app {reference!r} names no module; write it as module:attribute, "
            "for example --app myproject.tasks:app"
        )
    if module_name.startswith(".") or "/" in module_name or "\\" in module_name:
        raise ConfigurationError(f"--app {reference!r}: {_as_module(module_name, attribute)}")
    search_cwd()
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        if (isinstance(exc, ModuleNotFoundError) and exc.name
                and module_name.startswith(exc.name)):  # the module itself is not there
            parent, _, last = module_name.rpartition(".")
            if not attribute_given and parent and hasattr(_imported(parent), last):
                raise ConfigurationError(  # pkg.tasks.app for pkg.tasks:app
                    f"--app {reference!r}: there is no module {module_name!r}, but module "
                    f"{parent} has {last!r}: name an attribute after a colon, "
                    f"--app {parent}:{last}") from None
            raise ConfigurationError(
                f"--app {reference!r}: cannot import module {module_name!r} ({exc}); "
                + _as_module(module_name, attribute)) from None
        # The application's module is there but broken (or needs a missing package).
        # Chained (not hidden) so that -v can show the whole traceback.
        raise ConfigurationError(_import_failed(reference, module_name, exc)) from exc
    if not hasattr(module, attribute):
        raise ConfigurationError(
            f"--app {reference!r}: module {module_name} has no attribute {attribute!r}"
        )
    app = getattr(module, attribute)
    if not isinstance(app, App):
        raise ConfigurationError(
            f"--app {reference!r}: {module_name}.{attribute} is {_article(type(app).__name__)} "
            f"{type(app).__name__}, not a dbqueue.App"
        )
    return app


def search_cwd() -> None:
    """Put the working directory on ``sys.path``, as ``python -m`` would, so that
    ``--app myproject.tasks:app`` works from the project's root."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def _import_failed(reference: str, module_name: str, error: Exception) -> str:
    """One line that says where the application's module failed to import."""
    if isinstance(error, SyntaxError) and error.filename:
        where = f"{error.filename}:{error.lineno}"
    else:
        frame = _users_frame(traceback.extract_tb(error.__traceback__))
        where = f"{frame.filename}:{frame.lineno}" if frame else module_name
    if isinstance(error, ConfigurationError):  # dbqueue refused a setting, a job: that first
        return (f"{error} (at {where}, importing {module_name} for --app {reference!r}); "
                "-v shows the whole traceback")
    return (f"--app {reference!r}: importing {module_name} failed at {where}: "
            f"{type(error).__name__}: {error}; -v shows the whole traceback")


def _users_frame(frames: list[traceback.FrameSummary]) -> traceback.FrameSummary | None:
    """The deepest frame in the user's own code, else the deepest of all.

    The innermost frame is where the exception was raised, often deep in a
    library (``json.loads("{")`` fails in json/decoder.py); the line to fix is
    the user's call of it.
    """
    for frame in reversed(frames):
        if not _in_library(frame.filename):
            return frame
    return frames[-1] if frames else None


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    found = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    found.update(site.getsitepackages())
    found.add(site.getusersitepackages())
    # dbqueue itself: installed it is in site-packages anyway; from a checkout,
    # an error it raises during the import (App(table_prefix="bad-")) is still
    # the user's line to fix.
    found.add(os.path.dirname(__file__))
    return tuple(os.path.join(os.path.realpath(path), "") for path in found)


def _in_library(filename: str) -> bool:
    # importlib's bootstrap, frozen into the interpreter; code Python made
    # itself (a dataclass's __init__ is "<string>"): none of it the user's.
    if filename.startswith("<frozen ") or filename == "<string>":
        return True
    return os.path.realpath(filename).startswith(_library_dirs())


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeio" else "a"  # a UUID, an int


def _as_module(name: str, attribute: str) -> str:
    """What to do about a module that is not there: a file's path given for it
    (``src/tasks.py``) is written as the module's dotted name."""
    path = name.replace("\\", "/")
    if os.path.isabs(path):  # as it is from here, where the command runs
        path = os.path.relpath(path).replace("\\", "/")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if name.endswith(".py") or len(parts) > 1:
        dotted = ".".join(parts).removesuffix(".py")
        example = f": --app {dotted}:{attribute}" if ".." not in parts else ""
        return (f"--app takes the module's dotted name, as Python imports it from your "
                f"project's root, not a file's path{example}")
    return "run from your project's root directory or fix the module path"


def _imported(module_name: str) -> object:
    """The module ``module_name``, or None if it does not import."""
    try:
        return importlib.import_module(module_name)
    except Exception:
        return None
