"""Alembic revisions of the matdesign schema (shipped inside the package)."""
