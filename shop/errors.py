"""Domain errors that services raise and the web layers translate into statuses."""

from __future__ import annotations

from typing import Any


class ShopError(Exception):
    """An error a person can act on; `message` is a sentence in their language."""

    code = "error"
    status = 400

    def __init__(
        self, message: str, *, code: str | None = None, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or []


class InvalidInput(ShopError):
    code = "invalid_input"
    status = 422


class Unauthorized(ShopError):
    code = "unauthorized"
    status = 401


class Forbidden(ShopError):
    code = "forbidden"
    status = 403


class NotFound(ShopError):
    code = "not_found"
    status = 404


class Conflict(ShopError):
    code = "conflict"
    status = 409


class ServiceUnavailable(ShopError):
    code = "service_unavailable"
    status = 503


class TooLarge(ShopError):
    """A request body over MAX_CONTENT_LENGTH, refused before any of it was read."""

    code = "request_entity_too_large"
    status = 413
