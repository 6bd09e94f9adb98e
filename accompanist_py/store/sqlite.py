"""The fault-tolerant store: the in-memory state, written ahead to SQLite by group commit.

One SQLite file per node, in WAL mode. A single writer thread owns the connection: it takes
every write queued since its last commit, applies them in one transaction and commits once, so
concurrent sessions share one sync ("group commit") and the event loop never waits on disk. Writes
are applied in the order they were issued, so awaiting one write also guarantees every earlier
write (a send awaits its outbox row, and with it the journal rows written before).

A write that fails for its data (it cannot: messages are validated before they are stored, but
a bug must not take the node down) fails only its own awaitable; a failing disk stops the
process, since memory would then be ahead of disk. Pruning runs on the writer only while no
other write waits, in small chunks, so it never lengthens a group commit on the hot path.

`synchronous=NORMAL` (the default, and what the benchmark uses) makes a commit durable against a
process crash (`kill -9`), which is the fault model of the benchmark; `FULL` also survives power
loss at the cost of an fsync per batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import NoReturn

from accompanist_py.events import Event
from accompanist_py.message import Kind, Message, decode_value
from accompanist_py.store.memory import MemoryStore, SessionRecord, SessionState, TxnRecord

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT, role TEXT, choreography TEXT, state TEXT, args BLOB, result BLOB,
    restarts INTEGER, created REAL, updated REAL, owner TEXT, PRIMARY KEY (session_id, role));
CREATE INDEX IF NOT EXISTS sessions_state ON sessions (state, updated);
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
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT, role TEXT, n INTEGER, t REAL, kind TEXT, fields TEXT,
    PRIMARY KEY (session_id, role, n));
"""
_EVENT_INSERT = "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?)"
_EVENT_SELECT = "SELECT n, t, kind, fields FROM events WHERE session_id = ? AND role = ? ORDER BY n"

_STOP = object()
_PRUNE_CHUNK = 500  # rows per pruning statement: a few milliseconds of writer time
_FINISHED = "('completed', 'compensated', 'failed')"
# Errors of one statement's data, as opposed to the disk's: they fail that write only.
_DATA_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    OverflowError,
    TypeError,
    ValueError,
)


