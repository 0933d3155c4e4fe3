"""The seeds' stack in the workload benchmark: FastAPI + asyncpg serving the same `GET /users` as
`examples/pg_app.rs` (same query, same JSON), run under `uvicorn --workers N` and under gunicorn with
uvicorn workers.

Each worker process opens its own asyncpg pool at start-up (lifespan), sized to its part of the
database budget: `DB_BUDGET // WEB_CONCURRENCY` connections at most (both servers read
`WEB_CONCURRENCY` as their default worker count; the benchmark sets it and passes the same count on
the command line), one at least open.

    DATABASE_URL=postgres://app:app@127.0.0.1:5432/app DB_BUDGET=20 WEB_CONCURRENCY=5 \\
        uvicorn fastapi_app:app --app-dir benches --workers 5
"""

import os
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Query

LIST_USERS = "SELECT id, name, email, created_at FROM users ORDER BY id LIMIT 20 OFFSET $1"

DATABASE_URL = os.environ["DATABASE_URL"]
WORKERS = max(1, int(os.environ.get("WEB_CONCURRENCY", "1")))
POOL_SIZE = max(1, int(os.environ.get("DB_BUDGET", "20")) // WORKERS)


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.pool = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=POOL_SIZE)
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/users")
async def list_users(offset: int = Query(0, ge=0)):
    """20 users from the `offset`th by id; FastAPI encodes `created_at` with `isoformat()`."""
    rows = await app.state.pool.fetch(LIST_USERS, offset)
    return [dict(r) for r in rows]
