"""Remote-operation tasks: thin shims that run on the instance's owning SSH worker.

Each finds the live connection and calls one function of `operations` or `terminal`; a
domain error comes back as the error payload `ssh_control.dispatch` re-raises. Each
runs with the audit context the request that sent it passed (`bound_from_task`).
"""

from celery import shared_task
from django.conf import settings

from audit.context import bound_from_task
from ssh_control.exceptions import ClaworcError
from ssh_control.remote import operations, terminal
from ssh_control.remote.connections import live_connection
from ssh_control.tasks import error_payload

RUN_COMMAND = "ssh_control.remote.run_command"
LIST_DIRECTORY = "ssh_control.remote.list_directory"
MAKE_DIRECTORY = "ssh_control.remote.make_directory"
RENAME_PATH = "ssh_control.remote.rename_path"
DELETE_PATH = "ssh_control.remote.delete_path"
OPEN_DOWNLOAD = "ssh_control.remote.open_download"
OPEN_UPLOAD = "ssh_control.remote.open_upload"
OPEN_TERMINAL = "ssh_control.remote.open_terminal"

FILE_TIME_LIMIT_SECONDS = 120


def _answer(function, instance_id: int, **kwargs) -> dict:
    try:
        return function(live_connection(instance_id), **kwargs)
    except ClaworcError as exc:
        return error_payload(exc)


@shared_task(name=RUN_COMMAND, time_limit=settings.CLAWORC_EXEC_MAX_TIMEOUT_SECONDS + 60)
@bound_from_task
def run_command(instance_id: int, command: str, command_timeout: float) -> dict:
    return _answer(
        operations.command_execute, instance_id, command=command, timeout=command_timeout
    )


@shared_task(name=LIST_DIRECTORY, time_limit=FILE_TIME_LIMIT_SECONDS)
@bound_from_task
def list_directory(instance_id: int, path: str) -> dict:
    return _answer(operations.directory_list, instance_id, path=path)


@shared_task(name=MAKE_DIRECTORY, time_limit=FILE_TIME_LIMIT_SECONDS)
@bound_from_task
def make_directory(instance_id: int, path: str) -> dict:
    return _answer(operations.directory_make, instance_id, path=path)


@shared_task(name=RENAME_PATH, time_limit=FILE_TIME_LIMIT_SECONDS)
@bound_from_task
def rename_path(instance_id: int, source: str, target: str) -> dict:
    return _answer(operations.path_rename, instance_id, source=source, target=target)


@shared_task(name=DELETE_PATH, time_limit=FILE_TIME_LIMIT_SECONDS)
@bound_from_task
def delete_path(instance_id: int, path: str) -> dict:
    return _answer(operations.path_delete, instance_id, path=path)


@shared_task(name=OPEN_DOWNLOAD, time_limit=FILE_TIME_LIMIT_SECONDS)
@bound_from_task
def open_download(instance_id: int, path: str) -> dict:
    return _answer(operations.download_prepare, instance_id, path=path)


@shared_task(name=OPEN_UPLOAD, time_limit=FILE_TIME_LIMIT_SECONDS)
@bound_from_task
def open_upload(instance_id: int, path: str, size: int) -> dict:
    return _answer(operations.upload_prepare, instance_id, path=path, size=size)


@shared_task(name=OPEN_TERMINAL, time_limit=FILE_TIME_LIMIT_SECONDS)
@bound_from_task
def open_terminal(instance_id: int, **options) -> dict:
    try:
        return terminal.terminal_open(instance_id, **options)
    except ClaworcError as exc:
        return error_payload(exc)
