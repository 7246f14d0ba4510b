"""Custom tunnels through the API: validation, standard tunnels protected, 404s."""

import pytest

from ssh_control.models import Tunnel


def tunnels_url(instance) -> str:
    return f"/api/v1/instances/{instance.pk}/tunnels"


def test_custom_tunnel_is_listed_after_creation(admin_client, instance):
    created = admin_client.post(
        tunnels_url(instance), {"name": "metrics", "remote_port": 9100}, format="json"
    )
    listed = admin_client.get(tunnels_url(instance)).json()

    assert created.status_code == 201
    assert created.json()["service"] == "custom" and created.json()["type"] == "reverse"
    assert ("custom", "metrics", 9100) in {
        (row["service"], row["name"], row["remote_port"]) for row in listed
    }


@pytest.mark.parametrize(
    "body,field",
    [
        ({"name": "m", "remote_port": 0}, "remote_port"),
        ({"name": "m", "remote_port": 70000}, "remote_port"),
        ({"name": "m"}, "remote_port"),
        ({"name": "Bad Name!", "remote_port": 9100}, "name"),
        ({"service": "vnc", "name": "m", "remote_port": 9100}, "service"),
    ],
)
def test_custom_tunnel_with_bad_body_gives_400(admin_client, instance, body, field):
    response = admin_client.post(tunnels_url(instance), body, format="json")

    assert response.status_code == 400
    assert response.json()["error"].startswith(field)


def test_custom_tunnel_with_duplicate_name_gives_400(admin_client, instance):
    admin_client.post(tunnels_url(instance), {"name": "m", "remote_port": 9100}, format="json")

    response = admin_client.post(
        tunnels_url(instance), {"name": "m", "remote_port": 9200}, format="json"
    )

    assert response.status_code == 400
    assert "already exists" in response.json()["error"]


def test_standard_tunnel_cannot_be_deleted(admin_client, instance):
    vnc = Tunnel.objects.get(instance=instance, service="vnc")

    response = admin_client.delete(f"{tunnels_url(instance)}/{vnc.pk}")

    assert response.status_code == 400
    assert Tunnel.objects.filter(pk=vnc.pk).exists()


def test_unknown_tunnel_id_gives_404(admin_client, instance, make_instance):
    other = make_instance("agent-other")
    foreign = Tunnel.objects.get(instance=other, service="vnc")

    missing = admin_client.delete(f"{tunnels_url(instance)}/999999")
    cross = admin_client.delete(f"{tunnels_url(instance)}/{foreign.pk}")

    assert missing.status_code == 404
    assert cross.status_code == 404
    assert Tunnel.objects.filter(pk=foreign.pk).exists()


def test_standard_tunnels_follow_instance_ports(admin_client, instance):
    admin_client.patch(f"/api/v1/instances/{instance.pk}", {"vnc_port": 5901}, format="json")

    assert Tunnel.objects.get(instance=instance, service="vnc").remote_port == 5901
