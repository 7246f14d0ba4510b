"""Admin pages of the remote operations: an instance's web terminal and recording replay.

The terminal page is a browser client of the terminal WebSocket (xterm.js, vendored in
`ssh_control/static`), so access is decided there as for any client. Recordings are read
from this process's data dir, which on a single machine is the SSH worker's too.
"""

import json
import re

from django.contrib import admin
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from ssh_control.access import has_level, is_admin
from ssh_control.choices import GrantLevel
from ssh_control.models import Instance
from ssh_control.remote.terminal import recording_directory

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class RemoteOperationsAdminMixin:
    """Adds the terminal page to an instance and the recordings to the instance admin."""

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:object_id>/terminal/", wrap(self.terminal_view), name="instance_terminal"),
            path(
                "terminal-recordings/", wrap(self.recording_list_view), name="terminal_recordings"
            ),
            path(
                "terminal-recordings/<str:session_id>/",
                wrap(self.recording_replay_view),
                name="terminal_recording_replay",
            ),
            path(
                "terminal-recordings/<str:session_id>/cast",
                wrap(self.recording_file_view),
                name="terminal_recording_file",
            ),
            *super().get_urls(),
        ]

    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields + ("remote_operations",) if obj is not None else fields

    @admin.display(description="remote operations")
    def remote_operations(self, obj):
        return format_html(
            '<a href="{}">Open terminal</a> · <a href="{}">Terminal recordings</a>',
            reverse("admin:instance_terminal", args=[obj.pk]),
            reverse("admin:terminal_recordings"),
        )

    def _page(self, request, template: str, title: str, **context):
        context.update(self.admin_site.each_context(request), title=title, opts=self.model._meta)
        return TemplateResponse(request, template, context)

    def terminal_view(self, request, object_id: int):
        instance = get_object_or_404(Instance, pk=object_id)
        if not has_level(request.user, instance, GrantLevel.OPERATE):
            raise Http404("no such instance")
        socket_path = f"/api/v1/instances/{instance.pk}/terminal"
        return self._page(
            request,
            "ssh_control/terminal.html",
            f"Terminal: {instance.name}",
            instance=instance,
            socket_path=socket_path,
        )

    def recording_list_view(self, request):
        _require_admin(request)
        recordings = sorted(
            (_recording_summary(path) for path in recording_directory().glob("*.cast")),
            key=lambda item: item["timestamp"],
            reverse=True,
        )
        return self._page(
            request,
            "ssh_control/recording_list.html",
            "Terminal recordings",
            recordings=recordings,
        )

    def recording_replay_view(self, request, session_id: str):
        _require_admin(request)
        summary = _recording_summary(_recording_path(session_id))
        return self._page(
            request,
            "ssh_control/recording_replay.html",
            f"Replay: {summary['title']}",
            recording=summary,
            cast_url=reverse("admin:terminal_recording_file", args=[session_id]),
        )

    def recording_file_view(self, request, session_id: str):
        _require_admin(request)
        handle = _recording_path(session_id).open("rb")
        return FileResponse(handle, content_type="application/x-asciicast")


def _require_admin(request) -> None:
    if not is_admin(request.user):
        raise Http404("not found")


def _recording_path(session_id: str):
    path = recording_directory() / f"{session_id}.cast"
    if not SESSION_ID.match(session_id) or not path.is_file():
        raise Http404("no such recording")
    return path


def _recording_summary(path) -> dict:
    with path.open(encoding="utf-8", errors="replace") as handle:
        try:
            header = json.loads(handle.readline())
        except ValueError:
            header = {}
    return {
        "session_id": path.stem,
        "title": header.get("title", path.stem),
        "timestamp": header.get("timestamp", 0),
        "width": header.get("width"),
        "height": header.get("height"),
        "size": path.stat().st_size,
    }
