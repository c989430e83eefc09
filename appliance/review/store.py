"""Review rounds in the registry: rounds, items, slots, ratings, operators, sessions, the log.

A component of its own ("review", `registry.ensure_schema`). What an operator could learn
a prompt or an answer from is stored encrypted under a key derived from the enclave data key
for this purpose alone (AES-256-GCM, appliance.crypto.aead): each item's prompt and two answers,
and each rating's comment. Which side is the new adapter (`new_is_a`) is a column the web
page never reads until the round is closed. Tokens and session ids are stored as sha256
hashes only: a copy of the database signs nobody in. The log records who did what to which
round and item, and when; never a text.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from appliance import registry
from appliance.adapters import registry as reg
from appliance.crypto.aead import decrypt_bytes, encrypt_bytes
from appliance.crypto.keys import DataKey, load_enclave_key
from appliance.paths import Layout
from appliance.review.errors import ReviewNotFound, ReviewTokenError
from appliance.review.stats import CRITERIA, Rating

PURPOSE_REVIEW = "review-answers"
SIDES = ("a", "b")
PREFERENCES = ("A", "tie", "B")

_DDL = """
CREATE TABLE IF NOT EXISTS review_rounds (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    against        TEXT NOT NULL,
    classification TEXT NOT NULL,
    source         TEXT NOT NULL,
    operators      INTEGER NOT NULL,
    per_operator   INTEGER NOT NULL,
    items          INTEGER NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    created        TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    closed         TEXT,
    closed_by      TEXT,
    result_json    TEXT
);
CREATE INDEX IF NOT EXISTS review_rounds_version ON review_rounds(name, version, id);
CREATE TABLE IF NOT EXISTS review_items (
    round_id  INTEGER NOT NULL REFERENCES review_rounds(id),
    idx       INTEGER NOT NULL,
    new_is_a  INTEGER NOT NULL,
    payload   BLOB NOT NULL,
    PRIMARY KEY (round_id, idx)
);
CREATE TABLE IF NOT EXISTS review_slots (
    round_id   INTEGER NOT NULL REFERENCES review_rounds(id),
    slot       INTEGER NOT NULL,
    operator   TEXT,
    items_json TEXT NOT NULL,
    PRIMARY KEY (round_id, slot)
);
CREATE UNIQUE INDEX IF NOT EXISTS review_slots_operator ON review_slots(round_id, operator);
CREATE TABLE IF NOT EXISTS review_ratings (
    round_id    INTEGER NOT NULL REFERENCES review_rounds(id),
    operator    TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    scores_json TEXT NOT NULL,
    preference  TEXT NOT NULL CHECK (preference IN ('A', 'tie', 'B')),
    comment     BLOB,
    at          TEXT NOT NULL,
    PRIMARY KEY (round_id, operator, idx)
);
CREATE TABLE IF NOT EXISTS review_operators (
    name          TEXT PRIMARY KEY,
    token_hash    TEXT,
    token_expires TEXT,
    token_used    TEXT,
    revoked       TEXT,
    created       TEXT NOT NULL,
    created_by    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS review_sessions (
    id_hash   TEXT PRIMARY KEY,
    operator  TEXT,
    csrf      TEXT NOT NULL,
    created   TEXT NOT NULL,
    expires   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS review_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        TEXT NOT NULL,
    who       TEXT NOT NULL,
    action    TEXT NOT NULL,
    round_id  INTEGER,
    item      INTEGER,
    detail    TEXT NOT NULL DEFAULT ''
);
"""


def connect(layout: Layout) -> sqlite3.Connection:
    """The registry with the adapters' and the review tables."""
    return connect_schema(reg.connect(layout))


def connect_schema(conn: sqlite3.Connection) -> sqlite3.Connection:
    registry.ensure_schema(conn, "review", 1, _DDL)
    return conn


def review_key(layout: Layout) -> DataKey:
    return load_enclave_key(layout).derive(PURPOSE_REVIEW)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _at(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def log(
    conn: sqlite3.Connection,
    who: str,
    action: str,
    round_id: int | None = None,
    item: int | None = None,
    detail: str = "",
) -> None:
    """One line of the audit trail: never a prompt, an answer or a comment."""
    conn.execute(
        "INSERT INTO review_log(at, who, action, round_id, item, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (registry.now(), who, action, round_id, item, detail),
    )


def events(conn: sqlite3.Connection, round_id: int | None = None) -> list[dict[str, Any]]:
    sql, args = "SELECT * FROM review_log", ()
    if round_id is not None:
        sql, args = sql + " WHERE round_id=?", (round_id,)
    return [dict(r) for r in conn.execute(sql + " ORDER BY id", args)]


# --- rounds --------------------------------------------------------------------------


def get_round(conn: sqlite3.Connection, round_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM review_rounds WHERE id=?", (round_id,)).fetchone()
    if row is None:
        raise ReviewNotFound(f"review round {round_id}: no such round (enclave review status lists them)")
    d = dict(row)
    d["result"] = json.loads(d.pop("result_json")) if d["result_json"] else None
    d["ref"] = f"{d['name']}@{d['version']}"
    return d


def rounds(
    conn: sqlite3.Connection,
    *,
    status: str | None = None,
    name: str | None = None,
    version: str | None = None,
) -> list[dict[str, Any]]:
    sql, args = "SELECT id FROM review_rounds WHERE 1=1", []
    for col, val in (("status", status), ("name", name), ("version", version)):
        if val is not None:
            sql += f" AND {col}=?"
            args.append(val)
    return [get_round(conn, r["id"]) for r in conn.execute(sql + " ORDER BY id", args)]


def latest_closed(conn: sqlite3.Connection, name: str, version: str) -> dict[str, Any] | None:
    closed = rounds(conn, status="closed", name=name, version=version)
    return closed[-1] if closed else None


def item(layout: Layout, conn: sqlite3.Connection, round_id: int, idx: int, key: DataKey | None = None):
    """(prompt, answer A, answer B) of one item, decrypted in memory."""
    row = conn.execute(
        "SELECT payload FROM review_items WHERE round_id=? AND idx=?", (round_id, idx)
    ).fetchone()
    if row is None:
        raise ReviewNotFound(f"review round {round_id}: no item {idx}")
    d = json.loads(
        decrypt_bytes(bytes(row["payload"]), key or review_key(layout), name=f"round {round_id} item")
    )
    return d["prompt"], d["a"], d["b"]


def new_sides(conn: sqlite3.Connection, round_id: int) -> dict[int, bool]:
    """item -> whether A is the new adapter. Only `stats` and closed rounds read this."""
    rows = conn.execute("SELECT idx, new_is_a FROM review_items WHERE round_id=?", (round_id,))
    return {r["idx"]: bool(r["new_is_a"]) for r in rows}


# --- slots: which items an operator rates, claimed at first visit ---------------------


def slot_of(conn: sqlite3.Connection, round_id: int, operator: str, *, claim: bool) -> list[int] | None:
    """The ordered items of `operator`'s slot in the round; with `claim`, the next free slot
    is theirs the first time they open it (None: every slot is taken)."""
    row = conn.execute(
        "SELECT items_json FROM review_slots WHERE round_id=? AND operator=?", (round_id, operator)
    ).fetchone()
    if row is not None:
        return json.loads(row["items_json"])
    if not claim:
        return None
    with registry.transaction(conn):
        free = conn.execute(
            "SELECT slot, items_json FROM review_slots WHERE round_id=? AND operator IS NULL "
            "ORDER BY slot LIMIT 1",
            (round_id,),
        ).fetchone()
        if free is None:
            return None
        conn.execute(
            "UPDATE review_slots SET operator=? WHERE round_id=? AND slot=?",
            (operator, round_id, free["slot"]),
        )
        log(conn, operator, "claim-slot", round_id, None, f"slot {free['slot']}")
    return json.loads(free["items_json"])


def rated(conn: sqlite3.Connection, round_id: int, operator: str) -> set[int]:
    rows = conn.execute(
        "SELECT idx FROM review_ratings WHERE round_id=? AND operator=?", (round_id, operator)
    )
    return {r["idx"] for r in rows}


def save_rating(
    layout: Layout,
    conn: sqlite3.Connection,
    round_id: int,
    operator: str,
    idx: int,
    scores: dict[str, dict[str, int]],
    preference: str,
    comment: str,
) -> None:
    """One operator's rating of one of their items (replacing their earlier one of it)."""
    body = encrypt_bytes(comment.encode(), review_key(layout)) if comment else None
    with registry.transaction(conn):
        conn.execute(
            "INSERT INTO review_ratings(round_id, operator, idx, scores_json, preference, comment, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(round_id, operator, idx) DO UPDATE SET "
            "scores_json=excluded.scores_json, preference=excluded.preference, comment=excluded.comment, "
            "at=excluded.at",
            (round_id, operator, idx, json.dumps(scores, sort_keys=True), preference, body, registry.now()),
        )
        log(
            conn,
            operator,
            "rate",
            round_id,
            idx,
            f"preference {preference}" + (", comment" if comment else ""),
        )


def ratings_of(conn: sqlite3.Connection, round_id: int, operator: str | None = None) -> list[dict[str, Any]]:
    sql, args = "SELECT * FROM review_ratings WHERE round_id=?", [round_id]
    if operator is not None:
        sql, args = sql + " AND operator=?", [round_id, operator]
    out = []
    for r in conn.execute(sql + " ORDER BY operator, idx", args):
        d = dict(r)
        d["scores"] = json.loads(d.pop("scores_json"))
        d["has_comment"] = d.pop("comment") is not None
        out.append(d)
    return out


def mapped(conn: sqlite3.Connection, round_id: int) -> list[Rating]:
    """The round's ratings with sides mapped back to new/old (for the statistics)."""
    sides = new_sides(conn, round_id)
    out = []
    for r in ratings_of(conn, round_id):
        new_is_a = sides[r["idx"]]
        new, old = ("a", "b") if new_is_a else ("b", "a")
        pref = {"tie": "tie", "A": "new" if new_is_a else "old", "B": "old" if new_is_a else "new"}[
            r["preference"]
        ]
        out.append(
            Rating(
                operator=r["operator"],
                item=r["idx"],
                preference=pref,
                new={c: int(r["scores"][new][c]) for c in CRITERIA},
                old={c: int(r["scores"][old][c]) for c in CRITERIA},
            )
        )
    return out


# --- operators and their one-time tokens ----------------------------------------------


def invite(conn: sqlite3.Connection, name: str, hours: float, by: str) -> tuple[str, str]:
    """A fresh one-time sign-in token for `name` (returned once, stored as its sha256), valid
    for `hours`; inviting again replaces any earlier token and lifts a revocation."""
    token = secrets.token_urlsafe(32)
    expires = (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0).isoformat()
    with registry.transaction(conn):
        conn.execute(
            "INSERT INTO review_operators(name, token_hash, token_expires, token_used, revoked, created, "
            "created_by) VALUES (?, ?, ?, NULL, NULL, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "token_hash=excluded.token_hash, token_expires=excluded.token_expires, token_used=NULL, "
            "revoked=NULL",
            (name, _hash(token), expires, registry.now(), by),
        )
        log(conn, by, "invite", None, None, f"operator {name}, token expires {expires}")
    return token, expires


def revoke(conn: sqlite3.Connection, name: str, by: str) -> None:
    """The operator's token and every session of theirs stop working now."""
    with registry.transaction(conn):
        cur = conn.execute(
            "UPDATE review_operators SET revoked=?, token_hash=NULL WHERE name=?", (registry.now(), name)
        )
        if cur.rowcount == 0:
            raise ReviewNotFound(f"operator {name!r}: never invited (enclave review invite {name})")
        conn.execute("DELETE FROM review_sessions WHERE operator=?", (name,))
        log(conn, by, "revoke", None, None, f"operator {name}")


def operators(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT name, token_expires, token_used, revoked, created, created_by FROM review_operators"
    )
    return [dict(r) for r in rows]


def redeem(conn: sqlite3.Connection, token: str, *, client: str) -> str:
    """The operator a token belongs to, consuming it: it signs in once, before it expires,
    unless revoked. Every refusal is logged with the client address, never the token."""
    h = _hash(token.strip())
    with registry.transaction(conn):
        row = conn.execute("SELECT * FROM review_operators WHERE token_hash=?", (h,)).fetchone()
        why = None
        if row is None:
            why = "unknown token"
        elif row["revoked"]:
            why = f"operator {row['name']}: revoked"
        elif row["token_used"]:
            why = f"operator {row['name']}: token already used at {row['token_used']}"
        elif _at(row["token_expires"]) <= datetime.now(UTC):
            why = f"operator {row['name']}: token expired at {row['token_expires']}"
        if why is not None:
            log(conn, row["name"] if row else "-", "sign-in refused", None, None, f"{why} (from {client})")
        else:
            conn.execute(
                "UPDATE review_operators SET token_used=? WHERE name=?", (registry.now(), row["name"])
            )
            log(conn, row["name"], "sign-in", None, None, f"from {client}")
    if why is not None:
        raise ReviewTokenError(why)
    return row["name"]


def signin_wait(conn: sqlite3.Connection, client: str, *, failures: int, window: timedelta) -> int:
    """Seconds `client` must wait before its next sign-in counts, or 0: it has `failures`
    refused sign-ins within `window` (read from the audit log, so the count holds across
    restarts of the server and across its workers)."""
    suffix = f"(from {client})"
    since = (datetime.now(UTC) - window).replace(microsecond=0).isoformat()
    rows = conn.execute(
        "SELECT at FROM review_log WHERE action='sign-in refused' AND at >= ? "
        "AND substr(detail, -?) = ? ORDER BY at DESC LIMIT ?",
        (since, len(suffix), suffix, failures),
    ).fetchall()
    if len(rows) < failures:
        return 0
    free_at = _at(rows[-1]["at"]) + window
    return max(1, int((free_at - datetime.now(UTC)).total_seconds() + 0.999))


# --- sessions: a random id in the cookie, its hash and state here ----------------------


def new_session(conn: sqlite3.Connection, operator: str | None, hours: float) -> tuple[str, str]:
    """(session id for the cookie, CSRF token for its forms)."""
    sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires = (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0).isoformat()
    with registry.transaction(conn):
        conn.execute("DELETE FROM review_sessions WHERE expires < ?", (registry.now(),))
        conn.execute(
            "INSERT INTO review_sessions(id_hash, operator, csrf, created, expires) VALUES (?, ?, ?, ?, ?)",
            (_hash(sid), operator, csrf, registry.now(), expires),
        )
    return sid, csrf


def session(conn: sqlite3.Connection, sid: str | None) -> dict[str, Any] | None:
    if not sid:
        return None
    row = conn.execute("SELECT * FROM review_sessions WHERE id_hash=?", (_hash(sid),)).fetchone()
    if row is None or _at(row["expires"]) <= datetime.now(UTC):
        return None
    if row["operator"] is not None:
        op = conn.execute("SELECT revoked FROM review_operators WHERE name=?", (row["operator"],)).fetchone()
        if op is None or op["revoked"]:
            return None
    return dict(row)


def end_session(conn: sqlite3.Connection, sid: str) -> None:
    conn.execute("DELETE FROM review_sessions WHERE id_hash=?", (_hash(sid),))
