"""WebSocket routes of the remote operations, included by `claworc.asgi`."""

from django.urls import path

from ssh_control.remote.consumers import TerminalConsumer

websocket_urlpatterns = [
    path("api/v1/instances/<int:pk>/terminal", TerminalConsumer.as_asgi()),
]
