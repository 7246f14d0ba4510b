"""Limit/offset pagination with the bounds the runbook's queries expect."""

from rest_framework import pagination
from rest_framework.exceptions import ValidationError


def parse_bounded_int(params, name: str, *, default: int, minimum: int, maximum: int) -> int:
    """A query parameter as an integer in [minimum, maximum]; 400 naming it otherwise."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError({name: f"must be a whole number, got {raw[:40]!r}"}) from None
    if value < minimum or value > maximum:
        raise ValidationError({name: f"must be between {minimum} and {maximum}"})
    return value


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """`limit` (default 100, at most 1000) and `offset`; bad values are a 400, not a guess."""

    default_limit = 100
    max_limit = 1000

    def get_limit(self, request):
        return parse_bounded_int(
            request.query_params,
            "limit",
            default=self.default_limit,
            minimum=1,
            maximum=self.max_limit,
        )

    def get_offset(self, request):
        return parse_bounded_int(
            request.query_params, "offset", default=0, minimum=0, maximum=2**31 - 1
        )
