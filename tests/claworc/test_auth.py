"""Login, logout and the session cookie, including the CSRF rules for browsers and curl."""

import ipaddress

import pytest
from django.test import Client

from audit.models import AuditEntry
from audit.services import audit_flush
from tests.conftest import PASSWORD


def login(client: Client, username: str, password: str = PASSWORD, **headers):
    return client.post(
        "/api/v1/auth/login",
        {"username": username, "password": password},
        content_type="application/json",
        headers=headers,
    )


@pytest.fixture
def session_token(admin_user) -> str:
    response = login(Client(), "admin")
    assert response.status_code == 200
    return response.cookies["session"].value


def curl(method: str, path: str, token: str, body=None, **headers):
    """A request shaped like the runbook's curl commands: the cookie by hand, no Origin."""
    client = Client(enforce_csrf_checks=True)
    return getattr(client, method)(
        path,
        body,
        content_type="application/json",
        headers={"Cookie": f"session={token}", **headers},
    )


def test_login_with_valid_credentials_sets_session_cookie(admin_user):
    response = login(Client(), "admin")

    cookie = response.cookies["session"]
    assert response.status_code == 200
    assert response.json() == {"id": admin_user.pk, "username": "admin", "is_admin": True}
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"


def test_login_with_wrong_password_or_user_gives_same_401(admin_user):
    wrong_password = login(Client(), "admin", "nope")
    unknown_user = login(Client(), "nobody", "nope")

    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.json() == unknown_user.json()
    assert "session" not in wrong_password.cookies


def test_login_with_missing_fields_gives_400(db):
    response = Client().post("/api/v1/auth/login", {}, content_type="application/json")

    assert response.status_code == 400
    assert "username" in response.json()["error"]


def test_login_with_malformed_json_gives_400(db):
    response = Client().post("/api/v1/auth/login", "{not json", content_type="application/json")

    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


def test_login_is_audited_with_client_ip(admin_user):
    login(Client(REMOTE_ADDR="192.0.2.7"), "admin")
    login(Client(REMOTE_ADDR="192.0.2.8"), "admin", "wrong")
    assert audit_flush()

    entries = {entry.event_type: entry for entry in AuditEntry.objects.all()}
    assert entries["login"].username == "admin"
    assert entries["login"].source_ip == "192.0.2.7"
    assert entries["login_failed"].source_ip == "192.0.2.8"


def test_api_login_is_audited_once_per_attempt(admin_user):
    login(Client(), "admin")
    login(Client(), "admin", "wrong")
    assert audit_flush()

    events = sorted(AuditEntry.objects.values_list("event_type", flat=True))
    assert events == ["login", "login_failed"]


def admin_login(client: Client, username: str, password: str = PASSWORD):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password})


def test_admin_login_is_audited_with_user_ip_and_request_id(admin_user):
    response = admin_login(Client(REMOTE_ADDR="192.0.2.9"), "admin")

    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert audit_flush()
    [entry] = AuditEntry.objects.all()
    assert (entry.event_type, entry.username, entry.source_ip) == ("login", "admin", "192.0.2.9")
    assert entry.details == "logged in through the admin"
    assert entry.request_id is not None


@pytest.mark.parametrize(
    ("username", "password"),
    [("admin", "wrong"), ("nobody", "wrong"), ("viewer", PASSWORD)],
    ids=["wrong-password", "unknown-user", "not-staff"],
)
def test_admin_login_refused_is_audited_with_the_name_tried(admin_user, viewer, username, password):
    response = admin_login(Client(REMOTE_ADDR="192.0.2.10"), username, password)

    assert response.status_code == 200
    assert "_auth_user_id" not in response.client.session
    assert audit_flush()
    [entry] = AuditEntry.objects.all()
    assert (entry.event_type, entry.username, entry.source_ip) == (
        "login_failed",
        username,
        "192.0.2.10",
    )
    assert entry.details == "admin login refused"


def test_admin_login_form_without_password_is_not_an_attempt(admin_user):
    response = admin_login(Client(), "admin", "")

    assert response.status_code == 200
    assert audit_flush()
    assert not AuditEntry.objects.exists()


def test_me_with_session_cookie_returns_user(session_token):
    response = curl("get", "/api/v1/auth/me", session_token)

    assert response.status_code == 200
    assert response.json()["username"] == "admin"


def test_logout_ends_the_session(session_token):
    assert curl("post", "/api/v1/auth/logout", session_token).status_code == 204

    assert curl("get", "/api/v1/auth/me", session_token).status_code == 401


