"""Fixtures for the audit tests: isolation from the writer's own commits, a superuser, and
a second alias to the test database that the outage tests route through a cuttable proxy.
"""

import copy

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client

from audit.testing import audit_writes_isolated  # noqa: F401  (autouse fixture)
from tests.conftest import PASSWORD

OUTAGE_ALIAS = "audit_outage"


def _register_outage_alias() -> None:
    """A mirror of `default` (same test database, no wrapping transaction) for the writer.

    It has to exist before the test databases are set up, so Django's test case lets the
    writer's thread connect through it; the `proxy` fixture points it at the forwarder.
    """
    settings_dict = copy.deepcopy(connections.settings["default"])
    settings_dict["TEST"] = {**settings_dict.get("TEST", {}), "MIRROR": "default"}
    connections.settings[OUTAGE_ALIAS] = settings_dict


_register_outage_alias()


@pytest.fixture(scope="session")
def outage_alias(django_db_setup):
    """The alias; at the end, its connection from the test case is closed so the test
    database can be dropped."""
    yield OUTAGE_ALIAS
    connections[OUTAGE_ALIAS].close()


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root-admin", password=PASSWORD)


@pytest.fixture
def admin_browser(superuser):
    client = Client()
    client.force_login(superuser)
    return client
