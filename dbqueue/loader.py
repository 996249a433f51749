"""Finding the application's App from a ``module:attribute`` reference."""

from __future__ import annotations

import importlib
import os
import sys

from .app import App
from .errors import ConfigurationError


def load_app(reference: str) -> App:
    """Import ``module:attribute`` (the attribute defaults to ``app``) and return the App.

    The working directory is put on ``sys.path`` first, as ``python -m`` would,
    so ``--app myproject.tasks:app`` works from the project's root.
    """
    module_name, _, attribute = reference.partition(":")
    attribute = attribute or "app"
    if not module_name:
        raise ConfigurationError(
            f"--app {reference!r} names no module; write it as module:attribute, "
            "for example --app myproject.tasks:app"
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"--app {reference!r}: cannot import module {module_name!r} ({exc}); "
                "run from your project's root directory or fix the module path"
            ) from None
        raise
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        found = "nothing" if app is None else f"a {type(app).__name__}"
        raise ConfigurationError(
            f"--app {reference!r}: {module_name}.{attribute} is {found}, not a dbqueue.App"
        )
    return app
