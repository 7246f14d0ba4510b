"""CSV export of audit entries that a spreadsheet or a log viewer cannot be tricked by."""

import csv
import json
from collections.abc import Iterable, Iterator

from audit.logsafe import escape_control_characters

COLUMNS = (
    "created_at",
    "id",
    "entry_id",
    "event_type",
    "instance_id",
    "instance_name",
    "username",
    "source_ip",
    "duration_ms",
    "request_id",
    "details",
    "data",
)
# A cell starting with one of these is read as a formula by spreadsheet programs.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(value) -> str:
    """One cell: control characters escaped, a would-be formula turned into text."""
    if value is None:
        return ""
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
    if text.startswith(FORMULA_PREFIXES):
        text = "'" + text
    return escape_control_characters(text)


class _Echo:
    """A file-like object that hands back what is written, for streaming rows."""

    def write(self, value: str) -> str:
        return value


def audit_csv_lines(entries: Iterable) -> Iterator[str]:
    """The header and one line per entry, produced lazily for a streaming response."""
    writer = csv.writer(_Echo())
    yield writer.writerow(COLUMNS)
    for entry in entries:
        row = [getattr(entry, column) for column in COLUMNS]
        row[0] = entry.created_at.isoformat()
        yield writer.writerow([csv_cell(value) for value in row])
