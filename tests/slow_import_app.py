"""An application whose import takes a while: each process importing it leaves
a file named after its pid in $DBQUEUE_TEST_MARKERS, then sleeps."""

import os
import time

import dbqueue

app = dbqueue.App()

markers = os.environ.get("DBQUEUE_TEST_MARKERS")
if markers:
    open(os.path.join(markers, str(os.getpid())), "w").close()
    time.sleep(30)
