"""Every read and write of the store, as small async functions over an engine (no state here)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, case, delete, exists, func, insert, literal, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store.schema import feedback, inferences, judge_runs


def _insert_ignoring_duplicates(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING: a client may reuse an X-Request-ID; the first answer is kept."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(inferences).values(list(rows)).on_conflict_do_nothing(index_elements=["request_id"])
    if dialect == "sqlite":
        return sqlite.insert(inferences).values(list(rows)).on_conflict_do_nothing(index_elements=["request_id"])
    return insert(inferences).values(list(rows))


async def insert_inferences(engine: AsyncEngine, rows: Sequence[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(_insert_ignoring_duplicates(conn, rows))


async def inference_of(engine: AsyncEngine, request_id: str) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(inferences).where(inferences.c.request_id == request_id))).first()
    return dict(row._mapping) if row is not None else None


async def add_feedback(
    engine: AsyncEngine,
    *,
    request_id: str,
    kind: str,
    value: float | None = None,
    text: str | None = None,
    key_id: str | None = None,
    source: str | None = None,
    role: str | None = None,
    at: datetime | None = None,
) -> int:
    async with engine.begin() as conn:
        return await _insert_feedback(conn, request_id, kind, value, text, key_id, source, role, at)


async def _insert_feedback(
    conn: AsyncConnection,
    request_id: str,
    kind: str,
    value: float | None,
    text: str | None,
    key_id: str | None,
    source: str | None,
    role: str | None,
    at: datetime | None,
) -> int:
    row = dict(
        request_id=request_id,
        created_at=at or datetime.now(UTC),
        kind=kind,
        value=value,
        text=text,
        key_id=key_id,
        source=source,
        role=role,
    )
    result = await conn.execute(insert(feedback).values(**row).returning(feedback.c.id))
    return int(result.scalar_one())


async def keep_feedback(
    engine: AsyncEngine,
    request_id: str,
    items: Sequence[tuple[str, float | None, str | None]],
    *,
    key_id: str | None,
    role: str,
) -> None:
    """One feedback body's rows, in one transaction: (kind, value, text) each. A request has one rating: a new
    one replaces the one before (whoever gave it; only its owner, a reviewer or an admin can)."""
    async with engine.begin() as conn:
        if any(kind == "rating" for kind, _, _ in items) and role != "unverified":
            await conn.execute(
                delete(feedback).where(
                    feedback.c.request_id == request_id,
                    feedback.c.kind == "rating",
                    feedback.c.role.is_distinct_from("unverified"),
                )
            )
        for kind, value, text in items:
            await _insert_feedback(conn, request_id, kind, value, text, key_id, None, role, None)


async def feedback_of(engine: AsyncEngine, request_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(feedback).where(feedback.c.request_id == request_id).order_by(feedback.c.id))
    return [dict(r._mapping) for r in rows]


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceFilter:
    """Which captured inferences to list; None everywhere is every one."""

    route: str | None = None
    variant: str | None = None
    model: str | None = None
    key_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    rating: Literal["up", "down"] | None = None  # its current rating (unverified ones do not count)
    has_correction: bool | None = None  # a correction from its owner, a reviewer or an admin
    format_failed: bool | None = None  # a format was asked for and the answer broke it
    judge_below: float | None = None  # a judge scored it under this


# The preview of an answer in a listing: enough to recognise it; the whole one is in the detail.
PREVIEW_CHARS = 200
SUMMARY = (
    inferences.c.id,
    inferences.c.request_id,
    inferences.c.created_at,
    inferences.c.route,
    inferences.c.model,
    inferences.c.variant,
    inferences.c.key_id,
    inferences.c.endpoint,
    inferences.c.outcome,
    inferences.c.finish_reason,
    inferences.c.prompt_tokens,
    inferences.c.completion_tokens,
    inferences.c.latency_s,
    inferences.c.ttft_s,
    inferences.c.cache_hit,
    inferences.c.format_valid,
    func.substr(inferences.c.answer, 1, PREVIEW_CHARS).label("answer_preview"),
)


def _has_feedback(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    verified = or_(feedback.c.role.is_(None), feedback.c.role != "unverified")
    return exists().where(feedback.c.request_id == inferences.c.request_id, verified, *conditions)


def _conditions(f: InferenceFilter) -> list[ColumnElement[bool]]:
    equal = {"route": f.route, "variant": f.variant, "model": f.model, "key_id": f.key_id}
    where: list[ColumnElement[bool]] = [inferences.c[name] == value for name, value in equal.items() if value]
    if f.since is not None:
        where.append(inferences.c.created_at >= f.since)
    if f.until is not None:
        where.append(inferences.c.created_at < f.until)
    if f.rating is not None:
        where.append(_has_feedback(feedback.c.kind == "rating", feedback.c.value == (1.0 if f.rating == "up" else 0.0)))
    if f.has_correction is not None:
        corrected = _has_feedback(feedback.c.kind == "correction")
        where.append(corrected if f.has_correction else ~corrected)
    if f.format_failed is not None:
        where.append(inferences.c.format_valid.is_(False) if f.format_failed else ~inferences.c.format_valid.is_(False))
    if f.judge_below is not None:
        judged = (feedback.c.request_id == inferences.c.request_id, feedback.c.kind == "judge")
        where.append(exists().where(*judged, feedback.c.value < f.judge_below))
    return where


async def list_inferences(
    engine: AsyncEngine, f: InferenceFilter, *, before_id: int | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Summaries of the captured inferences matching `f`, newest first (by capture order), after the one whose
    id is `before_id` (the cursor of the previous page); the whole answer is in `inference_of`."""
    query = select(*SUMMARY).where(*_conditions(f))
    if before_id is not None:
        query = query.where(inferences.c.id < before_id)
    query = query.order_by(inferences.c.id.desc()).limit(limit)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]


