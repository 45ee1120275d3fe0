"""Typed errors of the control plane. Each maps to a control-protocol error code."""


class SfuError(Exception):
    """Base class; ``code`` is the control-protocol error code (design.md §4)."""

    code = "internal"


class BadRequest(SfuError, ValueError):
    """Malformed or invalid parameters."""

    code = "bad_request"


class Unauthorized(SfuError):
    """The caller may not do this (wrong secret, audience publishing, ...)."""

    code = "unauthorized"


class NotFound(SfuError):
    """A named room, participant, track or subscription does not exist."""

    code = "not_found"


class Conflict(SfuError):
    """The request clashes with current state (already exists, wrong state)."""

    code = "conflict"


class LimitExceeded(SfuError):
    """A configured limit (rooms, participants, message size, ...) would be exceeded."""

    code = "limit"


class InternalError(SfuError):
    """A bug or resource failure inside the node."""

    code = "internal"


ERROR_CODES = ("bad_request", "unauthorized", "not_found", "conflict", "limit", "internal")

_BY_CODE: dict[str, type[SfuError]] = {
    cls.code: cls
    for cls in (BadRequest, Unauthorized, NotFound, Conflict, LimitExceeded, InternalError)
}


def error_for_code(code: str, message: str) -> SfuError:
    """Rebuild a typed error from a wire error (used by the client)."""
    return _BY_CODE.get(code, InternalError)(message)
