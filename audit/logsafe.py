"""Escaping that keeps user-supplied text on one line in logs, audit details and exports.

Standalone on purpose: the logging configuration imports it before Django's apps load.
"""

import logging
import re

# C0 and C1 controls (newline, carriage return, escape, ...) and the Unicode line and
# paragraph separators: everything a terminal or log viewer may treat as a line break.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control_characters(value: str) -> str:
    """Each control character written as a visible `\\xNN` escape."""
    return CONTROL_CHARACTERS.sub(_escape, value)


def _escape(match: re.Match) -> str:
    return f"\\x{ord(match.group()):02x}"


class ControlCharacterEscapingFormatter(logging.Formatter):
    """A formatter whose message cannot forge extra log lines.

    Only the message is escaped: a traceback appended after it keeps its real newlines,
    since it comes from the code, not from a user.
    """

    def formatMessage(self, record):
        record.message = escape_control_characters(record.message)
        return super().formatMessage(record)
