"""Per-instance ED25519 key pairs and their files in `<data dir>/ssh-keys`.

Private keys are written in OpenSSH format, encrypted with a passphrase derived from
`CLAWORC_KEY_ENCRYPTION_SECRET` and the instance name, to a file that exists only with
mode 0600 in a 0700 directory. Nothing here logs or returns private key material except
`load_private_key`, whose caller is the SSH connection code.
"""

import base64
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from ssh_control.exceptions import KeyStorageError

logger = logging.getLogger(__name__)

KEY_FILE_MODE = 0o600
KEY_DIR_MODE = 0o700


@dataclass(frozen=True)
class GeneratedKey:
    """A fresh key pair: the encrypted private key file body and the public half."""

    encrypted_private_key: bytes
    public_key: str
    fingerprint: str

    def __repr__(self):
        return f"GeneratedKey(fingerprint={self.fingerprint!r})"


def key_passphrase(name: str) -> bytes:
    secret = settings.CLAWORC_KEY_ENCRYPTION_SECRET.encode()
    digest = hmac.new(secret, b"claworc-ssh-key\0" + name.encode(), hashlib.sha256)
    return digest.hexdigest().encode()


def public_key_fingerprint(public_key: str) -> str:
    """OpenSSH's SHA256 fingerprint of an `authorized_keys` line."""
    blob = base64.b64decode(public_key.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def generate_key_pair(name: str) -> GeneratedKey:
    private_key = Ed25519PrivateKey.generate()
    encrypted = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(key_passphrase(name)),
    )
    public_blob = private_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public_key = f"{public_blob.decode()} claworc-{name}"
    return GeneratedKey(encrypted, public_key, public_key_fingerprint(public_key))


def key_directory() -> Path:
    """The key directory, created 0700 (and tightened to 0700 if it was looser)."""
    directory = Path(settings.CLAWORC_SSH_KEY_DIR)
    try:
        directory.mkdir(mode=KEY_DIR_MODE, parents=True, exist_ok=True)
        if directory.stat().st_mode & 0o777 != KEY_DIR_MODE:
            directory.chmod(KEY_DIR_MODE)
    except OSError as exc:
        raise KeyStorageError(f"key directory {directory} is not usable: {exc.strerror}") from None
    return directory


def key_path(name: str) -> Path:
    return Path(settings.CLAWORC_SSH_KEY_DIR) / f"{name}.key"


def pending_key_path(name: str) -> Path:
    """Where a rotation keeps the new key until the database has switched to it."""
    return Path(settings.CLAWORC_SSH_KEY_DIR) / f"{name}.key.next"


def write_private_key(name: str, key: GeneratedKey, *, pending: bool = False) -> Path:
    """Write the key file atomically; it never exists with a mode other than 0600.

    The body goes to a temporary file opened with O_EXCL and mode 0600 (fchmod'ed before
    any byte is written, since the umask can only narrow the mode), is fsynced, then
    hard-linked to its final name, which fails rather than overwrite an existing key.
    `pending` writes a rotation's new key to `<name>.key.next` instead.
    """
    final = key_directory() / (pending_key_path(name).name if pending else f"{name}.key")
    temporary = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, KEY_FILE_MODE)
        try:
            os.fchmod(fd, KEY_FILE_MODE)
            os.write(fd, key.encrypted_private_key)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temporary, final)
        _fsync_directory(final.parent)
    except FileExistsError:
        raise KeyStorageError(f"key file {final} already exists") from None
    except OSError as exc:
        raise KeyStorageError(f"cannot write key file {final}: {exc.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
    logger.info("key written instance=%s fingerprint=%s pending=%s", name, key.fingerprint, pending)
    return final


def delete_private_key(name: str) -> bool:
    try:
        key_path(name).unlink()
    except FileNotFoundError:
        return False
    _fsync_directory(key_path(name).parent)
    logger.info("key file deleted instance=%s", name)
    return True


def load_private_key(name: str, *, fingerprint: str = "") -> Ed25519PrivateKey:
    """The decrypted private key, for the SSH connection code only.

    With `fingerprint` (the one the database knows), the file holding that key is chosen
    between `<name>.key` and a rotation's `<name>.key.next`, so the connection follows the
    database the moment a rotation switches it, before the files are renamed.
    """
    current = _load_key_file(name, key_path(name))
    if not fingerprint or private_key_fingerprint(current) == fingerprint:
        return current
    if pending_key_path(name).exists():
        pending = _load_key_file(name, pending_key_path(name))
        if private_key_fingerprint(pending) == fingerprint:
            return pending
    return current


def load_pending_private_key(name: str) -> Ed25519PrivateKey:
    return _load_key_file(name, pending_key_path(name))


def private_key_fingerprint(private_key: Ed25519PrivateKey) -> str:
    line = private_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public_key_fingerprint(line.decode())


def promote_pending_key(name: str) -> bool:
    """Rename `<name>.key.next` over `<name>.key`: one atomic step that also deletes the
    old key's file. False when there is no pending key (already promoted)."""
    try:
        os.replace(pending_key_path(name), key_path(name))
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise KeyStorageError(f"cannot replace key file {key_path(name)}: {exc.strerror}") from None
    _fsync_directory(key_path(name).parent)
    logger.info("pending key promoted instance=%s", name)
    return True


def delete_pending_key(name: str) -> bool:
    try:
        pending_key_path(name).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise KeyStorageError(f"cannot delete {pending_key_path(name)}: {exc.strerror}") from None
    _fsync_directory(key_path(name).parent)
    logger.info("pending key file deleted instance=%s", name)
    return True


def _load_key_file(name: str, path: Path) -> Ed25519PrivateKey:
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise KeyStorageError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        return serialization.load_ssh_private_key(body, password=key_passphrase(name))
    except ValueError:
        raise KeyStorageError(
            f"key file {path} cannot be decrypted with the configured secret"
        ) from None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
