"""The Django admin as the operator UI: it goes through the same services as the API."""

import pytest
from django.test import Client

from audit.models import AuditEntry
from audit.services import audit_flush
from ssh_control.models import ConnectionStatus, Instance, Tunnel
from ssh_control.tunnels.services import tunnel_create_custom


@pytest.fixture
def admin_browser(make_user):
    user = make_user("root-admin", is_staff=True)
    user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    return client


def test_instance_changelist_shows_state_at_a_glance(admin_browser, instance):
    ConnectionStatus.objects.filter(instance=instance).update(state="failed")

    response = admin_browser.get("/admin/ssh_control/instance/")

    assert response.status_code == 200
    assert b"agent-1" in response.content
    assert b"failed" in response.content


def test_instance_added_in_admin_gets_key_and_audit(admin_browser, settings):
    response = admin_browser.post(
        "/admin/ssh_control/instance/add/",
        {
            "name": "agent-admin",
            "ssh_host": "10.2.0.1",
            "ssh_port": 22,
            "ssh_user": "root",
            "vnc_port": 3000,
            "gateway_port": 8080,
            "allowed_source_ips": "10.0.0.1, 10.1.0.0/16",
            "key_rotation_policy_days": "",
            "grants-TOTAL_FORMS": 0,
            "grants-INITIAL_FORMS": 0,
        },
    )

    instance = Instance.objects.get(name="agent-admin")
    assert audit_flush()
    assert response.status_code == 302
    assert (settings.CLAWORC_SSH_KEY_DIR / "agent-admin.key").exists()
    assert instance.ssh_key_fingerprint.startswith("SHA256:")
    assert instance.allowed_source_ips == "10.0.0.1, 10.1.0.0/16"
    assert ConnectionStatus.objects.filter(instance=instance).exists()
    assert set(AuditEntry.objects.values_list("event_type", flat=True)) >= {
        "instance_created",
        "allowed_ips_changed",
    }


def test_admin_refuses_bad_allowed_ips(admin_browser, instance):
    response = admin_browser.post(
        f"/admin/ssh_control/instance/{instance.pk}/change/",
        {
            "ssh_host": "127.0.0.1",
            "ssh_port": 22,
            "ssh_user": "root",
            "vnc_port": 3000,
            "gateway_port": 8080,
            "allowed_source_ips": "10.0.0.1, banana",
            "grants-TOTAL_FORMS": 0,
            "grants-INITIAL_FORMS": 0,
        },
    )

    instance.refresh_from_db()
    assert response.status_code == 200
    assert b"banana" in response.content
    assert instance.allowed_source_ips == ""


def test_admin_action_without_worker_reports_manager_not_initialized(admin_browser, instance):
    response = admin_browser.post(
        "/admin/ssh_control/instance/",
        {"action": "test_connection", "_selected_action": [instance.pk]},
        follow=True,
    )

    assert b"SSH manager not initialized" in response.content


def test_audit_entries_are_read_only_in_admin(admin_browser, instance):
    assert audit_flush()
    entry = AuditEntry.objects.first()

    change = admin_browser.post(f"/admin/audit/auditentry/{entry.pk}/change/", {"details": "x"})
    delete = admin_browser.post(f"/admin/audit/auditentry/{entry.pk}/delete/", {"post": "yes"})

    entry.refresh_from_db()
    assert change.status_code == 403
    assert delete.status_code == 403
    assert entry.details != "x"


def test_instance_page_links_to_browser_proxies(admin_browser, instance):
    response = admin_browser.get(f"/admin/ssh_control/instance/{instance.pk}/change/")

    assert f'href="/instances/{instance.pk}/gateway/"'.encode() in response.content
    assert f'href="/instances/{instance.pk}/vnc/"'.encode() in response.content


TUNNEL_ADMIN = "/admin/ssh_control/tunnel/"


