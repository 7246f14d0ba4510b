"""Settings for the test suite: PostgreSQL and Redis as in production, timers shrunk."""

import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/claworc")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("CLAWORC_DATA_DIR", tempfile.mkdtemp(prefix="claworc-test-"))
os.environ.setdefault("CLAWORC_SSH_REQUEST_TIMEOUT_SECONDS", "2")

from claworc.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
