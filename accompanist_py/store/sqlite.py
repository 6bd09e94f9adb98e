"""The fault-tolerant store: the in-memory state, written ahead to SQLite by group commit.

One SQLite file per node, in WAL mode. A single writer thread owns the connection: it takes
every write queued since its last commit, applies them in one transaction and commits once, so
concurrent sessions share one sync ("group commit") and the event loop never waits on disk. Writes
are applied in the order they were issued, so awaiting one write also guarantees every earlier
write (a send awaits its outbox row, and with it the journal rows written before).

`synchronous=NORMAL` (the default, and what the benchmark uses) makes a commit durable against a
process crash (`kill -9`), which is the fault model of the benchmark; `FULL` also survives power
loss at the cost of an fsync per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Awaitable
from pathlib import Path

from accompanist_py.message import Kind, Message, decode_value
from accompanist_py.store.memory import MemoryStore, SessionRecord, SessionState, TxnRecord

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT, role TEXT, choreography TEXT, state TEXT, args BLOB, result BLOB,
    restarts INTEGER, created REAL, updated REAL, PRIMARY KEY (session_id, role));
CREATE INDEX IF NOT EXISTS sessions_state ON sessions (state);
CREATE TABLE IF NOT EXISTS inbox (
    session_id TEXT, receiver TEXT, sender TEXT, seq INTEGER, choreography TEXT, kind TEXT,
    payload BLOB, headers BLOB, PRIMARY KEY (session_id, receiver, sender, seq));
CREATE TABLE IF NOT EXISTS outbox (
    session_id TEXT, sender TEXT, receiver TEXT, seq INTEGER, choreography TEXT, kind TEXT,
    payload BLOB, headers BLOB, acked INTEGER, PRIMARY KEY (session_id, sender, receiver, seq));
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (acked) WHERE acked = 0;
CREATE TABLE IF NOT EXISTS journal (
    session_id TEXT, role TEXT, step TEXT, what TEXT, value BLOB,
    PRIMARY KEY (session_id, role, step));
CREATE TABLE IF NOT EXISTS txns (
    session_id TEXT, role TEXT, idx INTEGER, name TEXT, compensate TEXT, payload BLOB,
    state TEXT, PRIMARY KEY (session_id, role, idx));
"""

_STOP = object()


class SQLiteStore(MemoryStore):
    """Durable store in one SQLite file; survives `kill -9` (and power loss with FULL)."""

    durable = True

    def __init__(self, path: str | Path, synchronous: str = "NORMAL") -> None:
        super().__init__()
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # commits made, for the group-commit figures in /metrics
        self.writes = 0

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._loop.run_in_executor(None, self._load_file)
        self._thread = threading.Thread(target=self._writer, name="store-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is None:
            return
        await self.flush()
        self._queue.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None

    # -- loading on start --------------------------------------------------------------------
    def _load_file(self) -> None:
        conn = self._connect()
        try:
            self._load(conn)
        finally:
            conn.close()

    def _load(self, conn: sqlite3.Connection) -> None:
        """Create the schema if needed and read what the store holds into memory."""
        conn.executescript(_SCHEMA)
        for row in conn.execute("SELECT * FROM sessions"):
            rec = SessionRecord(*row)
            self.sessions[(rec.session_id, rec.role)] = rec
        live = {k for k, r in self.sessions.items() if r.state not in SessionState.TERMINAL}
        for s, recv, snd, seq, chor, kind, payload, headers in conn.execute(
            "SELECT * FROM inbox"
        ):
            if (s, recv) in live:
                msg = Message(
                    chor, s, snd, recv, seq, Kind(kind), payload, decode_value(headers)
                )
                self._inbox.setdefault((s, recv), {})[(snd, seq)] = msg
        for s, snd, recv, seq, chor, kind, payload, headers, _ in conn.execute(
            "SELECT * FROM outbox WHERE acked = 0"
        ):
            msg = Message(chor, s, snd, recv, seq, Kind(kind), payload, decode_value(headers))
            self._outbox[msg.key] = msg
        for s, role, step, what, value in conn.execute("SELECT * FROM journal"):
            if (s, role) in live:
                self._journal.setdefault((s, role), {})[step] = (what, value)
        for row in conn.execute("SELECT * FROM txns ORDER BY idx"):
            if (row[0], row[1]) in live:
                self._txns.setdefault((row[0], row[1]), []).append(TxnRecord(*row))
        # Acked outbox rows of live sessions are needed to detect replay divergence.
        for s, snd, recv, seq, chor, kind, payload, headers, _ in conn.execute(
            "SELECT * FROM outbox WHERE acked = 1"
        ):
            if (s, snd) in live:
                msg = Message(
                    chor, s, snd, recv, seq, Kind(kind), payload, decode_value(headers)
                )
                self._acked_history.setdefault((s, snd), {})[(recv, seq)] = msg

    # -- writing -----------------------------------------------------------------------------
    def _persist(self, sql: str, params: tuple) -> Awaitable[None]:
        assert self._loop is not None, "SQLiteStore.open() was not awaited"
        fut = self._loop.create_future()
        self._queue.put((sql, params, fut))
        return fut

    def _writer(self) -> None:
        conn = self._connect()
        loop = self._loop
        assert loop is not None
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            stop = False
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            error: BaseException | None = None
            try:
                conn.execute("BEGIN")
                for sql, params, _ in batch:
                    if params is not None:
                        conn.execute(sql, params)
                conn.execute("COMMIT")
            except BaseException as exc:
                # Memory is now ahead of disk: acknowledging anything more would be a lie.
                # Die like a crash; the restart recovers from what the disk really holds.
                log.critical("store write failed, stopping the process: %s", exc)
                os._exit(70)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self.batches += 1
            self.writes += len(batch)
            futures = [f for _, _, f in batch]
            try:
                loop.call_soon_threadsafe(_resolve, futures, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                break
            if stop:
                break
        conn.close()

    async def flush(self) -> None:
        await self._persist("SELECT 1", None)  # type: ignore[arg-type]

    def _prune_durable(self, working_cutoff: float, record_cutoff: float) -> None:
        finished = (
            "SELECT session_id, role FROM sessions WHERE updated < ? "
            "AND state IN ('completed', 'compensated', 'failed')"
        )
        for table, role in (("inbox", "receiver"), ("journal", "role"), ("txns", "role")):
            self._persist(
                f"DELETE FROM {table} WHERE (session_id, {role}) IN ({finished})",
                (working_cutoff,),
            )
        self._persist(
            f"DELETE FROM outbox WHERE acked = 1 AND (session_id, sender) IN ({finished})",
            (working_cutoff,),
        )
        self._persist(
            "DELETE FROM sessions WHERE updated < ? "
            "AND state IN ('completed', 'compensated', 'failed')",
            (record_cutoff,),
        )


def _resolve(futures: list[asyncio.Future], error: BaseException | None) -> None:
    for f in futures:
        if not f.done():
            if error is None:
                f.set_result(None)
            else:
                f.set_exception(RuntimeError(f"durable write failed: {error}"))
