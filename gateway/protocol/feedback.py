"""What a client sends about an answer: `POST /v1/feedback`'s body (pydantic only, no I/O)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.protocol.identifiers import REQUEST_ID_PATTERN

Kind = Literal["rating", "score", "comment", "correction"]


class FeedbackRequest(BaseModel):
    """At least one of rating, score, comment, correction; `kind`, when given, names one that is present."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={"anyOf": [{"required": [k]} for k in ("rating", "score", "comment", "correction")]},
    )

    request_id: str = Field(pattern=REQUEST_ID_PATTERN, description="The X-Request-ID of the answer this is about.")
    kind: Kind | None = Field(None, description="Optional: which of the fields below this is (then required).")
    rating: Literal["up", "down"] | None = Field(None, description="Thumbs up or down.")
    score: float | None = Field(None, ge=0, le=1, description="A grade from 0 (worst) to 1 (best).")
    comment: str | None = Field(None, max_length=2000, description="Free text, kept in the store.")
    correction: str | None = Field(
        None, min_length=1, max_length=20000, description="The answer the model should have given."
    )
    model: str | None = Field(
        None, min_length=1, max_length=256, description="The model that answered, when no gateway kept the request."
    )

    @model_validator(mode="after")
    def _something(self) -> FeedbackRequest:
        given = [k for k in ("rating", "score", "comment", "correction") if getattr(self, k) is not None]
        if not given:
            raise ValueError("give at least one of rating, score, comment, correction")
        if self.kind is not None and self.kind not in given:
            raise ValueError(f"kind is {self.kind!r} but {self.kind!r} is missing")
        return self

    def items(self) -> list[tuple[str, float | None, str | None]]:
        """(kind, value, text) rows: rating up = 1, down = 0."""
        out: list[tuple[str, float | None, str | None]] = []
        if self.rating is not None:
            out.append(("rating", 1.0 if self.rating == "up" else 0.0, None))
        if self.score is not None:
            out.append(("score", self.score, None))
        if self.comment is not None:
            out.append(("comment", None, self.comment))
        if self.correction is not None:
            out.append(("correction", None, self.correction))
        return out
