"""A Celery beat schedule that first fires a fixed delay after beat starts, then at an
interval; settings import it, so it imports nothing from Django."""

import time
from datetime import timedelta

from celery.schedules import schedstate, schedule


class after_start(schedule):  # noqa: N801  (named like Celery's own `crontab`, `solar`)
    """Every `run_every`, the first time `first_delay` after this process started."""

    def __init__(self, run_every: timedelta, first_delay: timedelta, relative=False, **kwargs):
        super().__init__(run_every, relative=relative, **kwargs)
        self.first_delay = first_delay
        self.first_due_at = time.time() + first_delay.total_seconds()
        self.has_run = False

    def is_due(self, last_run_at):
        if self.has_run:
            return super().is_due(last_run_at)
        remaining = self.first_due_at - time.time()
        if remaining > 0:
            return schedstate(False, remaining)
        self.has_run = True
        return schedstate(True, self.run_every.total_seconds())

    def __reduce__(self):
        # Beat's shelve pickles the schedule at every sync and reads it back: the first
        # run's deadline and whether it happened travel with it, or every read would
        # start the delay afresh. A restarted beat takes the schedule from the settings.
        state = {"first_due_at": self.first_due_at, "has_run": self.has_run}
        return self.__class__, (self.run_every, self.first_delay, self.relative), state

    def __repr__(self):
        return f"<after_start every {self.run_every}, first after {self.first_delay}>"
