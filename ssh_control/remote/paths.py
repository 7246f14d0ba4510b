"""The rules a remote path must meet before it is sent to an agent."""

import posixpath
import unicodedata

from ssh_control.exceptions import InvalidRemotePath

MAX_PATH_LENGTH = 4096


def remote_path_validate(path) -> str:
    """`path` normalised, if it is absolute, has no `..` and no control characters.

    Paths reach the agent through SFTP, never a shell, so any other character is literal.
    """
    if not isinstance(path, str) or not path:
        raise InvalidRemotePath("path is required")
    if any(unicodedata.category(char) == "Cc" for char in path):
        raise InvalidRemotePath("path must not contain control characters")
    if not path.startswith("/"):
        raise InvalidRemotePath(f"path must be absolute: {path}")
    if ".." in path.split("/"):
        raise InvalidRemotePath(f"path must not contain '..': {path}")
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidRemotePath(f"path is longer than {MAX_PATH_LENGTH} characters")
    return posixpath.normpath(path).replace("//", "/")
