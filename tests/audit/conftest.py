"""Fixtures for the audit tests: isolation from the writer's own commits, and a superuser."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from audit.testing import audit_writes_isolated  # noqa: F401  (autouse fixture)
from tests.conftest import PASSWORD


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root-admin", password=PASSWORD)


@pytest.fixture
def admin_browser(superuser):
    client = Client()
    client.force_login(superuser)
    return client
