"""The inference log and feedback.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "inferences",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("route", sa.String(200)),
        sa.Column("route_version", sa.Integer),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("variant", sa.String(200), nullable=False),
        sa.Column("key_id", sa.String(64)),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("messages", sa.JSON),
        sa.Column("params", sa.JSON),
        sa.Column("answer", sa.Text),
        sa.Column("tool_calls", sa.JSON),
        sa.Column("finish_reason", sa.String(32)),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("latency_s", sa.Float),
        sa.Column("ttft_s", sa.Float),
        sa.Column("cache_hit", sa.Boolean, nullable=False),
        sa.Column("format_valid", sa.Boolean),
    )
    op.create_index("ix_inferences_created_at", "inferences", ["created_at"])
    op.create_index("ix_inferences_route", "inferences", ["route"])
    op.create_index("ix_inferences_key_id", "inferences", ["key_id"])
    op.create_table(
        "feedback",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("text", sa.Text),
        sa.Column("key_id", sa.String(64)),
        sa.Column("source", sa.String(200)),
    )
    op.create_index("ix_feedback_request_id", "feedback", ["request_id"])
    op.create_index("ix_feedback_created_at", "feedback", ["created_at"])
    op.create_index("ix_feedback_key_id", "feedback", ["key_id"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("inferences")
