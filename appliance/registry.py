"""The SQLite registry at PREFIX/registry.db: bundles, datasets, runs, adapters, promotions.

One file, one connection helper. Each component owns its tables and declares them with
`ensure_schema(conn, component, version, ddl)`, so the data, train and adapter modules
evolve their tables without touching each other's code. WAL mode and a busy timeout let
the trainer service and an operator's command share the file.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from appliance.errors import HostFileError
from appliance.paths import Layout

_META = """
CREATE TABLE IF NOT EXISTS schema_versions (
    component TEXT PRIMARY KEY,
    version   INTEGER NOT NULL
);
"""


def connect(layout: Layout | Path) -> sqlite3.Connection:
    """The registry, created on first use; a prefix that is read-only or full is one line
    naming the file (sqlite's own "unable to open database file" names nothing)."""
    path = layout.registry if isinstance(layout, Layout) else Path(layout)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise HostFileError(f"{path}: cannot open the registry: {_why(path, exc)}", path=str(path)) from None
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_META)
    except sqlite3.Error as exc:
        conn.close()
        raise HostFileError(f"{path}: cannot open the registry: {_why(path, exc)}", path=str(path)) from None
    return conn


def _why(path: Path, exc: Exception) -> str:
    """sqlite says "unable to open database file" for a read-only prefix too (WAL needs to
    write beside the file even to read): name the read-only file system when it is one."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    with contextlib.suppress(OSError):
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return f"{exc} (Read-only file system)"
    return str(exc)


def ensure_schema(conn: sqlite3.Connection, component: str, version: int, ddl: str) -> None:
    """Create a component's tables once; `ddl` must be idempotent (IF NOT EXISTS)."""
    row = conn.execute("SELECT version FROM schema_versions WHERE component=?", (component,)).fetchone()
    if row is not None and row["version"] >= version:
        return
    with transaction(conn):
        # executescript() would COMMIT the open transaction first; run statements one by one.
        for stmt in _statements(ddl):
            conn.execute(stmt)
        conn.execute(
            "INSERT INTO schema_versions(component, version) VALUES(?, ?) "
            "ON CONFLICT(component) DO UPDATE SET version=excluded.version",
            (component, version),
        )


def _statements(script: str) -> list[str]:
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT; rolled back on any exception."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def now() -> str:
    """UTC to the second, ISO 8601: every component's rows sort and compare the same way."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def who() -> str:
    """The operator behind a command: the sudo caller when there is one, for the audit trail."""
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"{user} (uid {os.getuid()})"
