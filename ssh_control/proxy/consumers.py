"""WebSocket side of the browser proxy (noVNC speaks WebSocket): frames relayed both ways
between the browser and the agent's service through the instance's tunnel."""

import asyncio
import logging

import websockets
from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from ssh_control.exceptions import TunnelNotFound
from ssh_control.proxy import origins
from ssh_control.proxy.access import ProxyNotAllowed, proxy_target
from ssh_control.proxy.views import strip_own_cookies
from ssh_control.tunnels.services import tunnel_refusal_since

logger = logging.getLogger(__name__)

# Close codes in the application range: 4403 no access, 4503 tunnel down.
CLOSE_FORBIDDEN = 4403
CLOSE_UNAVAILABLE = 4503
MAX_FRAME_BYTES = 16 * 1024 * 1024


class ServiceProxyConsumer(AsyncWebsocketConsumer):
    upstream = None
    relay_task = None

    async def connect(self):
        user = self.scope.get("user")
        kwargs = self.scope["url_route"]["kwargs"]
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        host = dict(self.scope.get("headers", [])).get(b"host", b"").decode("latin-1")
        if origins.proxy_domain() and origins.host_instance_id(host) != int(kwargs["instance_id"]):
            # Each instance's proxy has an origin of its own; the control plane's does not
            # carry it. (The page's origin is checked in claworc.asgi.)
            logger.info("websocket proxy refused reason=not the instance's origin host=%s", host)
            await self.close(code=CLOSE_FORBIDDEN)
            return
        try:
            _, tunnel = await sync_to_async(proxy_target)(
                user, int(kwargs["instance_id"]), kwargs["service"]
            )
        except ProxyNotAllowed:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        except TunnelNotFound as exc:
            logger.info("websocket proxy refused reason=%s", exc.message)
            await self.close(code=CLOSE_UNAVAILABLE)
            return

        try:
            self.upstream = await websockets.connect(
                self._upstream_url(tunnel, kwargs["path"]),
                subprotocols=self.scope.get("subprotocols") or None,
                additional_headers=self._upstream_headers(),
                max_size=MAX_FRAME_BYTES,
                open_timeout=10,
            )
        except (TimeoutError, OSError, websockets.WebSocketException) as exc:
            refusal = await sync_to_async(tunnel_refusal_since)(tunnel.pk, tunnel.refused_count)
            logger.warning("websocket proxy upstream failed error=%r refusal=%s", exc, refusal)
            await self.close(code=CLOSE_UNAVAILABLE)
            return

        await self.accept(subprotocol=self.upstream.subprotocol)
        self.relay_task = asyncio.create_task(self._relay_to_browser())

    def _upstream_url(self, tunnel, path: str) -> str:
        host = f"[{tunnel.bind_host}]" if ":" in tunnel.bind_host else tunnel.bind_host
        query = self.scope.get("query_string", b"").decode("latin-1")
        return f"ws://{host}:{tunnel.local_port}/{path}" + (f"?{query}" if query else "")

    def _upstream_headers(self) -> list[tuple[str, str]]:
        headers = dict(self.scope.get("headers", []))
        cookies = strip_own_cookies(headers.get(b"cookie", b"").decode("latin-1"))
        return [("Cookie", cookies)] if cookies else []

    async def _relay_to_browser(self):
        try:
            async for message in self.upstream:
                if isinstance(message, bytes):
                    await self.send(bytes_data=message)
                else:
                    await self.send(text_data=message)
        except websockets.ConnectionClosed:
            pass
        except OSError as exc:
            # The browser went away mid-stream (the server reports it as an OSError);
            # `disconnect` closes the agent's side.
            logger.debug("websocket proxy browser gone error=%r", exc)
            return
        await self.close()

    async def receive(self, text_data=None, bytes_data=None):
        if self.upstream is None:
            return
        try:
            await self.upstream.send(bytes_data if bytes_data is not None else text_data)
        except websockets.ConnectionClosed:
            await self.close()

    async def disconnect(self, code):
        if self.relay_task is not None:
            self.relay_task.cancel()
        if self.upstream is not None:
            await self.upstream.close()
