"""The system of record (issue 19): captured inferences, feedback and judge runs, in Postgres (or an
embedded SQLite file when no DATABASE_URL is set), through SQLAlchemy 2's async engine and Alembic."""