def test_custom_tunnel_added_in_admin_is_audited(admin_browser, instance):
    response = admin_browser.post(
        f"{TUNNEL_ADMIN}add/", {"instance": instance.pk, "name": "metrics", "remote_port": 9100}
    )

    tunnel = Tunnel.objects.get(instance=instance, name="metrics")
    assert audit_flush()
    assert response.status_code == 302
    assert (tunnel.service, tunnel.remote_port, tunnel.status) == ("custom", 9100, "unhealthy")
    entry = AuditEntry.objects.get(event_type="tunnel_created")
    assert (entry.instance_id, entry.username) == (instance.pk, "root-admin")


def test_custom_tunnel_added_in_admin_with_taken_name_shows_error(admin_browser, instance):
    tunnel_create_custom(instance, name="metrics", remote_port=9100, actor="pytest")

    response = admin_browser.post(
        f"{TUNNEL_ADMIN}add/", {"instance": instance.pk, "name": "metrics", "remote_port": 9200}
    )

    assert response.status_code == 200
    assert b"already exists" in response.content
    assert Tunnel.objects.get(instance=instance, name="metrics").remote_port == 9100


def test_custom_tunnel_name_taken_between_check_and_save_shows_error(
    admin_browser, instance, monkeypatch
):
    # Another admin adds the same name after this form's check passed.
    create = tunnel_create_custom

    def racing_create(target, **fields):
        create(target, name=fields["name"], remote_port=9100, actor="other-admin")
        return create(target, **fields)

    monkeypatch.setattr("ssh_control.admin.tunnel_services.tunnel_create_custom", racing_create)
    response = admin_browser.post(
        f"{TUNNEL_ADMIN}add/",
        {"instance": instance.pk, "name": "metrics", "remote_port": 9200},
        follow=True,
    )

    assert response.status_code == 200
    assert b"custom tunnel named &#x27;metrics&#x27; already exists" in response.content
    # Nothing of this request's add is left (the view's transaction was rolled back).
    assert not Tunnel.objects.filter(instance=instance, remote_port=9200).exists()
    assert audit_flush()
    assert not AuditEntry.objects.filter(event_type="tunnel_created", username="root-admin")


@pytest.mark.parametrize("bulk", [False, True], ids=["delete-view", "bulk-action"])
def test_custom_tunnel_deleted_in_admin_is_audited(admin_browser, instance, bulk):
    tunnel = tunnel_create_custom(instance, name="metrics", remote_port=9100, actor="pytest")

    if bulk:
        response = admin_browser.post(
            TUNNEL_ADMIN,
            {"action": "delete_selected", "_selected_action": [tunnel.pk], "post": "yes"},
        )
    else:
        response = admin_browser.post(f"{TUNNEL_ADMIN}{tunnel.pk}/delete/", {"post": "yes"})

    assert audit_flush()
    assert response.status_code == 302
    assert not Tunnel.objects.filter(pk=tunnel.pk).exists()
    entry = AuditEntry.objects.get(event_type="tunnel_deleted")
    assert (entry.instance_id, entry.username) == (instance.pk, "root-admin")


def test_standard_tunnel_in_admin_cannot_be_deleted_or_changed(admin_browser, instance):
    vnc = Tunnel.objects.get(instance=instance, service="vnc")

    deleted = admin_browser.post(f"{TUNNEL_ADMIN}{vnc.pk}/delete/", {"post": "yes"})
    bulk = admin_browser.post(
        TUNNEL_ADMIN, {"action": "delete_selected", "_selected_action": [vnc.pk], "post": "yes"}
    )
    changed = admin_browser.post(
        f"{TUNNEL_ADMIN}{vnc.pk}/change/",
        {"instance": instance.pk, "name": "x", "remote_port": 1},
    )

    assert deleted.status_code == 403
    assert bulk.status_code == 403
    assert changed.status_code == 403
    vnc.refresh_from_db()
    assert (vnc.service, vnc.name, vnc.remote_port) == ("vnc", "", 3000)