# Why an answer is in the review queue, most urgent first.
REVIEW_REASONS = ("thumbs_down", "format_failure", "low_judge_score", "sample")


async def review_candidates(
    engine: AsyncEngine, *, route: str | None, limit: int, judge_below: float, sample_every: int
) -> list[dict[str, Any]]:
    """Captured answers no reviewer or admin has given feedback on, most urgent first: a verified thumbs-down,
    a broken format, a judge score under `judge_below`, then one in `sample_every` of the rest; newest first
    within each. Each with `reason` (REVIEW_REASONS)."""
    reviewed = _has_feedback(feedback.c.role.in_(("reviewer", "admin")))
    down = _has_feedback(feedback.c.kind == "rating", feedback.c.value == 0.0)
    broken = inferences.c.format_valid.is_(False)
    judged_low = exists().where(
        feedback.c.request_id == inferences.c.request_id, feedback.c.kind == "judge", feedback.c.value < judge_below
    )
    sampled = inferences.c.id % sample_every == 0
    urgency = case((down, 0), (broken, 1), (judged_low, 2), else_=3)
    reason = case(
        (down, literal(REVIEW_REASONS[0])),
        (broken, literal(REVIEW_REASONS[1])),
        (judged_low, literal(REVIEW_REASONS[2])),
        else_=literal(REVIEW_REASONS[3]),
    )
    query = (
        select(*SUMMARY, reason.label("reason"))
        .where(~reviewed, or_(down, broken, judged_low, sampled))
        .order_by(urgency, inferences.c.id.desc())
        .limit(limit)
    )
    if route is not None:
        query = query.where(inferences.c.route == route)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]


async def erase_key(engine: AsyncEngine, key_id: str) -> dict[str, int]:
    """Everything of one key: its captured inferences, the feedback on them, and the feedback it sent."""
    async with engine.begin() as conn:
        own = select(inferences.c.request_id).where(inferences.c.key_id == key_id)
        fb = await conn.execute(delete(feedback).where((feedback.c.key_id == key_id) | feedback.c.request_id.in_(own)))
        inf = await conn.execute(delete(inferences).where(inferences.c.key_id == key_id))
    return {"inferences": inf.rowcount, "feedback": fb.rowcount}


async def purge_before(engine: AsyncEngine, cutoff: datetime) -> dict[str, int]:
    """Retention: captured inferences older than `cutoff`, and feedback older than it."""
    async with engine.begin() as conn:
        inf = await conn.execute(delete(inferences).where(inferences.c.created_at < cutoff))
        fb = await conn.execute(delete(feedback).where(feedback.c.created_at < cutoff))
    return {"inferences": inf.rowcount, "feedback": fb.rowcount}


def _window(query: Select, *, route: str | None, since: datetime | None) -> Select:
    if route is not None:
        plain = inferences.c.route.is_(None) & (inferences.c.model == route)  # a model asked for by name
        query = query.where((inferences.c.route == route) | plain)
    if since is not None:
        query = query.where(inferences.c.created_at >= since)
    return query


async def sample_answers(engine: AsyncEngine, *, route: str, since: datetime, n: int) -> list[dict[str, Any]]:
    """A random sample of a route's successful answers in the window (the judge's input)."""
    query = (
        _window(select(inferences), route=route, since=since)
        .where(inferences.c.outcome.in_(("success", "cache_hit")), inferences.c.answer.is_not(None))
        .order_by(func.random())
        .limit(n)
    )
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]


async def export_rows(
    engine: AsyncEngine, *, route: str | None, since: datetime | None
) -> AsyncIterator[dict[str, Any]]:
    """Each captured inference of the window with its feedback (`"feedback": [...]`), oldest first."""
    query = _window(select(inferences), route=route, since=since).order_by(inferences.c.created_at, inferences.c.id)
    async with engine.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(query)]
        ids = [r["request_id"] for r in rows]
        notes: dict[str, list[dict[str, Any]]] = {}
        for start in range(0, len(ids), 500):
            part = await conn.execute(
                select(feedback).where(feedback.c.request_id.in_(ids[start : start + 500])).order_by(feedback.c.id)
            )
            for f in part:
                notes.setdefault(f.request_id, []).append(dict(f._mapping))
    for row in rows:
        row["feedback"] = notes.get(row["request_id"], [])
        yield row


async def add_judge_run(engine: AsyncEngine, **values: Any) -> None:
    async with engine.begin() as conn:
        if values.get("baseline") is None:  # the first run of a route and variant is its baseline
            first = (
                await conn.execute(
                    select(func.count())
                    .select_from(judge_runs)
                    .where(judge_runs.c.route == values["route"], judge_runs.c.variant == values["variant"])
                )
            ).scalar_one()
            values["baseline"] = first == 0
        await conn.execute(insert(judge_runs).values(created_at=datetime.now(UTC), **values))


async def judge_levels(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Per route and variant: the latest judge mean and the latest baseline's mean."""
    async with engine.connect() as conn:
        rows = [
            dict(r._mapping)
            for r in await conn.execute(select(judge_runs).order_by(judge_runs.c.created_at, judge_runs.c.id))
        ]
    levels: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        level = levels.setdefault((r["route"], r["variant"]), {"route": r["route"], "variant": r["variant"]})
        level["score"] = r["mean"]
        if r["baseline"]:
            level["baseline"] = r["mean"]
    return list(levels.values())
