"""Every API route against every kind of caller: anonymous, no grant, view, operate, admin."""

from urllib.parse import urlsplit

import pytest
from django.urls import URLResolver, get_resolver, resolve

from ssh_control.tunnels.services import tunnel_create_custom
from tests.conftest import client_for

ACCEPT_BODY = {"fingerprint": "SHA256:" + "A" * 43}
RENAME_BODY = {"from": "/tmp/a", "to": "/tmp/b"}

# Expected status per caller for each route. `ok` is what a caller allowed in gets: the
# route's success status, 503 from the routes handed to the SSH worker (none runs here),
# or 400 for the empty or refused bodies checked after the access rules; each proves the
# request got past the access rules. Every route and method under /api/v1/ must appear here.
ROUTES = [
    # (method, path, body, level, ok)
    ("post", "/api/v1/auth/login", {}, "public", 400),
    ("post", "/api/v1/auth/logout", None, "user", 204),
    ("get", "/api/v1/auth/me", None, "user", 200),
    ("get", "/api/v1/schema/", None, "user", 200),
    ("get", "/api/v1/docs/", None, "user", 200),
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
    ("post", "/api/v1/instances/{id}/exec", {"command": "true"}, "operate", 503),
    ("get", "/api/v1/instances/{id}/files?path=/tmp", None, "operate", 503),
    ("delete", "/api/v1/instances/{id}/files?path=/tmp/x", None, "operate", 503),
    ("get", "/api/v1/instances/{id}/files/content?path=/tmp/x", None, "operate", 503),
    ("put", "/api/v1/instances/{id}/files/content?path=/tmp/x", None, "operate", 400),
    ("post", "/api/v1/instances/{id}/files/mkdir", {"path": "/tmp/d"}, "operate", 503),
    ("post", "/api/v1/instances/{id}/files/rename", RENAME_BODY, "operate", 503),
    ("post", "/api/v1/instances/{id}/rotate-ssh-key", None, "admin", 503),
    ("post", "/api/v1/instances/{id}/install-ssh-key", {}, "admin", 400),
    ("post", "/api/v1/instances/{id}/ssh-host-key/accept", ACCEPT_BODY, "admin", 400),
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
    if level == "public":
        return ok
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


def error_text(response) -> str:
    """The error a refusal carries: the JSON `error`, or the body of an HTML page."""
    if response["Content-Type"].startswith("application/json"):
        return response.json()["error"]
    return response.content.decode()


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
        assert error_text(response)


def api_routes() -> list[tuple[str, object, str]]:
    """(route, view, method) for every method of every URL pattern under /api/v1/."""
    found = []

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif route.startswith("api/v1/"):
                found.extend((route, pattern.callback, m) for m in view_methods(pattern.callback))

    walk(get_resolver().url_patterns, "")
    return found


def view_methods(view) -> set[str]:
    # A viewset route maps methods to actions; a plain view answers what it defines.
    if getattr(view, "actions", None) is not None:
        methods = set(view.actions)
    else:
        view_class = view.view_class
        methods = {name for name in view_class.http_method_names if hasattr(view_class, name)}
    return methods - {"head", "options"}


def test_route_access_matrix_covers_every_api_route():
    routes = api_routes()
    served = {(view, method) for _, view, method in routes}
    covered = {
        (resolve(urlsplit(path.format(id=1, tunnel_id=1)).path).func, method)
        for method, path, *_ in ROUTES
    }

    missing = sorted(
        f"{method.upper()} /{route}"
        for route, view, method in routes
        if (view, method) not in covered
    )
    assert missing == [], "routes missing from ROUTES in this module"
    assert covered <= served, "ROUTES names a method its route does not serve"
    assert len(covered) == len(ROUTES)


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
