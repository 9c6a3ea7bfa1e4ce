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

        return nexusd.connect(where)
    if kind == "sqlite":
        import sqlite3

        conn = sqlite3.connect(where)
        conn.execute("PRAGMA journal_mode=WAL")  # as HAIOS had it
        return conn
    raise ValueError(f"target {target!r} is not nexusd:SOCKET or sqlite:FILE")


def init(target: str) -> None:
    conn = connect(target)
    conn.executescript(SCHEMA)
    conn.commit()
    conn.close()
