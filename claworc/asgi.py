"""ASGI entry point: Django for HTTP, Channels for WebSocket routes.

WebSocket connections must come from an allowed host's page (Origin check) and carry the
same session cookie as the HTTP side.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claworc.settings")
django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from ssh_control.proxy.urls import websocket_urlpatterns as proxy_websockets  # noqa: E402
from ssh_control.remote.routing import websocket_urlpatterns as remote_websockets  # noqa: E402

websocket_urlpatterns = [*proxy_websockets, *remote_websockets]

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
