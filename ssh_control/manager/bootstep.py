"""Starts the connection manager inside an SSH worker (`--hostname ssh@<node>`).

Imported by the Celery app before Django is set up, so the manager is imported lazily.
"""

import logging
import os
import socket

from celery import bootsteps

logger = logging.getLogger(__name__)

SSH_WORKER_PREFIX = "ssh@"


def worker_node(hostname: str) -> str | None:
    """The node an SSH worker serves, or None for any other worker."""
    if not hostname.startswith(SSH_WORKER_PREFIX):
        return None
    return (
        hostname[len(SSH_WORKER_PREFIX) :]
        or os.environ.get("CLAWORC_SSH_NODE")
        or (socket.gethostname())
    )


class ConnectionManagerStep(bootsteps.StartStopStep):
    """Runs the manager while the worker consumes; warm shutdown releases the leases."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.node = worker_node(worker.hostname)

    def start(self, worker):
        if self.node is None:
            return
        from ssh_control.manager.core import manager_start

        manager_start(self.node)

    def stop(self, worker):
        if self.node is None:
            return
        from ssh_control.manager.core import manager_stop

        manager_stop()

    def shutdown(self, worker):
        self.stop(worker)
