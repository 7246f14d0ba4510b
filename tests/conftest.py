"""Fixtures shared by the whole suite: users at each access level and API clients."""

import threading

import pytest
import requests
import uvicorn
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework.test import APIClient

from audit.testing import audit_writes_isolated  # noqa: F401  (autouse: audit rows per test)
from ssh_control import services
from ssh_control.choices import GrantLevel

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session", autouse=True)
def close_stray_database_sessions(django_db_setup, django_db_blocker):
    """At the end, end sessions that threads (writers, tunnel checks, servers) left open,
    so the test database can be dropped."""
    yield
    if not connection.settings_dict["NAME"].startswith("test_"):
        return  # no selected test needed the database, so none was set up
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def isolated_data_dir(settings, tmp_path):
    """Each test gets its own data dir, so key files never leak between tests."""
    settings.DATA_DIR = tmp_path / "data"
    settings.CLAWORC_SSH_KEY_DIR = settings.DATA_DIR / "ssh-keys"
    settings.DATA_DIR.mkdir()
    return settings.DATA_DIR


@pytest.fixture
def make_user(db):
    def make(username: str, *, is_staff: bool = False):
        return get_user_model().objects.create_user(
            username=username, password=PASSWORD, is_staff=is_staff
        )

    return make


@pytest.fixture
def admin_user(make_user):
    return make_user("admin", is_staff=True)


@pytest.fixture
def viewer(make_user):
    return make_user("viewer")


@pytest.fixture
def operator(make_user):
    return make_user("operator")


@pytest.fixture
def stranger(make_user):
    return make_user("stranger")


@pytest.fixture
def make_instance(db):
    """Creates instances through the service, so each gets its real key file."""

    def make(name: str = "agent-1", *, actor="pytest", grants=None, **fields):
        fields.setdefault("ssh_host", "127.0.0.1")
        return services.instance_create(name, actor=actor, grants=grants or [], **fields)

    return make


@pytest.fixture
def instance(make_instance, viewer, operator):
    """An instance that `viewer` may view and `operator` may operate."""
    return make_instance(
        "agent-1",
        grants=[
            {"user": viewer, "level": GrantLevel.VIEW},
            {"user": operator, "level": GrantLevel.OPERATE},
        ],
    )


def client_for(user) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user=user)
    return client


@pytest.fixture
def admin_client(admin_user):
    return client_for(admin_user)


@pytest.fixture
def live_web(transactional_db):
    """claworc.asgi served by uvicorn in a thread of the test process, as in production."""
    from claworc.asgi import application
    from tests.agents import free_port, wait_until

    port = free_port()
    config = uvicorn.Config(
        application, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-web", daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10, message="uvicorn started")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def login(base: str, username: str) -> requests.Session:
    """A session logged in through the API on the live server, as `curl` or a browser."""
    session = requests.Session()
    response = session.post(
        f"{base}/api/v1/auth/login", json={"username": username, "password": PASSWORD}, timeout=5
    )
    assert response.status_code == 200
    return session
