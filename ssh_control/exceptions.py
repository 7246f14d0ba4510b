"""Every error the SSH layer raises, one hierarchy for the whole project.

Each class carries the HTTP status and the stable code that the API's exception handler
(`claworc.exceptions.api_exception_handler`) puts in the error body, so views never map
errors themselves. Messages follow the runbook's wording.
"""

import re


class ClaworcError(Exception):
    """Base class: an error whose message is safe to show an operator."""

    status_code = 400
    code = "error"

    def __init__(self, message: str | None = None):
        super().__init__(message or self.default_message)

    default_message = "request failed"

    @property
    def message(self) -> str:
        return str(self)


class SSHManagerUnavailable(ClaworcError):
    """No live SSH worker holds the instance's lease."""

    status_code = 503
    code = "ssh_manager_unavailable"
    default_message = "SSH manager not initialized"


class WorkerTimeout(ClaworcError):
    """The owning SSH worker did not answer in time."""

    status_code = 504
    code = "worker_timeout"


class NoSSHConnection(ClaworcError):
    status_code = 503
    code = "no_ssh_connection"

    def __init__(self, reason: str):
        super().__init__(f"No SSH connection for instance: {reason}")


class NoSSHKey(ClaworcError):
    status_code = 409
    code = "no_ssh_key"
    default_message = "Instance has no SSH key configured"


# The directories of an absolute path, so that only its last component remains.
_ABSOLUTE_DIRECTORIES = re.compile(r"(?<!\S)/(?:[^/\s]+/)*")


class KeyStorageError(ClaworcError):
    """The key directory or a key file cannot be used (never carries key material).

    `str()` keeps the whole detail for the log; `message`, which reaches API bodies,
    events and audit rows, names the file without the directories it is in.
    """

    status_code = 500
    code = "key_storage_error"

    @property
    def message(self) -> str:
        return _ABSOLUTE_DIRECTORIES.sub("", str(self))


class KeyFileExists(KeyStorageError):
    """A key file for a new instance's name is already on disk; it is never overwritten."""

    status_code = 409
    code = "key_file_exists"

    def __init__(self, name: str, file_names: list[str]):
        files = " and ".join(file_names)
        exists = "exists" if len(file_names) == 1 else "exist"
        super().__init__(
            f"cannot create instance {name}: key file {files} already {exists} in the key"
            " directory (ssh-keys in CLAWORC_DATA_DIR), left by an earlier instance of that"
            " name. Key files are never overwritten: move it out of the key directory (or"
            " delete it if no agent trusts that key) and create the instance again, or choose"
            " another name."
        )


class SSHConnectionError(ClaworcError):
    """Connecting, authenticating or a round trip over the connection failed or timed out."""

    status_code = 502
    code = "ssh_error"


class SSHUnreachable(SSHConnectionError):
    """The TCP connection to one of the agent's addresses failed; the next may answer."""


class ConnectionRefusedByGate(ClaworcError):
    """Base for the connection gate's refusals."""

    status_code = 429
    code = "connection_refused"


class ConnectionLimitReached(ConnectionRefusedByGate):
    status_code = 503
    code = "max_connections"

    def __init__(self, limit: int):
        super().__init__(f"connect: maximum connections ({limit}) reached")


class RateLimited(ConnectionRefusedByGate):
    code = "rate_limited"


class ConnectionBlocked(ConnectionRefusedByGate):
    code = "connection_blocked"


class SourceIPBlocked(ConnectionRefusedByGate):
    status_code = 403
    code = "ip_restricted"

    def __init__(self, ip: str):
        super().__init__(f"connection blocked: source IP {ip} is not in the allowed list")


class HostKeyMismatch(ConnectionRefusedByGate):
    status_code = 409
    code = "fingerprint_mismatch"

    def __init__(self, expected: str, actual: str):
        super().__init__(f"SSH key fingerprint mismatch: expected {expected}, got {actual}")


class KeyRotationFailed(ClaworcError):
    status_code = 502
    code = "key_rotation_failed"

    def __init__(self, reason: str):
        super().__init__(f"Key rotation failed: {reason}")


class RotationInProgress(ClaworcError):
    status_code = 409
    code = "rotation_in_progress"


class TunnelNotFound(ClaworcError):
    """No tunnel for a service (the runbook's wording), or none with a given id."""

    status_code = 404
    code = "tunnel_not_found"

    def __init__(self, service: str | None, instance_name: str, *, tunnel_id: int | None = None):
        if tunnel_id is None:
            message = f"no {service} tunnel found for instance {instance_name}"
        else:
            message = f"no tunnel with id {tunnel_id} for instance {instance_name}"
        super().__init__(message)
        self.instance_name = instance_name


# Remote operations (#7): commands, files and terminals over the held connection.


class InvalidRemotePath(ClaworcError):
    """A remote path that is not absolute, climbs with `..`, or holds control characters."""

    code = "invalid_path"


class RemotePathNotFound(ClaworcError):
    status_code = 404
    code = "remote_path_not_found"

    def __init__(self, path: str):
        super().__init__(f"no such file or directory: {path}")


class RemoteFileError(ClaworcError):
    """The agent refused a file operation (permission, not empty, already exists...)."""

    status_code = 409
    code = "remote_file_error"


class RemoteFileTooLarge(ClaworcError):
    status_code = 413
    code = "file_too_large"


class TerminalSessionNotFound(ClaworcError):
    status_code = 404
    code = "terminal_session_not_found"
    default_message = "terminal session not found or already closed"


class TerminalSessionBusy(ClaworcError):
    status_code = 409
    code = "terminal_session_busy"
    default_message = "terminal session is attached to another client"


class TerminalSessionLimitReached(ClaworcError):
    status_code = 429
    code = "terminal_session_limit"

    def __init__(self, limit: int):
        super().__init__(
            f"maximum terminal sessions ({limit}) per user and instance reached;"
            " end one, or resume it with its session_id"
        )
