"""ASGI entry point: Django for HTTP, Channels for WebSocket routes.

WebSocket connections open only on an allowed host and from that same origin's pages
(clients that are not browsers send no Origin), and carry the same session cookie as the
HTTP side.
On an instance's proxy host (CLAWORC_PROXY_DOMAIN) only that instance's proxy sockets open.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claworc.settings")
django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from claworc.authentication import SameOriginWebSocketValidator  # noqa: E402
from ssh_control.proxy.origins import InstanceOriginWebSocketGuard  # noqa: E402
from ssh_control.proxy.urls import websocket_urlpatterns as proxy_websockets  # noqa: E402
from ssh_control.remote.routing import websocket_urlpatterns as remote_websockets  # noqa: E402

websocket_urlpatterns = [*proxy_websockets, *remote_websockets]

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": SameOriginWebSocketValidator(
            InstanceOriginWebSocketGuard(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
    }
)
