"""Entries written by changes made in the Django admin, through the same services as the API."""

from audit.choices import AuditEventType
from audit.models import AuditEntry
from audit.services import audit_flush
from ssh_control.choices import GrantLevel
from ssh_control.models import InstanceGrant


def change_form(instance, grants: list[dict]) -> dict:
    """The instance's change page as submitted, with `grants` as the inline's rows."""
    data = {
        "ssh_host": instance.ssh_host,
        "ssh_port": instance.ssh_port,
        "ssh_user": instance.ssh_user,
        "vnc_port": instance.vnc_port,
        "gateway_port": instance.gateway_port,
        "allowed_source_ips": instance.allowed_source_ips,
        "key_rotation_policy_days": "",
        "grants-TOTAL_FORMS": len(grants),
        "grants-INITIAL_FORMS": sum(1 for grant in grants if "id" in grant),
    }
    for index, grant in enumerate(grants):
        row = {"instance": instance.pk, **grant}
        data.update({f"grants-{index}-{field}": value for field, value in row.items()})
    return data


def granted(instance) -> set[tuple[str, str]]:
    return {(grant.user.username, grant.level) for grant in instance.grants.all()}


def test_admin_grant_changes_are_audited_as_instance_update(
    admin_browser, instance, viewer, operator, stranger
):
    rows = {grant.user_id: grant.pk for grant in InstanceGrant.objects.filter(instance=instance)}
    removed = {"id": rows[viewer.pk], "user": viewer.pk, "level": GrantLevel.VIEW, "DELETE": "on"}
    lowered = {"id": rows[operator.pk], "user": operator.pk, "level": GrantLevel.VIEW}
    added = {"user": stranger.pk, "level": GrantLevel.OPERATE}

    response = admin_browser.post(
        f"/admin/ssh_control/instance/{instance.pk}/change/",
        change_form(instance, [removed, lowered, added]),
    )

    assert response.status_code == 302, response.content
    assert granted(instance) == {("operator", "view"), ("stranger", "operate")}
    assert audit_flush()
    [entry] = AuditEntry.objects.filter(event_type=AuditEventType.INSTANCE_UPDATED)
    assert (entry.instance_id, entry.username, entry.source_ip) == (
        instance.pk,
        "root-admin",
        "127.0.0.1",
    )
    assert entry.data["grants_replaced"] is True
    assert entry.data["changes"]["grants"] == {
        "from": ["operator:operate", "viewer:view"],
        "to": ["operator:view", "stranger:operate"],
    }
    assert "grants: ['operator:operate', 'viewer:view'] -> " in entry.details


def test_admin_save_without_grant_changes_writes_no_update(admin_browser, instance):
    rows = [{"id": g.pk, "user": g.user_id, "level": g.level} for g in instance.grants.all()]

    response = admin_browser.post(
        f"/admin/ssh_control/instance/{instance.pk}/change/", change_form(instance, rows)
    )

    assert response.status_code == 302, response.content
    assert granted(instance) == {("viewer", "view"), ("operator", "operate")}
    assert audit_flush()
    assert not AuditEntry.objects.filter(event_type=AuditEventType.INSTANCE_UPDATED).exists()
