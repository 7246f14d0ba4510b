"""User-supplied text cannot forge log lines or spreadsheet formulas."""

import logging

from django.conf import settings

from audit.export import csv_cell
from audit.logsafe import ControlCharacterEscapingFormatter, escape_control_characters


def format_record(message: str, *args, exc_info=None) -> str:
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, message, args, exc_info)
    return ControlCharacterEscapingFormatter("%(levelname)s %(message)s").format(record)


def test_formatter_with_newline_in_argument_writes_one_line():
    line = format_record("login refused user=%s", "eve\n2026-01-01 INFO admin logged in")

    assert line == "ERROR login refused user=eve\\x0a2026-01-01 INFO admin logged in"


def test_formatter_keeps_traceback_lines_of_the_code():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        text = format_record("failed user=%s", "a\rb", exc_info=sys.exc_info())

    first, *rest = text.splitlines()
    assert first == "ERROR failed user=a\\x0db"
    assert rest[0].startswith("Traceback")


def test_project_logging_uses_escaping_formatter():
    plain = settings.LOGGING["formatters"]["plain"]

    assert plain["()"] == "audit.logsafe.ControlCharacterEscapingFormatter"


def test_escape_covers_unicode_line_separators_and_escape_sequences():
    assert escape_control_characters("a\u2028b\u0085c\x1b[2J") == "a\\x2028b\\x85c\\x1b[2J"


def test_csv_cell_turns_formulas_into_text():
    assert csv_cell("=1+1") == "'=1+1"
    assert csv_cell("+cmd") == "'+cmd"
    assert csv_cell("-2") == "'-2"
    assert csv_cell("@A1") == "'@A1"
    assert csv_cell("\t=1") == "'\\x09=1"
    assert csv_cell("\uff1d1") == "'\uff1d1"
    assert csv_cell("agent-1") == "agent-1"
    assert csv_cell(None) == ""
    assert csv_cell({"b": "x\ny", "a": 1}) == '{"a": 1, "b": "x\\ny"}'
