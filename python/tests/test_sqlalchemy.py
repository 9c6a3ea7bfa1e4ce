"""The SQLAlchemy dialects against the real daemon: Core, the ORM,
transactions and savepoints, AUTOCOMMIT, the pool, and asyncio."""

import asyncio
import threading

import pytest

import nexusd

sqlalchemy = pytest.importorskip("sqlalchemy")

from sqlalchemy import (  # noqa: E402
    Column, ForeignKey, Integer, String, create_engine, inspect, select, text,
)
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Session, relationship  # noqa: E402


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id = Column(Integer, primary_key=True)
    name = Column(String(50), unique=True, nullable=False)
    posts = relationship("Post", back_populates="author")


class Post(Base):
    __tablename__ = "posts"
    id = Column(Integer, primary_key=True)
    title = Column(String(100))
    user_id = Column(ForeignKey("users.id"))
    author = relationship("User", back_populates="posts")


@pytest.fixture
def engine(daemon):
    e = create_engine(f"sqlite+nexusd://?socket={daemon.socket}")
    Base.metadata.create_all(e)
    yield e
    e.dispose()


def test_orm_round_trip_and_reflection(engine):
    with Session(engine) as s:
        ada = User(name="ada", posts=[Post(title="notes"), Post(title="engine")])
        s.add(ada)
        s.commit()
        assert ada.id == 1
    with Session(engine) as s:
        user = s.scalars(select(User).where(User.name == "ada")).one()
        assert sorted(p.title for p in user.posts) == ["engine", "notes"]
    insp = inspect(engine)
    assert set(insp.get_table_names()) >= {"users", "posts"}
    assert [c["name"] for c in insp.get_columns("users")] == ["id", "name"]
    assert insp.get_foreign_keys("posts")[0]["referred_table"] == "users"


def test_rollback_and_integrity_error(engine):
    with Session(engine) as s:
        s.add(User(name="bob"))
        s.commit()
        s.add(User(name="bob"))
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            s.commit()
        s.rollback()
        s.add(User(name="cy"))
        s.rollback()
        assert s.scalars(select(User.name).order_by(User.name)).all() == ["bob"]


def test_begin_nested_uses_real_savepoints(engine):
    with Session(engine) as s:
        s.add(User(name="outer"))
        nested = s.begin_nested()
        s.add(User(name="inner"))
        nested.rollback()
        s.add(User(name="after"))
        s.commit()
        assert s.scalars(select(User.name).order_by(User.name)).all() == ["after", "outer"]


def test_autocommit_at_engine_and_connection_level(engine, daemon):
    auto = engine.execution_options(isolation_level="AUTOCOMMIT")
    with auto.connect() as conn:
        conn.execute(text("INSERT INTO users(name) VALUES ('auto')"))
        # No commit: AUTOCOMMIT applied it already.
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM users WHERE name = 'auto'")) == 1
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("INSERT INTO users(name) VALUES ('auto2')"))
    e2 = create_engine(f"sqlite+nexusd://?socket={daemon.socket}", isolation_level="AUTOCOMMIT")
    with e2.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM users")) == 2
    e2.dispose()


def test_many_threads_never_exhaust_the_pool(engine):
    errors = []

    def work(i):
        try:
            with Session(engine) as s:
                s.add(User(name=f"t{i}"))
                s.commit()
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM users")) == 64


def test_the_url_says_what_is_wrong(daemon):
    with pytest.raises(ValueError, match="names a database file"):
        create_engine("sqlite+nexusd:///app.db").connect()


def test_async_engine_orm_and_concurrency(daemon):
    async def main():
        engine = create_async_engine(f"sqlite+nexusd_async://?socket={daemon.socket}")
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

        async def add(i):
            async with AsyncSession(engine) as s:
                s.add(User(name=f"a{i}"))
                await s.commit()

        await asyncio.gather(*(add(i) for i in range(50)))
        async with AsyncSession(engine) as s:
            names = (await s.scalars(select(User.name))).all()
            assert len(names) == 50
            nested = await s.begin_nested()
            s.add(User(name="gone"))
            await nested.rollback()
            await s.commit()
            assert await s.scalar(select(sqlalchemy.func.count()).select_from(User)) == 50
        await engine.dispose()

    asyncio.run(main())


