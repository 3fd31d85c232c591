"""Notion's error body (``{"object": "error", "status", "code", "message", "request_id"}``) as
an exception the routes raise, with the codes notion-client 3.x knows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


@dataclass(slots=True)
class NotionError(Exception):
    """An error answer: HTTP ``status``, Notion ``code``, ``message``, extra headers (such as
    Retry-After) and ``additional_data``."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    additional_data: JSON | None = None

    def body(self, request_id: str) -> JSON:
        body: JSON = {
            "object": "error",
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "request_id": request_id,
        }
        if self.additional_data is not None:
            body["additional_data"] = self.additional_data
        return body


def validation_error(message: str) -> NotionError:
    return NotionError(400, "validation_error", message)


def not_found(kind: str, object_id: str) -> NotionError:
    return NotionError(
        404,
        "object_not_found",
        f"Could not find {kind} with ID: {object_id}. Make sure the relevant pages and databases "
        "are shared with your integration.",
    )
