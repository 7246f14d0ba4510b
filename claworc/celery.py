"""The Celery application shared by the web process, the SSH workers and beat."""

import os

from celery import Celery

from ssh_control.manager.bootstep import ConnectionManagerStep

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claworc.settings")

app = Celery("claworc")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# SSH workers (`--hostname ssh@<node>`) hold the connections; see ssh_control.manager.
app.steps["worker"].add(ConnectionManagerStep)
