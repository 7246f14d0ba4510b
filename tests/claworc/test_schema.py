"""The OpenAPI schema describes every runbook route, for logged-in callers only."""

import pytest

from tests.conftest import client_for

OPENAPI_JSON = {"Accept": "application/vnd.oai.openapi+json"}

RUNBOOK_ROUTES = {
    ("get", "/api/v1/ssh-status"),
    ("get", "/api/v1/ssh-metrics"),
    ("get", "/api/v1/instances/{id}/ssh-status"),
    ("get", "/api/v1/instances/{id}/ssh-events"),
    ("post", "/api/v1/instances/{id}/ssh-test"),
    ("post", "/api/v1/instances/{id}/ssh-reconnect"),
    ("get", "/api/v1/instances/{id}/ssh-fingerprint"),
    ("get", "/api/v1/instances/{id}/tunnels"),
    ("post", "/api/v1/instances/{id}/rotate-ssh-key"),
    ("get", "/api/v1/instances/{id}/ssh-allowed-ips"),
    ("put", "/api/v1/instances/{id}/ssh-allowed-ips"),
    ("get", "/api/v1/ssh-audit-logs"),
    ("post", "/api/v1/ssh-audit-logs/purge"),
}


def test_schema_lists_every_runbook_route(admin_client):
    response = admin_client.get("/api/v1/schema/", headers=OPENAPI_JSON)

    paths = response.json()["paths"]
    described = {(method, path) for path, methods in paths.items() for method in methods}
    assert response.status_code == 200
    assert RUNBOOK_ROUTES <= described


def test_schema_documents_session_cookie(admin_client):
    schema = admin_client.get("/api/v1/schema/", headers=OPENAPI_JSON).json()

    scheme = schema["components"]["securitySchemes"]["sessionCookie"]
    assert scheme == {"type": "apiKey", "in": "cookie", "name": "session"}


@pytest.mark.parametrize("path", ["/api/v1/schema/", "/api/v1/docs/"])
def test_schema_and_docs_for_anonymous_caller_give_401(client, db, path):
    response = client.get(path)

    assert response.status_code == 401
    assert b"openapi" not in response.content.lower()
    assert b"swagger" not in response.content.lower()


@pytest.mark.parametrize("path", ["/api/v1/schema/", "/api/v1/docs/"])
def test_schema_and_docs_for_logged_in_user_give_200(stranger, path):
    response = client_for(stranger).get(path)

    assert response.status_code == 200
    assert b"openapi" in response.content.lower() or b"swagger" in response.content.lower()


def test_browsable_api_renders_for_logged_in_user(admin_client, instance):
    response = admin_client.get(
        f"/api/v1/instances/{instance.pk}/ssh-status", headers={"Accept": "text/html"}
    )

    assert response.status_code == 200
    assert b"ssh-status" in response.content.lower() or b"Ssh Status" in response.content
