"""The admin's terminal page and the replay of terminal recordings."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from ssh_control.remote.terminal import Recording, recording_directory


@pytest.fixture
def admin_browser(db):
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root-admin", password="x"))
    return client


@pytest.fixture
def recording(db):
    path = recording_directory() / "AbCdEf0123456789_-xyz.cast"
    cast = Recording(path, cols=90, rows=20, title="agent-1: operator")
    cast.output(b"hello ")
    cast.output("wörld".encode()[:2])
    cast.output("wörld".encode()[2:])
    cast.resize(cols=100, rows=30)
    cast.close()
    return path


def test_admin_terminal_page_opens_instance_socket(admin_browser, instance):
    response = admin_browser.get(f"/admin/ssh_control/instance/{instance.pk}/terminal/")

    assert response.status_code == 200
    page = response.content.decode()
    assert f'"/api/v1/instances/{instance.pk}/terminal"' in page
    assert "ssh_control/vendor/xterm/xterm.js" in page
    assert "ssh_control/terminal.js" in page


def test_admin_instance_page_links_terminal(admin_browser, instance):
    response = admin_browser.get(f"/admin/ssh_control/instance/{instance.pk}/change/")

    assert f"/admin/ssh_control/instance/{instance.pk}/terminal/" in response.content.decode()


def test_recording_file_private_and_valid_asciicast(recording):
    header, *events = [json.loads(line) for line in recording.read_text().splitlines()]

    assert recording.stat().st_mode & 0o777 == 0o600
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (90, 20)
    assert [(code, data) for _, code, data in events] == [
        ("o", "hello "),
        ("o", "w"),
        ("o", "örld"),
        ("r", "100x30"),
    ]


def test_admin_recordings_listed_and_replayed(admin_browser, recording):
    listing = admin_browser.get("/admin/ssh_control/instance/terminal-recordings/")
    replay = admin_browser.get(
        "/admin/ssh_control/instance/terminal-recordings/AbCdEf0123456789_-xyz/"
    )
    cast = admin_browser.get(
        "/admin/ssh_control/instance/terminal-recordings/AbCdEf0123456789_-xyz/cast"
    )

    assert "agent-1: operator" in listing.content.decode()
    assert replay.status_code == 200
    assert "ssh_control/replay.js" in replay.content.decode()
    assert b"".join(cast.streaming_content) == recording.read_bytes()


@pytest.mark.parametrize("session_id", ["missing-session-id", "..hidden-file", "a"])
def test_admin_recording_unknown_or_bad_id_not_found(admin_browser, recording, session_id):
    response = admin_browser.get(
        f"/admin/ssh_control/instance/terminal-recordings/{session_id}/cast"
    )

    assert response.status_code == 404


def test_admin_recordings_refused_to_non_staff(make_user, recording):
    client = Client()
    client.force_login(make_user("plain"))

    response = client.get("/admin/ssh_control/instance/terminal-recordings/")

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
