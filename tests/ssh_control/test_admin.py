"""The Django admin as the operator UI: it goes through the same services as the API."""

import pytest
from django.test import Client

from audit.models import AuditEntry
from audit.services import audit_flush
from ssh_control.models import ConnectionStatus, Instance


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
