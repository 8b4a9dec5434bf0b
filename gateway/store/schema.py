"""The tables, as SQLAlchemy Core metadata (the migrations create them; queries use these objects).

JSON columns hold what is shaped by the client (messages, parameters, tool calls). Key ids are
stored, never keys. Times are timezone-aware UTC.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# BigInteger on Postgres, INTEGER on SQLite (only an INTEGER PRIMARY KEY autoincrements there).
ID = BigInteger().with_variant(Integer(), "sqlite")

inferences = Table(
    "inferences",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("route", String(200), index=True),  # null: the client named a model, not a route
    Column("route_version", Integer),  # the route as it was (joins feedback to the guard's signals)
    Column("model", String(200), nullable=False),  # what the client asked for (route or model)
    Column("variant", String(200), nullable=False),  # the model that answered
    Column("key_id", String(64), index=True),
    Column("endpoint", String(32), nullable=False),  # chat | completions
    Column("messages", JSON),  # chat messages, or {"prompt": ...} for a text completion
    Column("params", JSON),  # every other request field (temperature, max_tokens, response_format, ...)
    Column("answer", Text),
    Column("tool_calls", JSON),
    Column("finish_reason", String(32)),
    Column("outcome", String(32), nullable=False),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("latency_s", Float),
    Column("ttft_s", Float),
    Column("cache_hit", Boolean, nullable=False, default=False),
    Column("format_valid", Boolean),  # null: no format was asked for
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # rating | score | comment | correction | judge
    Column("value", Float),  # rating: 1 up, 0 down; score and judge: 0..1
    Column("text", Text),  # comment, correction (the answer it should have been), judge's reason
    Column("key_id", String(64), index=True),  # who sent it (the judge: null)
    Column("source", String(200)),  # judge: the judge model
    # owner (the key that made the request) | reviewer | admin | unverified (not tied to the sender) | null
    # (recorded before feedback had owners)
    Column("role", String(16)),
)

judge_runs = Table(
    "judge_runs",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("route", String(200), nullable=False),
    Column("variant", String(200), nullable=False),
    Column("judge_model", String(200), nullable=False),
    Column("n", Integer, nullable=False),
    Column("mean", Float, nullable=False),
    Column("ci_low", Float, nullable=False),
    Column("ci_high", Float, nullable=False),
    Column("baseline", Boolean, nullable=False, default=False),  # the run later ones are compared with
    Index("ix_judge_runs_route_variant", "route", "variant", "created_at"),
)
