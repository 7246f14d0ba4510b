"""Deployment checks (`manage.py check --deploy`)."""

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.security, deploy=True)
def check_proxy_domain(app_configs, **kwargs):
    if settings.CLAWORC_PROXY_DOMAIN:
        return []
    return [
        checks.Warning(
            "CLAWORC_PROXY_DOMAIN is not set, so the browser proxies serve agents' pages on "
            "the control plane's own origin, where their script runs with the viewer's "
            "session.",
            hint="Set CLAWORC_PROXY_DOMAIN to a wildcard domain that reaches the web "
            "process (README, 'The browser proxies and agent isolation').",
            id="claworc.W001",
        )
    ]
