"""Binds each request's actor, client IP and request id for the audit service."""

import uuid

from audit import context


class RequestContextMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.id = uuid.uuid4()
        user = getattr(request, "user", None)
        username = user.get_username() if user is not None and user.is_authenticated else ""
        token = context.activate(
            context.ActorContext(
                username=username, source_ip=context.client_ip(request), request_id=request.id
            )
        )
        try:
            return self.get_response(request)
        finally:
            context.deactivate(token)
