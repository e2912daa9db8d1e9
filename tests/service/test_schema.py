"""The Alembic revisions create exactly the tables of the SQLAlchemy models, on SQLite and on
Postgres, through the `matdesign db upgrade` command."""

from __future__ import annotations

import contextlib
import io

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app import cli
from app.models import Base
from app.settings import get_settings


def _upgrade_with_cli(url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MATDESIGN_DATABASE_URL", url)
    get_settings.cache_clear()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert cli.main(["db", "upgrade"]) == 0
    finally:
        get_settings.cache_clear()
    return out.getvalue()


def _assert_schema_matches(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert diff == []
    assert {"jobs", "structures", "oracle_scores", "api_keys", "alembic_version"} <= tables


def test_sqlite_schema(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/nested/dir/schema.db"
    assert "head" in _upgrade_with_cli(url, monkeypatch)
    _assert_schema_matches(url)
    _upgrade_with_cli(url, monkeypatch)  # idempotent


@pytest.mark.integration
def test_postgres_schema(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _upgrade_with_cli(postgres_url, monkeypatch)
    _assert_schema_matches(postgres_url)
