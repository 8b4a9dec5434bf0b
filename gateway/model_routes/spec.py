"""What a route is: the admin API's request and response models (pydantic only, no I/O)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.adapters.registry import NAME_PATTERN as ADAPTER_PATTERN
from gateway.protocol.identifiers import MODEL_NAME_PATTERN

TOTAL_WEIGHT = 100
ModelName = Annotated[str, Field(min_length=1, max_length=200, pattern=MODEL_NAME_PATTERN)]
MAX_PARAMS = 32
MAX_GUARD_REQUESTS = 10_000_000
MAX_STEP_AFTER_S = 365 * 86_400  # a year


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: ModelName = Field(description="The served model (any backend kind).")
    weight: int = Field(ge=0, le=TOTAL_WEIGHT, description="Share of the route's users, in percent.")
    params: dict[Annotated[str, Field(min_length=1, max_length=64)], Any] = Field(
        default_factory=dict,
        max_length=MAX_PARAMS,
        description='Sampling defaults for this variant (a request\'s own value wins), e.g. {"temperature": 0.2}.',
    )
    adapter: str | None = Field(
        None,
        pattern=ADAPTER_PATTERN,
        description="A LoRA adapter on `model` (the base): the variant serves the adapter's own model name.",
    )

    @field_validator("params")
    @classmethod
    def _no_routing_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        reserved = {"model", "messages", "prompt", "input", "stream"} & v.keys()
        if reserved:
            raise ValueError(f"params may not set {sorted(reserved)}")
        _storable(v, depth=0)
        return v

    @property
    def served(self) -> str:
        """The model name requests for this variant go to."""
        return self.adapter or self.model


def _storable(value: Any, depth: int) -> None:
    """A value the route's record can hold: integers within 64 bits (orjson writes no larger), nesting
    at most 8 deep."""
    if depth > 8:
        raise ValueError("params nest at most 8 levels deep")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        raise ValueError("params hold integers within 64 bits only")
    for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
        _storable(item, depth + 1)


class Shadow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: ModelName = Field(description="Candidate that gets a copy of requests.")
    percent: float = Field(gt=0, le=100, description="Share of the route's requests mirrored to it.")


class CaptureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    percent: float = Field(ge=0, le=100, description="Share of the route's answers kept in the inference log.")


class Guard(BaseModel):
    """Canary vs stable, each rule relative to the stable variant, judged once both have `min_requests`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_requests: int = Field(
        100, ge=1, le=MAX_GUARD_REQUESTS, description="Minimum sample per variant before any verdict."
    )
    max_error_rate_delta: float = Field(
        0.02, ge=0, le=1, description="Canary error rate may exceed the stable's by at most this (absolute share)."
    )
    max_ttft_p95_ratio: float = Field(
        1.5, gt=0, le=1000, description="Canary time-to-first-token p95 at most this times the stable's."
    )
    max_format_failure_delta: float = Field(
        0.05, ge=0, le=1, description="Canary share of answers that break the requested JSON format, over the stable's."
    )
    min_raters: int = Field(
        3,
        ge=1,
        le=10_000,
        description="Distinct users who must have rated each variant's answers before "
        "the thumbs-down rule acts (so one caller cannot roll a canary back, or hold it up, alone).",
    )
    max_thumbs_down_delta: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Canary thumbs-down share over the stable's (judged once each has min_requests/10 votes).",
    )
    steps: list[Annotated[int, Field(ge=1, le=TOTAL_WEIGHT)]] = Field(
        default_factory=list,
        max_length=TOTAL_WEIGHT,
        description="Canary weight plan, e.g. [10, 50, 100]; empty: no automatic steps.",
    )
    step_after_requests: int = Field(
        200,
        ge=1,
        le=MAX_GUARD_REQUESTS,
        description="Step once the canary served this many requests since the last change without a breach.",
    )
    step_after_s: float = Field(
        0, ge=0, le=MAX_STEP_AFTER_S, description="... or once this many seconds passed (0: unused)."
    )

    @field_validator("steps")
    @classmethod
    def _rising(cls, v: list[int]) -> list[int]:
        if any(not 0 < s <= TOTAL_WEIGHT for s in v) or v != sorted(set(v)):
            raise ValueError("steps must rise strictly, each between 1 and 100")
        return v


class RouteSpec(BaseModel):
    """PUT /admin/routes/{name}. The first variant is the stable one; any other with weight > 0 is a canary."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [{"variants": [{"model": "smollm2:135m", "weight": 100}]}]},
    )

    variants: list[Variant] = Field(
        min_length=1,
        max_length=10,
        description="Weights sum to 100; each variant serves a different model (its adapter, or else its model).",
    )
    fallbacks: list[ModelName] = Field(
        default_factory=list,
        max_length=5,
        description="Routes or models tried in order when the variant cannot answer.",
    )
    shadow: Shadow | None = None
    guard: Guard | None = None
    capture: CaptureSpec | None = None  # a share of the route's answers kept in the inference log

    @model_validator(mode="after")
    def _weights(self) -> RouteSpec:
        total = sum(v.weight for v in self.variants)
        if total != TOTAL_WEIGHT:
            raise ValueError(f"variant weights must sum to {TOTAL_WEIGHT}, got {total}")
        served = [v.served for v in self.variants]
        if len(set(served)) != len(served):
            raise ValueError("each variant must serve a different model")
        return self

    @property
    def stable(self) -> Variant:
        return self.variants[0]

    @property
    def canaries(self) -> list[Variant]:
        return [v for v in self.variants[1:] if v.weight > 0]

    def with_weights(self, weights: dict[str, int], *, first: str | None = None) -> RouteSpec:
        """This route with the given variants' weights (by served model), optionally reordered so `first` leads."""
        variants = [v.model_copy(update={"weight": weights.get(v.served, v.weight)}) for v in self.variants]
        if first is not None:
            variants.sort(key=lambda v: v.served != first)
        return self.model_copy(update={"variants": variants})


class StoredRoute(BaseModel):
    """A route as stored: its spec plus a version that rises with every change."""

    model_config = ConfigDict(frozen=True)

    name: str
    spec: RouteSpec
    version: int
    updated_at: float

    def public(self) -> dict[str, Any]:
        return {"name": self.name, **self.spec.model_dump(), "version": self.version, "updated_at": self.updated_at}
