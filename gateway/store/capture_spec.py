"""A route's capture switch (the `capture` field of a route; no I/O, no gateway imports)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CaptureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    percent: float = Field(ge=0, le=100, description="Share of the route's answers kept in the inference log.")
