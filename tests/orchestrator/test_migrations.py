"""Migrations are the only way tables come to exist; they must match the models exactly."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from orchestrator.db.migrations import alembic_config, downgrade, upgrade
from orchestrator.db.models import Base


def test_single_head():
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"


def test_upgrade_from_empty_matches_models_and_downgrade_to_empty(empty_db_url):
    upgrade(empty_db_url)
    engine = create_engine(empty_db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrated schema differ: {diff}"
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        downgrade(empty_db_url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
