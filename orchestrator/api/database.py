"""How the API runs its database work without stalling the event loop or wasting the 2 cores.

Routes are `async def` and call `await db.read(fn, *args)` / `await db.write(fn, *args)`, where
`fn(session, *args)` is plain synchronous SQLAlchemy code (views.py). The session lives only for
that call, so a connection is held only while it is used.

Why not the usual `yield session` dependency with `def` routes: its connection stays checked out
until the response is serialized and the dependency torn down, so under load (50 clients)
requests waiting for their turn held every pooled connection and the rest timed out; and each
request made three thread-pool hops, which cost more than its queries (benchmarks/api/README.md).

- PostgreSQL: SQLAlchemy's asyncio engine over psycopg's async connection; `run_sync` runs the
  same synchronous view code, and every network wait yields to the event loop. No threads.
- SQLite: reads run right on the event loop: they are a few microseconds of local work and never
  wait on writers (WAL), so a thread would only add wake-ups. Writes can wait for the database
  lock (busy_timeout) and so run in worker threads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread
from anyio import CapacityLimiter
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from orchestrator.db.session import make_engine, make_sessionmaker, transaction

T = TypeVar("T")
#: PostgreSQL connections the API keeps open; on 2 cores more backends only compete for them
#: (4 gave the best p99 in benchmarks/api)
POOL_SIZE = 4


class Database(ABC):
    """The API's access to the database; `engine` is the (sync) engine statements go through."""

    engine: Engine

    @abstractmethod
    async def read(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(session, *args)` outside a transaction (autocommit); returns its result."""

    @abstractmethod
    async def write(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(session, *args)` in one transaction, committed on success, rolled back on error."""

    async def dispose(self) -> None:
        self.engine.dispose()


class SqliteDatabase(Database):
    def __init__(self, url: str):
        self.engine = make_engine(url)
        self._writes = make_sessionmaker(self.engine)
        self._reads = make_sessionmaker(self.engine.execution_options(isolation_level="AUTOCOMMIT"))
        # as many writer threads as pooled connections: more would make the pool open and close
        # overflow connections (re-running the SQLite pragmas each time). A file database has a QueuePool.
        pool = self.engine.pool
        self._limiter = CapacityLimiter(max(2, pool.size() if isinstance(pool, QueuePool) else 0))

    def _write_sync(self, fn: Callable[..., T], *args: object) -> T:
        with transaction(self._writes) as session:
            return fn(session, *args)

    async def read(self, fn: Callable[..., T], *args: object) -> T:
        with self._reads() as session:
            return fn(session, *args)

    async def write(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(self._write_sync, fn, *args, limiter=self._limiter)


class AsyncDatabase(Database):
    def __init__(self, url: str):
        from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

        # A fixed pool and a matching limit on concurrent sessions: past the pool size SQLAlchemy
        # would open and close overflow connections on every burst, and a new PostgreSQL
        # connection (a forked backend) costs milliseconds; waiting for a pooled one costs less.
        self._async_engine = create_async_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=0)
        self._limiter = anyio.Semaphore(POOL_SIZE)
        self.engine = self._async_engine.sync_engine
        self._writes = async_sessionmaker(self._async_engine, expire_on_commit=False)
        # reads in autocommit: no BEGIN before and no ROLLBACK after, two round trips fewer per GET
        self._reads = async_sessionmaker(
            self._async_engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
        )

    async def read(self, fn: Callable[..., T], *args: object) -> T:
        async with self._limiter, self._reads() as session:
            return await session.run_sync(fn, *args)

    async def write(self, fn: Callable[..., T], *args: object) -> T:
        async with self._limiter, self._writes() as session, session.begin():
            return await session.run_sync(fn, *args)

    async def dispose(self) -> None:
        await self._async_engine.dispose()


def open_database(url: str) -> Database:
    return SqliteDatabase(url) if url.startswith("sqlite") else AsyncDatabase(url)
