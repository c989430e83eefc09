"""The install component's tables in the registry: releases installed and every switch.

`current` on disk is the truth about what runs; the ledger is the history behind it
(which release was current before, when each was verified), which `status` shows and
`rollback` uses to find the release to go back to.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

from appliance.paths import Layout
from appliance.registry import connect, ensure_schema, transaction

COMPONENT = "install"
VERSION = 1
DDL = """
CREATE TABLE IF NOT EXISTS install_releases (
    release       TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    bundle_digest TEXT NOT NULL,
    signers       TEXT NOT NULL,
    installer     TEXT NOT NULL,
    verified_at   TEXT,
    installed_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS install_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        TEXT NOT NULL,
    action    TEXT NOT NULL,
    release   TEXT NOT NULL,
    previous  TEXT,
    detail    TEXT
);
"""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def open_ledger(layout: Layout) -> sqlite3.Connection:
    conn = connect(layout)
    ensure_schema(conn, COMPONENT, VERSION, DDL)
    return conn


def record_install(layout: Layout, receipt: dict, previous: str | None) -> None:
    conn = open_ledger(layout)
    try:
        with transaction(conn):
            conn.execute(
                "INSERT OR REPLACE INTO install_releases VALUES (?,?,?,?,?,?,?,?)",
                (
                    receipt["release"],
                    receipt["name"],
                    receipt["version"],
                    receipt["bundle_digest"],
                    json.dumps(receipt["signers"]),
                    receipt["installer"],
                    receipt.get("verified_at"),
                    receipt["installed_at"],
                ),
            )
            conn.execute(
                "INSERT INTO install_events(at, action, release, previous, detail) VALUES (?,?,?,?,?)",
                (now(), "install", receipt["release"], previous, receipt["bundle_digest"]),
            )
    finally:
        conn.close()


def record_event(layout: Layout, action: str, release: str, previous: str | None, detail: str = "") -> None:
    conn = open_ledger(layout)
    try:
        with transaction(conn):
            conn.execute(
                "INSERT INTO install_events(at, action, release, previous, detail) VALUES (?,?,?,?,?)",
                (now(), action, release, previous, detail),
            )
    finally:
        conn.close()


def previous_of(layout: Layout, release: str) -> list[str]:
    """Releases that were current before `release` became current, most recent first."""
    conn = open_ledger(layout)
    try:
        rows = conn.execute(
            "SELECT previous FROM install_events WHERE release=? AND previous IS NOT NULL "
            "AND action IN ('install','rollback') ORDER BY id DESC",
            (release,),
        ).fetchall()
    finally:
        conn.close()
    return [r["previous"] for r in rows]


def events(layout: Layout, limit: int = 20) -> list[dict]:
    conn = open_ledger(layout)
    try:
        rows = conn.execute("SELECT * FROM install_events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    finally:
        conn.close()
    return [dict(r) for r in rows]


def installed(layout: Layout) -> dict[str, dict]:
    conn = open_ledger(layout)
    try:
        rows = conn.execute("SELECT * FROM install_releases").fetchall()
    finally:
        conn.close()
    return {r["release"]: dict(r) for r in rows}


def forget(layout: Layout, release: str) -> None:
    conn = open_ledger(layout)
    try:
        with transaction(conn):
            conn.execute("DELETE FROM install_releases WHERE release=?", (release,))
    finally:
        conn.close()
