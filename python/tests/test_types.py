"""Adapters and converters as sqlite3 has them: every test runs the same
statements through sqlite3 on a file and through nexusd, and expects the
same values back, so a program that relied on them moves unchanged."""

import asyncio
import datetime
import decimal
import enum
import sqlite3
import warnings

import pytest

import nexusd
import nexusd.aio

SCHEMA = ("CREATE TABLE ev(id INTEGER PRIMARY KEY, day DATE, at TIMESTAMP, "
          "amount DECIMAL(10, 2), note, r REAL)")


class Color(enum.IntEnum):
    RED = 3


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __conform__(self, protocol):
        if protocol is sqlite3.PrepareProtocol:
            return f"{self.x};{self.y}"
        return None


@pytest.fixture
def registered():
    """Adapters and converters for these tests, taken out afterwards: the
    registries are sqlite3's, shared by the whole process."""
    sqlite3.register_adapter(decimal.Decimal, str)
    nexusd.register_converter("decimal", lambda b: decimal.Decimal(b.decode()))
    nexusd.register_converter("Point", lambda b: tuple(int(v) for v in b.split(b";")))
    nexusd.register_converter("raw", lambda b: b)
    yield
    sqlite3.adapters.pop((decimal.Decimal, sqlite3.PrepareProtocol), None)
    for name in ("DECIMAL", "POINT", "RAW"):
        sqlite3.converters.pop(name, None)


def both(daemon, tmp_path, **kwargs):
    """A sqlite3 connection and a nexusd one, each with the `ev` table."""
    plain = sqlite3.connect(str(tmp_path / "plain.db"), **kwargs)
    ours = nexusd.connect(daemon.socket, **kwargs)
    for c in (plain, ours):
        c.execute(SCHEMA)
        c.commit()
    return plain, ours


ROWS = [
    (datetime.date(2026, 11, 24), datetime.datetime(2026, 11, 24, 12, 30, 1, 500),
     decimal.Decimal("12.50"), Color.RED, 1e20),
    (None, None, None, Point(2, -5), 1 / 3),
]


def fill(*conns):
    with warnings.catch_warnings():
        # Python 3.12 deprecates the default date and datetime adapters
        # (and converters); they still apply, with this warning, in both.
        warnings.simplefilter("ignore", DeprecationWarning)
        for c in conns:
            c.executemany("INSERT INTO ev(day, at, amount, note, r) VALUES (?, ?, ?, ?, ?)", ROWS)
            c.commit()


def fetch(c, sql):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cur = c.execute(sql)
        return cur.fetchall(), [d[0] for d in cur.description]


def test_parameters_are_adapted_as_sqlite3_adapts_them(daemon, tmp_path, registered):
    plain, ours = both(daemon, tmp_path)
    fill(plain, ours)
    got = fetch(ours, "SELECT day, at, amount, note, typeof(note), r FROM ev ORDER BY id")
    assert got == fetch(plain, "SELECT day, at, amount, note, typeof(note), r FROM ev ORDER BY id")
    # Adapted to text: date and datetime by sqlite3's default adapters,
    # Decimal by the one registered (then stored as a number, by the
    # column's affinity), Point by its __conform__; the IntEnum as its int.
    assert got[0][0] == ("2026-11-24", "2026-11-24 12:30:01.000500", 12.5, 3, "integer", 1e20)
    assert got[0][1][3] == "2;-5"


