"""Request checks that raise InvalidArgument naming the field."""
from __future__ import annotations

import uuid
from collections.abc import Mapping

from .errors import InvalidArgument


def _path(parent: str, field: str) -> str:
    """The field's path in the request, as clients see it (e.g. "message.text")."""
    return f"{parent}.{field}" if parent else field


def text(request, field: str, *, min_len: int = 1, max_len: int = 4000, parent: str = "") -> str:
    value = getattr(request, field).strip()
    if "\x00" in value:     # Postgres stores no NUL in text: refused here, naming the field
        raise InvalidArgument(_path(parent, field), "must not contain NUL characters")
    if not min_len <= len(value) <= max_len:
        if not value and min_len:
            raise InvalidArgument(_path(parent, field), "is required")
        raise InvalidArgument(_path(parent, field), f"must be {min_len}..{max_len} characters")
    return value


def storable(value: str, field: str) -> str:
    """Text kept as given (a title, a body, a map's key or value) but for NUL, which Postgres
    (text and jsonb) cannot store: refused, naming the field."""
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")
    return value


def storable_map(values: Mapping[str, str], field: str) -> dict[str, str]:
    return {storable(key, f"{field} (a key)"): storable(value, f"{field}[{key}]")
            for key, value in values.items()}


def in_range(request, field: str, low: int, high: int, *, default: int | None = None,
             parent: str = "") -> int:
    """An integer field within [low, high]; 0 means `default` when one is given."""
    value = getattr(request, field)
    if value == 0 and default is not None:
        return default
    if not low <= value <= high:
        raise InvalidArgument(_path(parent, field), f"must be between {low} and {high}, got {value}")
    return value


def count(request, field: str, low: int, high: int) -> list:
    """A repeated field with between low and high entries."""
    values = list(getattr(request, field))
    if not low <= len(values) <= high:
        raise InvalidArgument(field, f"must hold {low}..{high} entries, got {len(values)}")
    return values


def choice(request, field: str, names: Mapping[str, int]) -> str | None:
    """The name of an enum field's value (`names`: name -> number); None when it is unspecified
    (0). A number not in `names` (a client with a newer contract, or a typo) is refused."""
    value = getattr(request, field)
    if value == 0:
        return None
    for name, number in names.items():
        if number == value:
            return name
    raise InvalidArgument(field, f"must be one of {', '.join(names)}, got {value}")


def email(request, field: str = "email") -> str:
    value = text(request, field, max_len=254).lower()
    local, _, domain = value.partition("@")
    if not local or "." not in domain or " " in value:
        raise InvalidArgument(field, "is not an email address")
    return value


MAX_PAGE_OFFSET = 1_000_000   # no listing pages this deep; a bigger "token" was never given out


def page_offset(request, field: str = "page_token") -> int:
    """Page tokens are opaque to clients; here they are an offset (one Postgres can take: the
    fuzzer's 40-digit token was INTERNAL)."""
    token = getattr(request, field)
    if not token:
        return 0
    if not token.isdigit() or not token.isascii() or int(token) > MAX_PAGE_OFFSET:
        raise InvalidArgument(field, "is not a token from a previous response")
    return int(token)


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def identifier(request, field: str) -> uuid.UUID:
    """A required id field (a UUID), e.g. a content_id."""
    value = getattr(request, field).strip()
    if not value:
        raise InvalidArgument(field, "is required")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(field, "is not a valid id") from None
