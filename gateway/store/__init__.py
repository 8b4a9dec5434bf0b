"""The system of record: captured inferences, feedback and judge runs, in Postgres (or an embedded SQLite
file when no DATABASE_URL is set), through SQLAlchemy 2's async engine, with the schema in Alembic
migrations. SQL lives here and nowhere else."""