def test_a_value_nothing_adapts_is_refused_naming_its_type(daemon, tmp_path, registered):
    _, ours = both(daemon, tmp_path)
    with pytest.raises(nexusd.ProgrammingError, match="type 'dict' is not supported"):
        ours.execute("INSERT INTO ev(note) VALUES (?)", ({},))
    nexusd.register_adapter(dict, lambda d: object())
    try:
        with pytest.raises(nexusd.ProgrammingError,
                           match="adapter turned the 'dict' into a 'object'"):
            ours.execute("INSERT INTO ev(note) VALUES (?)", ({},))
        nexusd.register_adapter(dict, lambda d: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            ours.execute("INSERT INTO ev(note) VALUES (?)", ({},))
    finally:
        sqlite3.adapters.pop((dict, sqlite3.PrepareProtocol), None)
    ours.rollback()
    assert ours.execute("SELECT count(*) FROM ev").fetchone() == (0,)


def test_parse_decltypes_converts_by_the_declared_type(daemon, tmp_path, registered):
    """Flask's tutorial shape: a TIMESTAMP column read back as datetime."""
    plain, ours = both(daemon, tmp_path, detect_types=nexusd.PARSE_DECLTYPES)
    fill(plain, ours)
    sql = "SELECT day, at, amount, r, count(*) AS n FROM ev GROUP BY id ORDER BY id"
    got = fetch(ours, sql)
    assert got == fetch(plain, sql)
    first = got[0][0]
    assert first[:3] == (datetime.date(2026, 11, 24),
                         datetime.datetime(2026, 11, 24, 12, 30, 1, 500),
                         decimal.Decimal("12.50"))
    # NULL is never converted; an expression has no declared type.
    assert got[0][1][:3] == (None, None, None)
    assert first[4] == 1


def test_parse_decltypes_inside_a_transaction_and_on_returning(daemon, tmp_path, registered):
    plain, ours = both(daemon, tmp_path, detect_types=nexusd.PARSE_DECLTYPES)
    fill(plain, ours)
    for c in (plain, ours):
        c.execute("UPDATE ev SET note = 'seen'")  # opens a transaction
    sql = "SELECT at FROM ev WHERE day IS NOT NULL"
    assert fetch(ours, sql) == fetch(plain, sql)
    assert ours.in_transaction
    ours.commit()
    plain.commit()
    returning = ("INSERT INTO ev(day, at) VALUES ('2026-01-02', '2026-01-02 03:04:05') "
                 "RETURNING day, at")
    got = fetch(ours, returning)
    assert got == fetch(plain, returning)
    assert got[0][0] == (datetime.date(2026, 1, 2), datetime.datetime(2026, 1, 2, 3, 4, 5))


def test_parse_colnames_converts_by_the_name_and_trims_it(daemon, tmp_path, registered):
    plain, ours = both(daemon, tmp_path,
                       detect_types=nexusd.PARSE_COLNAMES | nexusd.PARSE_DECLTYPES)
    fill(plain, ours)
    sql = ('SELECT note AS "p [point]", r AS "r [raw]", id AS "i [raw]", '
           'amount AS "a [unknown]", day AS "d[date]" FROM ev ORDER BY id')
    got = fetch(ours, sql)
    assert got == fetch(plain, sql)
    rows, names = got
    # Converters get what SQLite would hand them as text: the number 1e20
    # as "1.0e+20", an integer as its digits.
    assert rows[0][1:3] == (b"1.0e+20", b"1")
    assert rows[1][0] == (2, -5)
    # An unknown name falls back to the declared type.
    assert rows[0][3] == decimal.Decimal("12.50")
    assert names == ["p", "r", "i", "a", "d"]


def test_without_detect_types_nothing_is_converted(daemon, tmp_path, registered):
    plain, ours = both(daemon, tmp_path)
    fill(plain, ours)
    sql = 'SELECT at, amount AS "a [decimal]" FROM ev ORDER BY id'
    got = fetch(ours, sql)
    assert got == fetch(plain, sql)
    assert got[1] == ["at", "a [decimal]"]


def test_detect_types_must_be_an_int(daemon):
    with pytest.raises(TypeError, match="detect_types must be an int"):
        nexusd.connect(daemon.socket, detect_types="yes")


def test_asyncio_converts_as_well(daemon, tmp_path, registered):
    _, ours = both(daemon, tmp_path)
    fill(ours)

    async def main():
        async with nexusd.aio.connect(daemon.socket,
                                      detect_types=nexusd.PARSE_DECLTYPES) as db:
            cur = await db.execute("SELECT at, amount FROM ev WHERE id = 1")
            return await cur.fetchone()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        row = asyncio.run(main())
    assert row == (datetime.datetime(2026, 11, 24, 12, 30, 1, 500), decimal.Decimal("12.50"))


def test_text_factory_as_in_sqlite3(daemon, tmp_path, registered):
    plain, ours = both(daemon, tmp_path, detect_types=nexusd.PARSE_DECLTYPES)
    fill(plain, ours)
    sql = "SELECT day, note, 'é', 1, x'00' FROM ev ORDER BY id"
    for factory in (bytes, lambda b: b.decode().upper(), str):
        plain.text_factory = ours.text_factory = factory
        got = fetch(ours, sql)
        assert got == fetch(plain, sql), factory
    plain.text_factory = ours.text_factory = bytes
    # A converted column gets its converter, not the factory.
    assert fetch(ours, sql)[0][0][:3] == (datetime.date(2026, 11, 24), 3, "é".encode())


def test_flasks_tutorial_moves_by_its_connect_line(daemon):
    """Flask's tutorial app (flaskr), its database code as written for
    sqlite3, with only sqlite3.connect(...) changed."""
    schema = """
    DROP TABLE IF EXISTS user;
    DROP TABLE IF EXISTS post;
    CREATE TABLE user (id INTEGER PRIMARY KEY AUTOINCREMENT,
                       username TEXT UNIQUE NOT NULL, password TEXT NOT NULL);
    CREATE TABLE post (id INTEGER PRIMARY KEY AUTOINCREMENT, author_id INTEGER NOT NULL,
                       created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
                       title TEXT NOT NULL, body TEXT NOT NULL,
                       FOREIGN KEY (author_id) REFERENCES user (id));
    """
    db = nexusd.connect(daemon.socket, detect_types=sqlite3.PARSE_DECLTYPES)
    db.row_factory = sqlite3.Row
    db.executescript(schema)
    db.execute("INSERT INTO user (username, password) VALUES (?, ?)", ("ada", "hash"))
    db.commit()
    with pytest.raises(db.IntegrityError):
        db.execute("INSERT INTO user (username, password) VALUES (?, ?)", ("ada", "x"))
        db.commit()
    db.rollback()
    db.execute("INSERT INTO post (title, body, author_id) VALUES (?, ?, ?)", ("t", "b", 1))
    db.commit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        post = db.execute(
            "SELECT p.id, title, body, created, author_id, username"
            " FROM post p JOIN user u ON p.author_id = u.id ORDER BY created DESC"
        ).fetchone()
    assert (post["title"], post["username"]) == ("t", "ada")
    assert isinstance(post["created"], datetime.datetime)
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs(post["created"] - now) < datetime.timedelta(minutes=5)


def test_iterdump_writes_what_sqlite3_writes(daemon, tmp_path, registered):
    plain, ours = both(daemon, tmp_path)
    fill(plain, ours)
    for c in (plain, ours):
        # quote() writes some reals differently in each SQLite version (the
        # daemon's is newer than most Pythons'): keep to one it writes alike.
        c.executescript("CREATE INDEX ev_day ON ev(day); CREATE VIEW days AS SELECT day FROM ev;"
                        "UPDATE ev SET r = 0.5;")
    dumped = list(ours.iterdump())
    assert dumped == list(plain.iterdump())
    assert any(line.startswith('INSERT INTO "ev" VALUES(1,') for line in dumped), dumped
