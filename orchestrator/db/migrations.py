"""Alembic, driven from code: `trainyard db upgrade`, and the check `serve` makes at start.

Migrations are the only way tables come to exist; nothing calls `metadata.create_all`.

`serve` and `worker` migrate a SQLite database themselves (`upgrade_sqlite`): it is a file on
this machine that only this machine's processes use, so bringing it to the code's schema is what
the user would do anyway, and a fresh data dir just works. A PostgreSQL database is shared (several
workers, other machines, maybe a backup policy): it is migrated only on purpose, by `trainyard db
upgrade`, and `ensure_current` refuses to start on one that is not at the head.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy.engine import Engine

from orchestrator.errors import SchemaOutOfDateError

ALEMBIC_DIR = Path(__file__).resolve().parents[2] / "alembic"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    # `%` is ConfigParser's interpolation character; URLs may contain it.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_sqlite(engine: Engine) -> tuple[str | None, str | None] | None:
    """Bring a SQLite file database to the migrations' head (creating its tables on a fresh data
    dir); returns (revision before, head) when it migrated, None when there was nothing to do:
    not SQLite (or in memory), already at the head, or at a revision this code does not know
    (newer code wrote it: `ensure_current` then refuses, since upgrading cannot go back). A file
    lock beside the database keeps a `serve` and a `worker` starting together from both
    migrating it."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    url = engine.url.render_as_string(hide_password=False)
    scripts = ScriptDirectory.from_config(alembic_config(url))
    head = scripts.get_current_head()
    with FileLock(f"{database}.migrate.lock"):
        current = current_revision(engine)
        if current == head or (current is not None and current not in {s.revision for s in scripts.walk_revisions()}):
            return None
        upgrade(url)
    return current, head


def ensure_current(engine: Engine) -> None:
    """Raise SchemaOutOfDateError unless the database is at the migrations' head."""
    head = head_revision(engine.url.render_as_string(hide_password=False))
    current = current_revision(engine)
    if current != head:
        raise SchemaOutOfDateError(
            f"database schema is at {current or 'nothing (empty database)'}, the code needs {head}: "
            f"run `trainyard db upgrade` first"
        )
