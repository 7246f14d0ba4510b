import atexit

from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "SSH audit log"

    def ready(self):
        from celery import signals

        from audit.writer import shutdown_default_writer

        # A clean exit writes what is still queued, or spools it when the database is away.
        atexit.register(shutdown_default_writer)
        signals.worker_shutdown.connect(_flush_on_worker_shutdown, weak=False)
        signals.worker_process_shutdown.connect(_flush_on_worker_shutdown, weak=False)


def _flush_on_worker_shutdown(**kwargs):
    from audit.writer import shutdown_default_writer

    shutdown_default_writer()
