"""An application module that builds its App, then raises while importing."""

import dbqueue

app = dbqueue.App()

raise RuntimeError("the settings file is missing")
