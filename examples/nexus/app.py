"""Nexus, rebuilt from the seed report: a FastAPI file server whose every
endpoint checks permissions, and caches each check's result in SQLite. The
cache writes are what locked the database under concurrent calls.

The database is `NEXUS_DB_URL`, a SQLAlchemy URL; nothing else differs
between backends:

    NEXUS_DB_URL=sqlite+nexusd:// uvicorn app:app --workers 4
    NEXUS_DB_URL=sqlite:///nexus.db uvicorn app:app --workers 4

`python app.py --init` creates the schema and the demo data once, before
the workers start.
"""

from __future__ import annotations

import os
import sys
import time

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import create_engine, text

engine = create_engine(os.environ.get("NEXUS_DB_URL", "sqlite+nexusd://"))
app = FastAPI(title="nexus")

TENANT = "/tenant:default"
USER = "user:admin"
SKILLS = ["docx", "pdf", "xlsx", "pptx", "internal-comms", "brand", "canvas", "slack"]
FOLDERS = ["skill", "agent", "workspace", "connector", "memory"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, parent TEXT NOT NULL, is_dir INTEGER NOT NULL,
    content TEXT, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS files_parent ON files(parent);
CREATE TABLE IF NOT EXISTS rebac_tuples (
    subject TEXT NOT NULL, relation TEXT NOT NULL, object TEXT NOT NULL,
    PRIMARY KEY (subject, relation, object));
CREATE TABLE IF NOT EXISTS rebac_check_cache (
    tenant TEXT NOT NULL, subject TEXT NOT NULL, permission TEXT NOT NULL,
    object TEXT NOT NULL, result INTEGER NOT NULL, computed_at REAL NOT NULL,
    PRIMARY KEY (tenant, subject, permission, object));
CREATE TABLE IF NOT EXISTS agents (name TEXT PRIMARY KEY, owner TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workspaces (name TEXT PRIMARY KEY, owner TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sandboxes (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at REAL NOT NULL);
"""


def init() -> None:
    with engine.begin() as db:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(text(statement))
        home = f"{TENANT}/{USER}"
        dirs = ["/", f"{TENANT}/", f"{home}/"] + [f"{home}/{f}/" for f in FOLDERS]
        for d in dirs:
            parent = d.rstrip("/").rsplit("/", 1)[0] + "/" if d != "/" else ""
            db.execute(text("INSERT OR IGNORE INTO files VALUES (:p, :parent, 1, NULL, :t)"),
                       {"p": d, "parent": parent, "t": time.time()})
        for skill in SKILLS:
            path = f"{home}/skill/{skill}/SKILL.md"
            db.execute(text("INSERT OR IGNORE INTO files VALUES (:p, :parent, 0, :c, :t)"),
                       {"p": path, "parent": f"{home}/skill/",
                        "c": f"# {skill}\n\nHow to use the {skill} skill.\n" * 20,
                        "t": time.time()})
        db.execute(text("INSERT OR IGNORE INTO rebac_tuples VALUES (:s, 'owner', :o)"),
                   {"s": USER, "o": f"{home}/"})
        for name in ("ImpersonatedUser", "UntrustedAgent", "Researcher"):
            db.execute(text("INSERT OR IGNORE INTO agents VALUES (:n, :o)"), {"n": name, "o": USER})
        db.execute(text("INSERT OR IGNORE INTO workspaces VALUES ('main', :o)"), {"o": USER})


def check(db, subject: str, permission: str, obj: str) -> bool:
    """A ReBAC check with its result cached in the database, as Nexus's
    `_cache_check_result_tenant_aware` did: a read, then a write."""
    cached = db.execute(
        text("SELECT result FROM rebac_check_cache WHERE tenant = :t AND subject = :s "
             "AND permission = :p AND object = :o AND computed_at > :fresh"),
        {"t": TENANT, "s": subject, "p": permission, "o": obj, "fresh": time.time() - 0.5},
    ).first()
    if cached is not None:
        return bool(cached[0])
    owners = db.execute(
        text("SELECT object FROM rebac_tuples WHERE subject = :s AND relation = 'owner'"),
        {"s": subject}).scalars().all()
    allowed = any(obj.startswith(prefix) for prefix in owners) or obj in ("/", f"{TENANT}/")
    db.execute(
        text("INSERT OR REPLACE INTO rebac_check_cache VALUES (:t, :s, :p, :o, :r, :now)"),
        {"t": TENANT, "s": subject, "p": permission, "o": obj, "r": int(allowed),
         "now": time.time()})
    return allowed


class PathArgs(BaseModel):
    path: str = "/"


class NameArgs(BaseModel):
    name: str


@app.get("/health")
def health() -> dict:
    with engine.connect() as db:
        db.execute(text("SELECT 1"))
    return {"status": "ok"}


@app.post("/api/nfs/list_mounts")
def list_mounts() -> dict:
    with engine.begin() as db:
        check(db, USER, "read", "/")
    return {"mounts": [{"mount_point": "/", "backend": "local"}]}


@app.post("/api/nfs/list")
def list_dir(args: PathArgs) -> dict:
    with engine.begin() as db:
        if not check(db, USER, "read", args.path):
            raise HTTPException(403, f"no read permission on {args.path}")
        rows = db.execute(text("SELECT path, is_dir FROM files WHERE parent = :p ORDER BY path"),
                          {"p": args.path}).all()
        for path, is_dir in rows:
            check(db, USER, "read", path)
    return {"entries": [{"path": p, "is_dir": bool(d)} for p, d in rows]}


@app.post("/api/nfs/list_agents")
def list_agents() -> dict:
    with engine.begin() as db:
        names = db.execute(text("SELECT name FROM agents ORDER BY name")).scalars().all()
        for name in names:
            check(db, USER, "read", f"{TENANT}/{USER}/agent/{name}")
    return {"agents": names}


@app.post("/api/nfs/rebac_list_tuples")
def rebac_list_tuples() -> dict:
    with engine.begin() as db:
        check(db, USER, "admin", f"{TENANT}/")
        rows = db.execute(text("SELECT subject, relation, object FROM rebac_tuples")).all()
    return {"tuples": [list(r) for r in rows]}


@app.post("/api/nfs/list_workspaces")
def list_workspaces() -> dict:
    with engine.begin() as db:
        names = db.execute(text("SELECT name FROM workspaces")).scalars().all()
        for name in names:
            check(db, USER, "read", f"{TENANT}/{USER}/workspace/{name}")
    return {"workspaces": names}


@app.post("/api/nfs/skills_list")
def skills_list() -> dict:
    """The call that broke Nexus: one permission check, and one cache
    write, per skill, then each SKILL.md read."""
    skills = []
    with engine.begin() as db:
        paths = db.execute(text("SELECT path, content FROM files WHERE path LIKE :p "
                                "ORDER BY path"),
                           {"p": f"{TENANT}/{USER}/skill/%/SKILL.md"}).all()
        for path, content in paths:
            if check(db, USER, "read", path):
                skills.append({"path": path, "description": content.splitlines()[0]})
    return {"skills": skills}


@app.post("/api/nfs/sandbox_get_or_create")
def sandbox_get_or_create(args: NameArgs) -> dict:
    with engine.begin() as db:
        check(db, USER, "write", f"{TENANT}/{USER}/sandbox/{args.name}")
        row = db.execute(text("SELECT name, created_at FROM sandboxes WHERE name = :n"),
                         {"n": args.name}).first()
        if row is None:
            db.execute(text("INSERT INTO sandboxes VALUES (:n, :o, :t)"),
                       {"n": args.name, "o": USER, "t": time.time()})
            return {"name": args.name, "created": True}
    return {"name": args.name, "created": False}


@app.post("/api/nfs/read")
def read(args: PathArgs) -> dict:
    with engine.begin() as db:
        if not check(db, USER, "read", args.path):
            raise HTTPException(403, f"no read permission on {args.path}")
        content = db.execute(text("SELECT content FROM files WHERE path = :p"),
                             {"p": args.path}).scalar()
    if content is None:
        raise HTTPException(404, f"{args.path} does not exist")
    return {"content": content}


if __name__ == "__main__":
    if sys.argv[1:] == ["--init"]:
        init()
    else:
        sys.exit("usage: NEXUS_DB_URL=... python app.py --init")
