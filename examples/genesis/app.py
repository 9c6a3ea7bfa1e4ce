"""Genesis's chat service, rebuilt from the seed report: an async FastAPI
app on SQLAlchemy's asyncio engine. Every POST /api/chat makes sure the
default conversation exists (check, then insert, inside the request's
transaction), stores the user's message, reads the context, and stores the
reply. No pool tuning and no retry code: the report's fixes are not here.

    GENESIS_DB_URL=sqlite+nexusd_async:// uvicorn app:app
    GENESIS_DB_URL=sqlite+aiosqlite:///genesis.db uvicorn app:app
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid

from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(os.environ.get("GENESIS_DB_URL", "sqlite+nexusd_async://"))

DEFAULT = "default"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    async with engine.begin() as db:
        await db.execute(text(
            "CREATE TABLE IF NOT EXISTS conversations (id TEXT PRIMARY KEY, "
            "title TEXT NOT NULL, is_default INTEGER NOT NULL, created_at REAL NOT NULL)"))
        await db.execute(text(
            "CREATE TABLE IF NOT EXISTS messages (id TEXT PRIMARY KEY, "
            "conversation_id TEXT NOT NULL REFERENCES conversations(id), "
            "role TEXT NOT NULL, content TEXT NOT NULL, created_at REAL NOT NULL)"))
    yield
    await engine.dispose()


app = FastAPI(title="genesis", lifespan=lifespan)


class Chat(BaseModel):
    message: str


async def ensure_default_conversation(db) -> str:
    """The report's race: check, then insert."""
    found = (await db.execute(text("SELECT id FROM conversations WHERE id = :id"),
                              {"id": DEFAULT})).first()
    if found is None:
        await db.execute(text("INSERT INTO conversations VALUES (:id, 'Default', 1, :t)"),
                         {"id": DEFAULT, "t": time.time()})
    return DEFAULT


async def add_message(db, conversation: str, role: str, content: str) -> None:
    await db.execute(text("INSERT INTO messages VALUES (:id, :c, :r, :m, :t)"),
                     {"id": str(uuid.uuid4()), "c": conversation, "r": role, "m": content,
                      "t": time.time()})


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.post("/api/chat")
async def chat(body: Chat) -> dict:
    async with engine.begin() as db:
        conversation = await ensure_default_conversation(db)
        await add_message(db, conversation, "user", body.message)
        context = (await db.execute(
            text("SELECT role, content FROM messages WHERE conversation_id = :c "
                 "ORDER BY created_at DESC LIMIT 20"), {"c": conversation})).all()
        reply = f"({len(context)} messages in context) you said: {body.message}"
        await add_message(db, conversation, "assistant", reply)
    return {"conversation": conversation, "reply": reply}


@app.get("/api/conversations")
async def conversations() -> dict:
    async with engine.connect() as db:
        rows = (await db.execute(text(
            "SELECT id, is_default, (SELECT count(*) FROM messages m "
            "WHERE m.conversation_id = c.id) FROM conversations c"))).all()
    return {"conversations": [{"id": i, "is_default": bool(d), "messages": n}
                              for i, d, n in rows]}
