"""An application module that fails to import (its dependency is missing)."""

import dbqueue_no_such_dependency  # noqa: F401
