"""Settings come from the environment with the runbook's defaults; bad values stop start-up."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from claworc import env

ROOT = Path(__file__).resolve().parents[2]
# What claworc/settings.py calls to read a variable: the readers in `claworc.env`, its
# secret helper, and plain `os.environ`.
ENV_READERS = {"_persistent_secret", "os.environ.get", "os.getenv", "os.environ.__getitem__"}
RUNBOOK_DEFAULTS = {
    "CLAWORC_SSH_KEEPALIVE_INTERVAL_SECONDS": 30,
    "CLAWORC_SSH_HEALTH_CHECK_TIMEOUT_SECONDS": 5,
    "CLAWORC_SSH_RECONNECT_MAX_RETRIES": 10,
    "CLAWORC_SSH_RECONNECT_BASE_DELAY_SECONDS": 1,
    "CLAWORC_SSH_RECONNECT_MAX_DELAY_SECONDS": 16,
    "CLAWORC_SSH_RATE_LIMIT_ATTEMPTS": 10,
    "CLAWORC_SSH_RATE_LIMIT_WINDOW_SECONDS": 60,
    "CLAWORC_SSH_FAILURE_THRESHOLD": 5,
    "CLAWORC_SSH_BLOCK_SECONDS": 300,
    "CLAWORC_TUNNEL_GLOBAL_CHECK_INTERVAL_SECONDS": 60,
    "CLAWORC_TUNNEL_MONITOR_INTERVAL_SECONDS": 10,
    "CLAWORC_TUNNEL_PROBE_TIMEOUT_SECONDS": 5,
    "CLAWORC_TUNNEL_MAX_BACKOFF_SECONDS": 60,
    "CLAWORC_KEY_ROTATION_POLICY_DAYS": 0,
    "CLAWORC_AUDIT_RETENTION_DAYS": 90,
    "CLAWORC_TUNNEL_BIND_HOST": "127.0.0.1",
}

PRINT_SETTINGS = """
import json, django
django.setup()
from django.conf import settings
names = %r
print(json.dumps({
    "values": {name: getattr(settings, name) for name in names},
    "engine": settings.DATABASES["default"]["ENGINE"],
    "broker": settings.CELERY_BROKER_URL,
    "data_dir": str(settings.DATA_DIR),
}))
"""


def run_settings(tmp_path, **overrides) -> subprocess.CompletedProcess:
    """Load the production settings module in a fresh interpreter with a clean env."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CLAWORC_") and key not in ("DATABASE_URL", "REDIS_URL")
    }
    environment.update(
        DJANGO_SETTINGS_MODULE="claworc.settings", CLAWORC_DATA_DIR=str(tmp_path), **overrides
    )
    code = PRINT_SETTINGS % (list(RUNBOOK_DEFAULTS),)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True
    )


def test_defaults_match_runbook_on_embedded_backends(tmp_path):
    result = run_settings(tmp_path)

    loaded = json.loads(result.stdout)
    assert loaded["values"] == RUNBOOK_DEFAULTS
    assert loaded["engine"] == "django.db.backends.sqlite3"
    assert loaded["broker"] == "filesystem://"
    assert loaded["data_dir"] == str(tmp_path)


def test_float_seconds_are_accepted(tmp_path):
    result = run_settings(tmp_path, CLAWORC_SSH_KEEPALIVE_INTERVAL_SECONDS="0.25")

    assert json.loads(result.stdout)["values"]["CLAWORC_SSH_KEEPALIVE_INTERVAL_SECONDS"] == 0.25


@pytest.mark.parametrize(
    "name,value",
    [
        ("CLAWORC_SSH_KEEPALIVE_INTERVAL_SECONDS", "soon"),
        ("CLAWORC_SSH_RECONNECT_MAX_RETRIES", "ten"),
        ("CLAWORC_TRUSTED_PROXIES", "10.0.0.1,not-a-network"),
        ("CLAWORC_TUNNEL_BIND_HOST", "localhost"),
        ("CLAWORC_PROXY_DOMAIN", "https://agents.example.com"),
        ("CLAWORC_PROXY_DOMAIN", "agents.example.com:8443"),
        ("DATABASE_URL", "nosuchscheme://x"),
    ],
)
def test_bad_value_stops_startup_naming_the_variable(tmp_path, name, value):
    result = run_settings(tmp_path, **{name: value})

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr


@pytest.mark.parametrize(
    "reader,value",
    [
        (lambda: env.env_seconds("X_SECONDS", 1), "-1"),
        (lambda: env.env_seconds("X_SECONDS", 1), "0"),
        (lambda: env.env_seconds("X_SECONDS", 1), "nan"),
        (lambda: env.env_seconds("X_SECONDS", 1), "inf"),
        (lambda: env.env_int("X_SECONDS", 1, minimum=1), "0"),
        (lambda: env.env_int("X_SECONDS", 1), "1.5"),
        (lambda: env.env_bool("X_SECONDS", False), "maybe"),
        (lambda: env.env_networks("X_SECONDS"), "10.0.0.0/40"),
        (lambda: env.env_ip("X_SECONDS", "127.0.0.1"), "300.0.0.1"),
    ],
)
def test_env_reader_refuses_bad_value_naming_variable(monkeypatch, reader, value):
    monkeypatch.setenv("X_SECONDS", value)

    with pytest.raises(ImproperlyConfigured, match="X_SECONDS"):
        reader()


def test_env_seconds_allows_zero_where_zero_means_off(monkeypatch):
    monkeypatch.setenv("X_SECONDS", "0")

    assert env.env_seconds("X_SECONDS", 300, allow_zero=True) == 0


def test_trusted_proxies_parse_ips_and_cidrs(monkeypatch):
    monkeypatch.setenv("X_PROXIES", "10.0.0.1, 192.168.0.0/16,::1")

    assert [str(network) for network in env.env_networks("X_PROXIES")] == [
        "10.0.0.1/32",
        "192.168.0.0/16",
        "::1/128",
    ]


def environment_names_read(source: str) -> set[str]:
    """Every variable name the settings module passes, as a literal, to an env reader."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript):
            reader, argument = f"{ast.unparse(node.value)}.__getitem__", node.slice
        elif isinstance(node, ast.Call) and node.args:
            reader, argument = ast.unparse(node.func), node.args[0]
        else:
            continue
        is_reader = reader in ENV_READERS or re.fullmatch(r"env_[a-z]+", reader)
        if is_reader and isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            names.add(argument.value)
    return names


def test_environment_names_read_finds_each_kind_of_reader():
    source = (
        'A = env_int("X_COUNT", 1)\nB = os.environ.get("X_GET", "")\n'
        'C = os.environ["X_ITEM"]\nD = _persistent_secret("X_SECRET", "f")\nE = f("X_NOT")\n'
        'F = env_str("X_HOSTS", "a,b").split(",")\n'
    )

    assert environment_names_read(source) == {"X_COUNT", "X_GET", "X_ITEM", "X_SECRET", "X_HOSTS"}


def test_every_environment_setting_has_a_readme_configuration_row():
    names = environment_names_read((ROOT / "claworc" / "settings.py").read_text())
    readme = (ROOT / "README.md").read_text()
    configuration = readme[readme.index("## Configuration") :]

    undocumented = sorted(name for name in names if f"| `{name}` |" not in configuration)
    assert set(RUNBOOK_DEFAULTS) <= names
    assert undocumented == [], "add a row to README.md's configuration table for each"