def test_transactions_begin_immediate_by_default_and_deferred_on_request(daemon):
    """The default: a read-then-write session never conflicts, even with
    other writers committing in between. ?begin=deferred reads a snapshot,
    and its write after another's commit is a Conflict."""
    e = create_engine(f"sqlite+nexusd://?socket={daemon.socket}")
    Base.metadata.create_all(e)
    other = create_engine(f"sqlite+nexusd://?socket={daemon.socket}",
                          isolation_level="AUTOCOMMIT")
    with Session(e) as s:
        assert s.scalar(select(sqlalchemy.func.count()).select_from(User)) == 0
        done = threading.Event()

        def write_meanwhile():
            with other.connect() as conn:
                conn.execute(text("INSERT INTO users(name) VALUES ('other')"))
            done.set()

        t = threading.Thread(target=write_meanwhile)
        t.start()
        s.add(User(name="mine"))
        s.commit()
        t.join()
    assert done.is_set()
    with e.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM users")) == 2

    deferred = create_engine(f"sqlite+nexusd://?socket={daemon.socket}&begin=deferred")
    with Session(deferred) as s:
        assert s.scalar(select(sqlalchemy.func.count()).select_from(User)) == 2
        with other.connect() as conn:
            conn.execute(text("INSERT INTO users(name) VALUES ('between')"))
        s.add(User(name="late"))
        with pytest.raises(sqlalchemy.exc.OperationalError) as err:
            s.commit()
        assert isinstance(err.value.orig, nexusd.Conflict)
    with pytest.raises(ValueError, match="begin=sometimes"):
        create_engine(f"sqlite+nexusd://?socket={daemon.socket}&begin=sometimes").connect()
    for engine in (e, other, deferred):
        engine.dispose()


def test_begin_at_the_first_write_leaves_reads_to_the_readers(daemon):
    """?begin=dml begins where pysqlite does, at the first statement that
    is not a read: a session that has only read holds nothing, so another
    writer commits at once (under the default it would wait for the
    session, here in the same thread, until its time limit), and the
    session's reads see each commit. Its first write begins IMMEDIATE:
    no conflict, savepoints work, and a rollback undoes all it wrote."""
    e = create_engine(f"sqlite+nexusd://?socket={daemon.socket}&begin=dml")
    Base.metadata.create_all(e)
    other = create_engine(f"sqlite+nexusd://?socket={daemon.socket}&timeout=3",
                          isolation_level="AUTOCOMMIT")
    count = select(sqlalchemy.func.count()).select_from(User)
    with Session(e) as s:
        assert s.scalar(count) == 0
        assert s.connection().exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert not s.connection().connection.dbapi_connection.in_transaction
        with other.connect() as conn:
            conn.execute(text("INSERT INTO users(name) VALUES ('between')"))
        assert s.scalar(count) == 1
        s.add(User(name="mine"))
        s.flush()
        assert s.connection().connection.dbapi_connection.in_transaction
        nested = s.begin_nested()
        s.add(User(name="nested"))
        nested.rollback()
        s.commit()
    with Session(e) as s:
        s.add(User(name="gone"))
        s.flush()
        s.rollback()
        assert sorted(s.scalars(select(User.name))) == ["between", "mine"]
    with pytest.raises(ValueError, match="begin=sometimes is not deferred, immediate, "
                                         "exclusive or dml"):
        create_engine(f"sqlite+nexusd://?socket={daemon.socket}&begin=sometimes").connect()

    async def main():
        engine = create_async_engine(f"sqlite+nexusd_async://?socket={daemon.socket}&begin=dml")
        async with AsyncSession(engine) as s:
            assert await s.scalar(count) == 2
            with other.connect() as conn:
                conn.execute(text("INSERT INTO users(name) VALUES ('async between')"))
            s.add(User(name="async"))
            await s.commit()
            assert await s.scalar(count) == 4
        await engine.dispose()

    asyncio.run(main())
    for engine in (e, other):
        engine.dispose()


def test_a_transaction_holds_nothing_before_its_first_statement(daemon):
    """SQLAlchemy begins when a connection is first used; BEGIN IMMEDIATE
    goes out with the first statement, so a connection opened early does
    not keep the writer from another connection of the same thread."""
    e = create_engine(f"sqlite+nexusd://?socket={daemon.socket}&timeout=3")
    Base.metadata.create_all(e)
    with e.connect() as early:
        early.begin()
        with e.begin() as conn:  # would wait out the lease if early held the writer
            conn.execute(text("INSERT INTO users(name) VALUES ('second')"))
        early.execute(text("INSERT INTO users(name) VALUES ('first')"))
        early.commit()
    with e.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM users")) == 2
    e.dispose()
