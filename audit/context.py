"""Who is acting and from where, for the request or task being handled.

The middleware fills it for API and admin requests, and a task sent on a request's behalf
carries it to the worker (`task_context` and `bound_from_task`); background work leaves
it empty, so its entries carry no source IP and the `system` username.
"""

import contextvars
import functools
import ipaddress
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings


@dataclass(frozen=True)
class ActorContext:
    username: str = ""
    source_ip: str | None = None
    request_id: uuid.UUID | None = field(default=None)


# ActorContext is frozen, so sharing one default instance is safe.
_current = contextvars.ContextVar("claworc_actor", default=ActorContext())  # noqa: B039


def current() -> ActorContext:
    return _current.get()


def activate(context: ActorContext) -> contextvars.Token:
    return _current.set(context)


def deactivate(token: contextvars.Token) -> None:
    _current.reset(token)


# The keyword argument that carries the sender's context to a task.
TASK_KWARG = "audit_context"


def task_context() -> dict | None:
    """The bound context as a task argument (JSON), or None when nothing is bound."""
    bound = current()
    if bound == ActorContext():
        return None
    return {
        "username": bound.username,
        "source_ip": bound.source_ip,
        "request_id": str(bound.request_id) if bound.request_id else None,
    }


def bound_from_task(function: Callable) -> Callable:
    """Run the task with the context its sender passed as `audit_context`, if any.

    A task sent without one (by beat or by background work) runs with an empty context,
    whatever the thread running it had bound.
    """

    @functools.wraps(function)
    def run(*args, **kwargs):
        token = activate(_from_task_context(kwargs.pop(TASK_KWARG, None)))
        try:
            return function(*args, **kwargs)
        finally:
            deactivate(token)

    return run


def _from_task_context(payload: dict | None) -> ActorContext:
    if not payload:
        return ActorContext()
    request_id = payload.get("request_id")
    return ActorContext(
        username=payload.get("username") or "",
        source_ip=payload.get("source_ip"),
        request_id=uuid.UUID(request_id) if request_id else None,
    )


def _parse_ip(value: str | None):
    try:
        return ipaddress.ip_address((value or "").strip())
    except ValueError:
        return None


def _is_trusted(address) -> bool:
    return any(address in network for network in settings.CLAWORC_TRUSTED_PROXIES)


def peer_is_trusted_proxy(request) -> bool:
    peer = _parse_ip(request.META.get("REMOTE_ADDR"))
    return peer is not None and _is_trusted(peer)


def client_ip(request) -> str | None:
    """The TCP peer, or what a trusted proxy in front of it says the client was.

    Forwarding headers are read only when the peer is a configured trusted proxy; then
    the right-most `X-Forwarded-For` address that is not itself a trusted proxy wins, and
    `X-Real-Ip` is the fallback. A client cannot choose its own audited address.
    """
    peer = _parse_ip(request.META.get("REMOTE_ADDR"))
    if peer is None or not _is_trusted(peer):
        return str(peer) if peer is not None else None

    forwarded = request.headers.get("X-Forwarded-For", "")
    for candidate in reversed([part for part in forwarded.split(",") if part.strip()]):
        address = _parse_ip(candidate)
        if address is None:
            break
        if not _is_trusted(address):
            return str(address)

    real_ip = _parse_ip(request.headers.get("X-Real-Ip"))
    return str(real_ip) if real_ip is not None else str(peer)
