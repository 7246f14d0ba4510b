"""Who may use an instance's browser proxy, and which tunnel it goes to."""

from ssh_control.access import has_level
from ssh_control.choices import GrantLevel
from ssh_control.models import Instance, Tunnel
from ssh_control.tunnels.services import tunnel_for_proxy


class ProxyNotAllowed(Exception):
    """The user may not see the instance (answered as 404, like the API)."""


def proxy_target(user, instance_id: int, service: str) -> tuple[Instance, Tunnel]:
    """The instance and its active tunnel for `service`; raises TunnelNotFound if down."""
    instance = Instance.objects.filter(pk=instance_id).first()
    if instance is None or not has_level(user, instance, GrantLevel.VIEW):
        raise ProxyNotAllowed()
    return instance, tunnel_for_proxy(instance, service)
