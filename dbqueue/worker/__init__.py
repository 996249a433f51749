"""The worker: a supervisor process per host and the child processes it runs jobs in.

Import its parts from their modules (``dbqueue.worker.supervisor`` and so on):
this package imports nothing by itself.
"""
