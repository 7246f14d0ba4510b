"""The OpenAPI schema describes every runbook route."""

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


def test_schema_lists_every_runbook_route(client, db):
    response = client.get("/api/v1/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})

    paths = response.json()["paths"]
    described = {(method, path) for path, methods in paths.items() for method in methods}
    assert response.status_code == 200
    assert RUNBOOK_ROUTES <= described


def test_schema_documents_session_cookie(client, db):
    schema = client.get(
        "/api/v1/schema/", headers={"Accept": "application/vnd.oai.openapi+json"}
    ).json()

    scheme = schema["components"]["securitySchemes"]["sessionCookie"]
    assert scheme == {"type": "apiKey", "in": "cookie", "name": "session"}


def test_browsable_api_renders_for_logged_in_user(admin_client, instance):
    response = admin_client.get(
        f"/api/v1/instances/{instance.pk}/ssh-status", headers={"Accept": "text/html"}
    )

    assert response.status_code == 200
    assert b"ssh-status" in response.content.lower() or b"Ssh Status" in response.content