def _prune_statements(working_cutoff: float, record_cutoff: float) -> list[tuple[str, tuple]]:
    """Chunked deletes, each repeated until it deletes less than a chunk."""
    out: list[tuple[str, tuple]] = []
    for table, role in (("inbox", "receiver"), ("journal", "role"), ("txns", "role")):
        out.append(
            (
                f"DELETE FROM {table} WHERE rowid IN (SELECT t.rowid FROM {table} t "
                f"LEFT JOIN sessions s ON s.session_id = t.session_id AND s.role = t.{role} "
                f"WHERE s.session_id IS NULL OR (s.state IN {_FINISHED} AND s.updated < ?) "
                f"LIMIT {_PRUNE_CHUNK})",
                (working_cutoff,),
            )
        )
    out.append(
        (
            "DELETE FROM outbox WHERE rowid IN (SELECT o.rowid FROM outbox o "
            "LEFT JOIN sessions s ON s.session_id = o.session_id AND s.role = o.sender "
            f"WHERE o.acked = 1 AND (s.session_id IS NULL OR (s.state IN {_FINISHED} "
            f"AND s.updated < ?)) LIMIT {_PRUNE_CHUNK})",
            (working_cutoff,),
        )
    )
    # Events go with their session's record (after record_retention_s), just before it.
    out.append(
        (
            "DELETE FROM events WHERE rowid IN (SELECT e.rowid FROM events e "
            "LEFT JOIN sessions s ON s.session_id = e.session_id AND s.role = e.role "
            f"WHERE s.session_id IS NULL OR (s.state IN {_FINISHED} AND s.updated < ?) "
            f"LIMIT {_PRUNE_CHUNK})",
            (record_cutoff,),
        )
    )
    out.append(
        (
            "DELETE FROM sessions WHERE rowid IN (SELECT s.rowid FROM sessions s "
            f"WHERE s.state IN {_FINISHED} AND s.updated < ? AND NOT EXISTS (SELECT 1 FROM "
            "outbox o WHERE o.session_id = s.session_id AND o.sender = s.role AND o.acked = 0) "
            f"LIMIT {_PRUNE_CHUNK})",
            (record_cutoff,),
        )
    )
    return out


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
        self._prune_jobs: queue.SimpleQueue = queue.SimpleQueue()  # low priority
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # commits made, for the group-commit figures in /metrics
        self.writes = 0
        self.on_commit: Callable[[int, float], None] | None = None  # (writes, seconds): /metrics

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
        """Create the schema if needed and read what the store holds into memory.

        A row that cannot be read back (written by an older version, or damaged) does not stop
        the node: its session is quarantined with the reason, and the node reports it.
        """
        conn.executescript(_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(sessions)")}
        if "owner" not in columns:  # a file from before clients were authenticated
            conn.execute("ALTER TABLE sessions ADD COLUMN owner TEXT")
        for row in conn.execute("SELECT * FROM sessions"):
            try:
                rec = SessionRecord(*row)
                if not isinstance(rec.state, str) or not isinstance(rec.created, int | float):
                    raise ValueError(f"malformed session row {row[:4]!r}")
            except (TypeError, ValueError) as exc:
                self.quarantined[(str(row[0]), str(row[1]))] = f"unreadable session row: {exc}"
                continue
            self.sessions[(rec.session_id, rec.role)] = rec
            if rec.finished:
                self._finished.append((rec.session_id, rec.role))
        self._finished = deque(sorted(self._finished, key=lambda k: self.sessions[k].updated))
        live = {k for k, r in self.sessions.items() if r.state not in SessionState.TERMINAL}

        def message(s, snd, recv, seq, chor, kind, payload, headers) -> Message:
            return Message(chor, s, snd, recv, seq, Kind(kind), payload, decode_value(headers))

        def rows(sql: str, owner: int, role: int) -> Iterator[tuple]:
            for row in conn.execute(sql):
                if (row[owner], row[role]) in live:
                    yield row

        def quarantine(key: tuple[str, str], what: str, exc: Exception) -> None:
            self.quarantined.setdefault(key, f"unreadable {what} row: {exc!r}"[:500])

        for row in rows("SELECT * FROM inbox", 0, 1):
            try:
                s, recv, snd, *rest = row  # inbox rows are keyed by receiver first
                msg = message(s, snd, recv, *rest)
            except Exception as exc:
                quarantine((row[0], row[1]), "inbox", exc)
                continue
            self._inbox.setdefault((msg.session, msg.receiver), {})[(msg.sender, msg.seq)] = msg
        for row in conn.execute("SELECT * FROM outbox WHERE acked = 0"):
            try:
                msg = message(*row[:8])
            except Exception as exc:
                quarantine((row[0], row[1]), "outbox", exc)
                continue
            self._outbox[msg.key] = msg
            self._pending[(msg.session, msg.sender)] += 1
        for s, role, step, what, value in rows("SELECT * FROM journal", 0, 1):
            self._journal.setdefault((s, role), {})[step] = (what, value)
        for row in rows("SELECT * FROM txns ORDER BY idx", 0, 1):
            self._txns.setdefault((row[0], row[1]), []).append(TxnRecord(*row))
        # A live session's timeline goes on where it stopped; a finished one's stays on disk.
        for s, role, n, t, kind, fields in rows("SELECT * FROM events ORDER BY n", 0, 1):
            try:
                event = Event(n, t, kind, json.loads(fields))
            except ValueError:
                continue  # a report, not state: an unreadable one is skipped
            self._events.setdefault((s, role), []).append(event)
        # Acked outbox rows of live sessions are needed to detect replay divergence.
        for row in rows("SELECT * FROM outbox WHERE acked = 1", 0, 1):
            try:
                msg = message(*row[:8])
            except Exception as exc:
                quarantine((row[0], row[1]), "outbox", exc)
                continue
            self._acked_history.setdefault((msg.session, msg.sender), {})[
                (msg.receiver, msg.seq)
            ] = msg

    # -- the timeline ------------------------------------------------------------------------
    def _persist_event(self, session_id: str, role: str, event: Event) -> None:
        # Queued in order like any write, but with no future: nobody may wait for an event.
        fields = json.dumps(event.fields, separators=(",", ":"))
        row = (session_id, role, event.n, event.t, event.kind, fields)
        self._queue.put((_EVENT_INSERT, row, None))

    def forget_working_state(self, session_id: str, role: str) -> None:
        # A finished session's events are read from the file when asked for, not kept here.
        super().forget_working_state(session_id, role)
        self._events.pop((session_id, role), None)

    async def read_events(self, session_id: str, role: str) -> list[Event]:
        kept = self._events.get((session_id, role))
        if kept is not None or self.session(session_id, role) is None:
            return list(kept or ())
        await self.flush()  # its last events may still be on their way to the file
        assert self._loop is not None
        return await self._loop.run_in_executor(None, self._read_events, session_id, role)

    def _read_events(self, session_id: str, role: str) -> list[Event]:
        conn = sqlite3.connect(self.path, check_same_thread=False)  # WAL: reads beside the writer
        try:
            rows = conn.execute(_EVENT_SELECT, (session_id, role)).fetchall()
        finally:
            conn.close()
        return [Event(n, t, kind, json.loads(fields)) for n, t, kind, fields in rows]

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
        pruning: list[tuple[str, tuple]] = []
        while True:
            if pruning or not self._prune_jobs.empty():
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:  # idle: one chunk of pruning, then look again
                    if not pruning:
                        pruning = list(self._prune_jobs.get_nowait())
                    self._prune_chunk(conn, pruning)
                    continue
            else:
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
            started = time.perf_counter()
            errors = self._commit(conn, batch)
            self.batches += 1
            self.writes += len(batch)
            if self.on_commit is not None:
                self.on_commit(len(batch), time.perf_counter() - started)
            futures = [f for _, _, f in batch]
            try:
                loop.call_soon_threadsafe(_resolve, futures, errors)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                break
            if stop:
                break
        conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list) -> dict[int, BaseException]:
        """Apply a batch in one transaction; returns the writes that failed, by position."""
        try:
            conn.execute("BEGIN")
            events = []  # one executemany for the batch's events: they cost a fraction then
            for sql, params, _ in batch:
                if sql is _EVENT_INSERT:
                    events.append(params)
                elif params is not None:
                    conn.execute(sql, params)
            if events:
                conn.executemany(_EVENT_INSERT, events)
            conn.execute("COMMIT")
            return {}
        except _DATA_ERRORS:
            conn.execute("ROLLBACK")
        except BaseException as exc:
            _disk_failed(exc)
        # One write's data is at fault: apply them one by one, failing only that one.
        errors: dict[int, BaseException] = {}
        for i, (sql, params, _) in enumerate(batch):
            if params is None:
                continue
            try:
                conn.execute(sql, params)
            except _DATA_ERRORS as exc:
                log.error("store write refused, the rest of its batch goes on: %s", exc)
                errors[i] = exc
            except BaseException as exc:
                _disk_failed(exc)
        return errors

    def _prune_chunk(self, conn: sqlite3.Connection, pruning: list[tuple[str, tuple]]) -> None:
        sql, params = pruning[0]
        try:
            deleted = conn.execute(sql, params).rowcount
        except BaseException as exc:
            _disk_failed(exc)
        if deleted < _PRUNE_CHUNK:
            pruning.pop(0)

    async def flush(self) -> None:
        await self._persist("SELECT 1", None)  # type: ignore[arg-type]

    def backlog(self) -> int:
        return self._queue.qsize()

    def _prune_durable(self, working_cutoff: float, record_cutoff: float) -> None:
        if self._prune_jobs.empty():  # one pass at a time is enough
            self._prune_jobs.put(_prune_statements(working_cutoff, record_cutoff))


def _disk_failed(exc: BaseException) -> NoReturn:
    # Memory is now ahead of disk: acknowledging anything more would be a lie. Die like a
    # crash; the restart recovers from what the disk really holds.
    log.critical("store write failed, stopping the process: %r", exc)
    os._exit(70)


def _resolve(futures: list[asyncio.Future | None], errors: dict[int, BaseException]) -> None:
    for i, f in enumerate(futures):
        if f is None or f.done():  # None: an event's write, which nobody awaits
            continue
        error = errors.get(i)
        if error is None:
            f.set_result(None)
        else:
            f.set_exception(RuntimeError(f"durable write failed: {error}"))
