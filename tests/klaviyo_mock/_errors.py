"""Klaviyo's error body: ``{"errors": [{id, status, code, title, detail, source}]}``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

TITLES = {
    400: "Invalid input.",
    401: "Authentication credentials were not provided.",
    403: "You do not have permission to perform this action.",
    404: "Not found.",
    405: "Method not allowed.",
    406: "Could not satisfy the request Accept header.",
    415: "Unsupported media type.",
    429: "Request was throttled.",
    500: "A server error occurred.",
    503: "Service unavailable.",
    504: "Gateway timeout.",
}


# Not frozen: Python assigns __traceback__ and friends on exceptions as they propagate.
@dataclass(eq=False)
class ApiError(Exception):
    """An error answer; raised by checks, turned into a response by the server."""

    status: int
    code: str
    detail: str
    pointer: str | None = None
    parameter: str | None = None

    def body(self) -> dict[str, Any]:
        """The JSON:API error document."""
        error: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "status": self.status,
            "code": self.code,
            "title": TITLES.get(self.status, "Error."),
            "detail": self.detail,
            "source": {},
            "links": {},
            "meta": {},
        }
        if self.pointer is not None:
            error["source"]["pointer"] = self.pointer
        if self.parameter is not None:
            error["source"]["parameter"] = self.parameter
        return {"errors": [error]}


def invalid(detail: str, pointer: str) -> ApiError:
    """A 400 ``invalid`` pointing at the offending part of the body."""
    return ApiError(400, "invalid", detail, pointer=pointer)
