"""Edits an agent's `authorized_keys` file over an SSH connection, one key line at a time.

A key is matched by its type and base64 blob, whatever its options or comment, so only
that key's own lines are touched. The new content travels on the command's stdin; the
agent writes it to a temporary file beside the original (mode 0600, the original's
owner) and renames it over the original only if the file did not change meanwhile.
"""

import hashlib
import logging
import shlex

from django.conf import settings

from ssh_control.exceptions import SSHConnectionError

logger = logging.getLogger(__name__)

# Exit status of the write script when the file changed after it was read.
CHANGED_STATUS = 3
EDIT_ATTEMPTS = 3

WRITE_SCRIPT = """set -eu
f={path}
d=$(dirname -- "$f")
[ -d "$d" ] || mkdir -m 700 -p -- "$d"
if [ -e "$f" ]; then
  [ "$(sha256sum < "$f" | cut -d' ' -f1)" = {expected} ] || exit {changed}
else
  [ {expected} = absent ] || exit {changed}
fi
t=$(mktemp "$d/.authorized_keys.XXXXXX")
trap 'rm -f -- "$t"' EXIT
cat > "$t"
chmod 600 "$t"
if [ -e "$f" ]; then chown "$(stat -c %u:%g -- "$f")" "$t" 2>/dev/null || true; fi
sync -- "$t" 2>/dev/null || true
mv -f -- "$t" "$f"
trap - EXIT
"""


def remote_path(path: str) -> str:
    """The path as a shell word: quoted, with a leading `~/` meaning the user's home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def key_identity(line: str) -> tuple[str, str] | None:
    """(type, base64 blob) of an `authorized_keys` line, skipping any options before it."""
    words = line.split()
    for index, word in enumerate(words[:-1]):
        if word.startswith(("ssh-", "ecdsa-", "sk-")):
            return word, words[index + 1]
    return None


def authorized_keys_read(connection, path: str) -> bytes | None:
    """The file's content, or None when it does not exist."""
    command = f'f={remote_path(path)}; if [ -e "$f" ]; then cat -- "$f"; else exit 4; fi'
    result = connection.run(command, timeout=_timeout())
    if result.exit_status == 4:
        return None
    if result.exit_status != 0:
        raise SSHConnectionError(f"cannot read {path}: {_stderr(result)}")
    return result.stdout


def authorized_keys_has(connection, path: str, public_key: str) -> bool:
    content = authorized_keys_read(connection, path) or b""
    wanted = key_identity(public_key)
    return any(
        key_identity(line) == wanted for line in content.decode(errors="replace").split("\n")
    )


def authorized_keys_add(connection, path: str, public_key: str) -> bool:
    """Append the key's line unless the key is already there; True when it was appended."""
    wanted = key_identity(public_key)

    def change(text: str) -> str | None:
        if any(key_identity(line) == wanted for line in text.split("\n")):
            return None
        if text and not text.endswith("\n"):
            text += "\n"
        return text + public_key.strip() + "\n"

    return _edit(connection, path, change)


def authorized_keys_remove(connection, path: str, public_key: str) -> bool:
    """Remove the key's own lines, keeping every other line; True when one was removed."""
    wanted = key_identity(public_key)

    def change(text: str) -> str | None:
        lines = text.split("\n")
        kept = [line for line in lines if key_identity(line) != wanted]
        return None if len(kept) == len(lines) else "\n".join(kept)

    return _edit(connection, path, change)


def _edit(connection, path: str, change) -> bool:
    for _ in range(EDIT_ATTEMPTS):
        content = authorized_keys_read(connection, path)
        updated = change((content or b"").decode(errors="surrogateescape"))
        if updated is None:
            return False
        expected = "absent" if content is None else hashlib.sha256(content).hexdigest()
        script = WRITE_SCRIPT.format(
            path=remote_path(path), expected=expected, changed=CHANGED_STATUS
        )
        body = updated.encode(errors="surrogateescape")
        result = connection.run(script, timeout=_timeout(), stdin=body)
        if result.exit_status == 0:
            logger.info("authorized_keys edited path=%s bytes=%s", path, len(body))
            return True
        if result.exit_status != CHANGED_STATUS:
            raise SSHConnectionError(f"cannot write {path}: {_stderr(result)}")
        logger.warning("authorized_keys changed during the edit; retrying path=%s", path)
    raise SSHConnectionError(f"{path} kept changing during the edit")


def _timeout() -> float:
    return settings.CLAWORC_KEY_ROTATION_COMMAND_TIMEOUT_SECONDS


def _stderr(result) -> str:
    text = result.stderr.decode(errors="replace").strip()[:200]
    return text or f"exit status {result.exit_status}"
