"""The Celery application shared by the web process, the SSH workers and beat."""

import logging.config
import os

from celery import Celery, signals

from ssh_control.manager.bootstep import ConnectionManagerStep

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claworc.settings")

app = Celery("claworc")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# SSH workers (`--hostname ssh@<node>`) hold the connections; see ssh_control.manager.
app.steps["worker"].add(ConnectionManagerStep)


@signals.setup_logging.connect
def use_project_logging(**kwargs):
    """Worker and beat log through the project's LOGGING, not handlers of Celery's own.

    Celery would otherwise replace the root logger's handler at start, dropping the
    formatter that escapes control characters (`audit.logsafe`); the `--loglevel` and
    `--logfile` options are ignored in favour of CLAWORC_LOG_LEVEL and standard error.
    """
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
