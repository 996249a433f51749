"""An application whose App refuses its own setting (a mistyped prefix)."""

import dbqueue

app = dbqueue.App(table_prefix="bad-")