def test_session_of_deactivated_user_is_refused(session_token, admin_user):
    admin_user.is_active = False
    admin_user.save()

    assert curl("get", "/api/v1/ssh-audit-logs", session_token).status_code == 401


def test_curl_post_with_cookie_and_no_origin_is_accepted(session_token, make_instance):
    instance = make_instance("agent-csrf")

    response = curl(
        "put",
        f"/api/v1/instances/{instance.pk}/ssh-allowed-ips",
        session_token,
        {"allowed_ips": "10.0.0.5"},
    )

    assert response.status_code == 200
    assert response.json() == {"allowed_ips": "10.0.0.5"}


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://testserver.evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://testserver"},
    ],
    ids=["foreign-origin", "null-origin", "lookalike-origin", "cross-site", "same-site"],
)
def test_browser_post_from_another_origin_is_refused(session_token, make_instance, headers):
    instance = make_instance("agent-csrf")

    response = curl(
        "put",
        f"/api/v1/instances/{instance.pk}/ssh-allowed-ips",
        session_token,
        {"allowed_ips": "10.0.0.5"},
        **headers,
    )

    instance.refresh_from_db()
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]
    assert instance.allowed_source_ips == ""


def test_browser_post_from_same_origin_is_accepted(session_token, make_instance):
    instance = make_instance("agent-csrf")

    response = curl(
        "put",
        f"/api/v1/instances/{instance.pk}/ssh-allowed-ips",
        session_token,
        {"allowed_ips": "10.0.0.6"},
        Origin="http://testserver",
        **{"Sec-Fetch-Site": "same-origin"},
    )

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("peer", "headers", "status"),
    [
        # A TLS-terminating proxy in CLAWORC_TRUSTED_PROXIES: its https is believed.
        ("10.9.0.2", {"X-Forwarded-Proto": "https"}, 200),
        # Anyone else cannot make plain HTTP look like HTTPS, by either header.
        ("203.0.113.7", {"X-Forwarded-Proto": "https"}, 403),
        ("203.0.113.7", {"X-Claworc-Forwarded-Proto": "https"}, 403),
    ],
    ids=["trusted-proxy", "untrusted-peer", "forged-internal-header"],
)
def test_https_origin_behind_tls_proxy_is_same_origin_only_from_trusted_proxy(
    session_token, make_instance, settings, peer, headers, status
):
    settings.CLAWORC_TRUSTED_PROXIES = [ipaddress.ip_network("10.9.0.0/24")]
    instance = make_instance("agent-tls")

    response = Client(enforce_csrf_checks=True, REMOTE_ADDR=peer).put(
        f"/api/v1/instances/{instance.pk}/ssh-allowed-ips",
        {"allowed_ips": "10.0.0.7"},
        content_type="application/json",
        headers={
            "Cookie": f"session={session_token}",
            "Host": "testserver",
            "Origin": "https://testserver",
            **headers,
        },  # fmt: skip
    )

    assert response.status_code == status, response.content


def test_cross_origin_login_is_refused(admin_user):
    response = login(Client(), "admin", Origin="https://evil.example")

    assert response.status_code == 403
    assert "session" not in response.cookies


def test_cross_origin_get_is_allowed_since_it_changes_nothing(session_token):
    response = curl("get", "/api/v1/auth/me", session_token, Origin="https://evil.example")

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("host", "origin", "opened"),
    [
        (b"testserver", b"http://testserver", True),
        (b"testserver", None, True),  # not a browser: no Origin, nothing to forge
        (b"testserver", b"http://localhost", False),  # another allowed host's page
        (b"evil.example", b"http://evil.example", False),  # a host not allowed at all
    ],
)
def test_websocket_opens_only_on_allowed_host_from_its_own_origin(host, origin, opened):
    from asgiref.sync import async_to_sync
    from asgiref.testing import ApplicationCommunicator

    from claworc.authentication import SameOriginWebSocketValidator

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})

    headers = [(b"host", host)] + ([(b"origin", origin)] if origin else [])
    scope = {"type": "websocket", "path": "/", "headers": headers}

    async def connect():
        communicator = ApplicationCommunicator(SameOriginWebSocketValidator(app), scope)
        await communicator.send_input({"type": "websocket.connect"})
        answer = await communicator.receive_output(5)
        await communicator.wait(5)
        return answer

    answer = async_to_sync(connect)()

    assert answer == ({"type": "websocket.accept"} if opened else
                      {"type": "websocket.close", "code": 4403})  # fmt: skip
