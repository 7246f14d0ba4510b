"""Every API route against every kind of caller: anonymous, no grant, view, operate, admin."""

import pytest

from ssh_control.tunnels.services import tunnel_create_custom
from tests.conftest import client_for

# Expected status per caller for each route. `ok` is the route's success status; the
# SSH routes answer 503 while no SSH worker owns the instance, which proves the request
# got past the access rules to the dispatch.
ROUTES = [
    # (method, path, body, level, ok)
    ("get", "/api/v1/ssh-status", None, "user", 200),
    ("get", "/api/v1/ssh-metrics", None, "user", 200),
    ("get", "/api/v1/instances", None, "user", 200),
    ("get", "/api/v1/instances/{id}", None, "view", 200),
    ("get", "/api/v1/instances/{id}/ssh-status", None, "view", 200),
    ("get", "/api/v1/instances/{id}/ssh-events", None, "view", 200),
    ("get", "/api/v1/instances/{id}/ssh-fingerprint", None, "view", 200),
    ("get", "/api/v1/instances/{id}/tunnels", None, "view", 200),
    ("post", "/api/v1/instances/{id}/ssh-test", None, "operate", 503),
    ("post", "/api/v1/instances/{id}/ssh-reconnect", None, "operate", 503),
    ("post", "/api/v1/instances/{id}/rotate-ssh-key", None, "admin", 503),
    ("get", "/api/v1/instances/{id}/ssh-allowed-ips", None, "admin", 200),
    ("put", "/api/v1/instances/{id}/ssh-allowed-ips", {"allowed_ips": "10.0.0.5"}, "admin", 200),
    ("get", "/api/v1/ssh-audit-logs", None, "admin", 200),
    ("post", "/api/v1/ssh-audit-logs/purge", None, "admin", 200),
    ("post", "/api/v1/instances", {"name": "agent-2", "ssh_host": "10.1.1.1"}, "admin", 201),
    ("patch", "/api/v1/instances/{id}", {"ssh_port": 2222}, "admin", 200),
    ("put", "/api/v1/instances/{id}", {"name": "agent-1", "ssh_host": "10.1.1.2"}, "admin", 200),
    ("post", "/api/v1/instances/{id}/tunnels", {"name": "m", "remote_port": 9100}, "admin", 201),
    ("delete", "/api/v1/instances/{id}/tunnels/{tunnel_id}", None, "admin", 204),
    ("delete", "/api/v1/instances/{id}", None, "admin", 204),
]

RANK = {"user": 0, "view": 1, "operate": 2, "admin": 3}
CALLERS = {"stranger": 0, "viewer": 1, "operator": 2, "admin_user": 3}


def expected_status(caller: str, level: str, ok: int) -> int:
    if caller == "anonymous":
        return 401
    if CALLERS[caller] >= RANK[level]:
        return ok
    # Admin-only routes refuse users outright; instance routes hide the instance from
    # users without a grant and refuse an action above the grant's level.
    if level == "admin":
        return 403
    if caller == "stranger":
        return 404
    return 403


@pytest.mark.parametrize("caller", ["anonymous", *CALLERS])
@pytest.mark.parametrize(
    "method,path,body,level,ok", ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES]
)
def test_route_access_by_caller_matches_rules(
    request, instance, caller, method, path, body, level, ok
):
    user = None if caller == "anonymous" else request.getfixturevalue(caller)
    client = client_for(user)

    custom = tunnel_create_custom(instance, name="custom", remote_port=9000, actor="pytest")
    url = path.format(id=instance.pk, tunnel_id=custom.pk)

    response = getattr(client, method)(url, body, format="json")

    assert response.status_code == expected_status(caller, level, ok), response.content
    if response.status_code >= 400:
        assert response.json()["error"]


def test_instance_list_for_user_shows_only_granted_instances(
    make_instance, instance, viewer, stranger
):
    make_instance("agent-hidden")

    viewer_names = [
        row["name"] for row in client_for(viewer).get("/api/v1/instances").json()["results"]
    ]
    stranger_rows = client_for(stranger).get("/api/v1/instances").json()["results"]

    assert viewer_names == ["agent-1"]
    assert stranger_rows == []


def test_fleet_status_for_user_counts_only_granted_instances(make_instance, instance, viewer):
    make_instance("agent-hidden")

    body = client_for(viewer).get("/api/v1/ssh-status").json()
    metrics = client_for(viewer).get("/api/v1/ssh-metrics").json()

    assert [entry["instance_name"] for entry in body["instances"]] == ["agent-1"]
    assert body["total"] == 1
    assert metrics["total_instances"] == 1


def test_instance_detail_for_user_hides_grants(instance, viewer, admin_user):
    as_viewer = client_for(viewer).get(f"/api/v1/instances/{instance.pk}").json()
    as_admin = client_for(admin_user).get(f"/api/v1/instances/{instance.pk}").json()

    assert "grants" not in as_viewer
    assert sorted(grant["level"] for grant in as_admin["grants"]) == ["operate", "view"]
