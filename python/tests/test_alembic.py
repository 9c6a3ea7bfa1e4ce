"""Alembic on a database served by nexusd: two revisions, up and down."""

import pytest

alembic = pytest.importorskip("alembic")

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from sqlalchemy import create_engine, inspect  # noqa: E402

FIRST = '''
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None


def upgrade():
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
    )


def downgrade():
    op.drop_table("accounts")
'''

SECOND = '''
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"


def upgrade():
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("balance", sa.Integer, server_default="0"))
    op.create_index("ix_accounts_name", "accounts", ["name"], unique=True)


def downgrade():
    op.drop_index("ix_accounts_name", "accounts")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("balance")
'''

ENV = '''
from alembic import context
from sqlalchemy import create_engine

url = context.config.get_main_option("sqlalchemy.url")
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
'''


def test_two_revisions_upgrade_and_downgrade(daemon, tmp_path):
    scripts = tmp_path / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(ENV)
    (scripts / "script.py.mako").write_text("")
    (scripts / "versions" / "0001_accounts.py").write_text(FIRST)
    (scripts / "versions" / "0002_balance.py").write_text(SECOND)
    url = f"sqlite+nexusd://?socket={daemon.socket}"
    cfg = Config()
    cfg.set_main_option("script_location", str(scripts))
    cfg.set_main_option("sqlalchemy.url", url)
    engine = create_engine(url)

    def columns():
        insp = inspect(engine)
        if "accounts" not in insp.get_table_names():
            return None
        return [c["name"] for c in insp.get_columns("accounts")]

    command.upgrade(cfg, "0001")
    assert columns() == ["id", "name"]
    command.upgrade(cfg, "head")
    assert columns() == ["id", "name", "balance"]
    assert [i["name"] for i in inspect(engine).get_indexes("accounts")] == ["ix_accounts_name"]
    command.downgrade(cfg, "0001")
    assert columns() == ["id", "name"]
    command.downgrade(cfg, "base")
    assert columns() is None
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 0
    engine.dispose()
