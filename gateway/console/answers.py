"""The feedback form both the review queue and the inference page post: a rating, a comment, or a correction
written in an editor prefilled with the answer. The form's feedback goes through the same desk as
POST /v1/feedback, so it is owned, checked and counted the same way."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Request
from pydantic import ValidationError

from gateway.api.deps import feedback_desk
from gateway.console.web import Viewer
from gateway.errors import InvalidRequest
from gateway.protocol.feedback import FeedbackRequest


def rating_of(value: str | None) -> Literal["up", "down"] | None:
    return "up" if value == "up" else "down" if value == "down" else None


def _lines(text: str) -> str:
    """Browsers post a textarea's line breaks as CRLF."""
    return text.replace("\r\n", "\n")


async def give_feedback(
    request: Request,
    person: Viewer,
    item: dict[str, Any],
    fields: dict[str, str],
    rating: Literal["up", "down"] | None,
) -> None:
    """Record what the form holds: `rating`, a comment, and the correction when it differs from the answer."""
    comment = _lines(fields.get("comment", "")).strip() or None
    written = _lines(fields.get("correction", ""))
    changed = written.strip() and written.strip() != (item.get("answer") or "").strip()
    correction = written if changed else None
    if rating is None and comment is None and correction is None:
        raise InvalidRequest("nothing to save: rate the answer, write a comment, or change the answer")
    try:
        body = FeedbackRequest(request_id=item["request_id"], rating=rating, comment=comment, correction=correction)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise InvalidRequest(f"{where}: {problem['msg']}" if where else problem["msg"]) from None
    await feedback_desk(request).give(person.principal, body)
