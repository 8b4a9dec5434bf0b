"""Feedback rows say who gave them: the key that made the request (`owner`), a `reviewer`, an `admin`, or
`unverified` (a request id the gateway could not tie to the sender: kept, never trusted). Rows from before
have no role.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("role")
