"""A tiny idempotent service for the runtime's process tests, honouring docs/contracts.md.

`python tiny_service.py --port P --db FILE` serves `POST /ops/{operation}` with the header
`Idempotency-Key`. Every operation records its effect under its key in the same SQLite
transaction as the dedup row, so a repeated key returns the stored answer and the process
survives its own `kill -9`. An operation named `undo_<op>` is a compensation: it undoes the
commit whose key is in the body's `commit_key`, or, if that commit never happened, leaves a
tombstone that makes the late commit answer 409 `{"error": "compensated"}` and apply nothing.
The payload drives the answer: `{"abort": true}` is a 409 business abort, `{"bad": true}` a 400.
`GET /effects` lists every applied effect, so tests can count them per key.

Some operations misbehave until the marker file `<db>.healed` exists (see `SICK`), and then
behave like any other: `undo_fragile` answers a malformed 200 (a JSON content type, a body
that is not JSON), `undo_picky` a 400, and `stall` a 503, all without recording anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup (key TEXT PRIMARY KEY, status INTEGER, body TEXT);
CREATE TABLE IF NOT EXISTS effects (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, operation TEXT, kind TEXT,
    commit_key TEXT, payload TEXT);
CREATE TABLE IF NOT EXISTS tombstones (commit_key TEXT PRIMARY KEY);
"""

UNDO_PREFIX = "undo_"
DB = web.AppKey("db", sqlite3.Connection)
HEALED = web.AppKey("healed", Path)  # once this file exists, the SICK operations behave


def _malformed_200() -> web.Response:
    return web.Response(status=200, text='{"compensated": tru', content_type="application/json")


SICK: dict[str, Callable[[], web.Response]] = {
    "undo_fragile": _malformed_200,
    "undo_picky": lambda: web.json_response({"error": "picky: not today"}, status=400),
    "stall": lambda: web.json_response({"error": "stalled"}, status=503),
}


def _answer(conn: sqlite3.Connection, key: str, operation: str, payload: Any) -> tuple[int, Any]:
    """Apply `operation` once under `key`; the caller holds the write transaction."""
    row = conn.execute("SELECT status, body FROM dedup WHERE key = ?", (key,)).fetchone()
    if row is not None:
        return row[0], json.loads(row[1])
    status, body = _apply(conn, key, operation, payload)
    conn.execute("INSERT INTO dedup VALUES (?, ?, ?)", (key, status, json.dumps(body)))
    return status, body


def _apply(conn: sqlite3.Connection, key: str, operation: str, payload: Any) -> tuple[int, Any]:
    text = json.dumps(payload, sort_keys=True)
    if operation.startswith(UNDO_PREFIX):
        commit_key = payload.get("commit_key") if isinstance(payload, dict) else None
        if not isinstance(commit_key, str):
            return 400, {"error": "a compensation needs 'commit_key'"}
        applied = conn.execute(
            "SELECT 1 FROM effects WHERE key = ? AND kind = 'commit'", (commit_key,)
        ).fetchone()
        if applied is None:
            conn.execute("INSERT OR IGNORE INTO tombstones VALUES (?)", (commit_key,))
            return 200, {"compensated": False}
        conn.execute(
            "INSERT INTO effects (key, operation, kind, commit_key, payload) "
            "VALUES (?, ?, 'undo', ?, ?)",
            (key, operation, commit_key, text),
        )
        return 200, {"compensated": True}
    if conn.execute("SELECT 1 FROM tombstones WHERE commit_key = ?", (key,)).fetchone():
        return 409, {"error": "compensated"}
    if isinstance(payload, dict) and payload.get("bad"):
        return 400, {"error": "bad request (asked for by the payload)"}
    if isinstance(payload, dict) and payload.get("abort"):
        return 409, {"error": f"{operation} declined"}
    conn.execute(
        "INSERT INTO effects (key, operation, kind, commit_key, payload) "
        "VALUES (?, ?, 'commit', NULL, ?)",
        (key, operation, text),
    )
    return 200, {"operation": operation, "key": key, "echo": payload}


async def operate(request: web.Request) -> web.Response:
    key = request.headers.get("Idempotency-Key")
    if not key:
        return web.json_response({"error": "missing Idempotency-Key"}, status=400)
    try:
        payload = await request.json()
    except json.JSONDecodeError:
        return web.json_response({"error": "body is not JSON"}, status=400)
    sick = SICK.get(request.match_info["operation"])
    if sick is not None and not request.app[HEALED].exists():
        return sick()
    conn = request.app[DB]
    conn.execute("BEGIN IMMEDIATE")
    try:
        status, body = _answer(conn, key, request.match_info["operation"], payload)
        # A 400 is not an outcome worth remembering: the contract says nothing was recorded.
        if status == 400:
            conn.execute("ROLLBACK")
        else:
            conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return web.json_response(body, status=status)


async def effects(request: web.Request) -> web.Response:
    rows = (
        request.app[DB]
        .execute("SELECT key, operation, kind, commit_key, payload FROM effects ORDER BY id")
        .fetchall()
    )
    tombs = request.app[DB].execute("SELECT commit_key FROM tombstones").fetchall()
    return web.json_response(
        {
            "effects": [
                {"key": k, "operation": o, "kind": kind, "commit_key": ck, "payload": json.loads(p)}
                for k, o, kind, ck, p in rows
            ],
            "tombstones": [t for (t,) in tombs],
        }
    )


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(db_path: str) -> web.Application:
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    app = web.Application()
    app[DB] = conn
    app[HEALED] = Path(f"{db_path}.healed")
    app.router.add_post("/ops/{operation}", operate)
    app.router.add_get("/effects", effects)
    app.router.add_get("/health", health)
    return app


async def serve(port: int, db_path: str) -> None:
    runner = web.AppRunner(make_app(db_path), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.db))


if __name__ == "__main__":
    main()
