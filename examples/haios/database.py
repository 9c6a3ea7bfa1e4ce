"""HAIOS's DatabaseManager, reduced to what matters: one connection per
process, opened the one way that differs between backends."""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS concepts (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, content TEXT NOT NULL,
    embedding BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY, session TEXT NOT NULL, content TEXT NOT NULL,
    created_at REAL NOT NULL);
"""


def connect(target: str):
    """`nexusd:SOCKET` or `sqlite:FILE`: the only line that changes."""
    kind, _, where = target.partition(":")
    if kind == "nexusd":
        import nexusd

        conn = nexusd.connect(where)
    elif kind == "sqlite":
        import sqlite3

        conn = sqlite3.connect(where)
    else:
        raise ValueError(f"target {target!r} is not nexusd:SOCKET or sqlite:FILE")
    # As HAIOS had it. The daemon is in WAL mode already and answers "wal",
    # so the line stays for both.
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def init(target: str) -> None:
    conn = connect(target)
    conn.executescript(SCHEMA)
    conn.commit()
    conn.close()
