"""Simulated durable storage: a node's disk that survives its crashes, and the store writing to it.

A `SimDisk` is one in-memory SQLite database owned by the simulation, kept across the crashes
and restarts of its node: it is exactly what a real node would find on disk after `kill -9`.
`SimStore` is the runtime's own `SQLiteStore` with its writer thread replaced by a simulated
group commit through the store's seams (`_load`, `_persist`): writes queue up, and after a
seeded random virtual delay a prefix of the queue is applied in ONE SQLite transaction, then
the writes' futures resolve in order. When the node crashes, every write still queued is lost
and its future never resolves, as with a real process death before the commit.

`LyingStore` is deliberately broken (it acknowledges a write before it is durable): it exists
only to prove that the invariant checker notices a store that loses acknowledged writes.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from sim_loop import Incarnation, Trace

from accompanist_py.store import SQLiteStore
from accompanist_py.store import sqlite as sqlite_store

# Errors of one statement's data, as opposed to the disk's: the real store's distinction.
_DATA_ERRORS = sqlite_store._DATA_ERRORS


class SimDisk:
    """One node's disk: an in-memory SQLite database that outlives the node's crashes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.commits = 0
        self.writes = 0
        self.lost = 0  # writes queued but not applied when their node crashed

    def close(self) -> None:
        self.conn.close()


class SimStore(SQLiteStore):
    """The runtime's SQLite store over a `SimDisk`, group-committing on virtual time.

    Its own attributes are prefixed `sim_`, so that they cannot collide with the store's.
    """

    def __init__(
        self,
        disk: SimDisk,
        owner: Incarnation,
        rng: random.Random,
        trace: Trace,
        *,
        on_write: Callable[[], None] | None = None,
        max_delay_s: float = 0.003,
    ) -> None:
        super().__init__(f"sim-{disk.name}.db")  # the path is never opened
        self.sim_disk = disk
        self.sim_owner = owner
        self._sim_rng = rng
        self._sim_trace = trace
        self._sim_on_write = on_write  # the crash injector counts writes as crash points
        self._sim_max_delay_s = max_delay_s
        self._sim_queue: list[tuple[str, tuple | None, asyncio.Future[None]]] = []
        self._sim_timer: asyncio.TimerHandle | None = None

    # -- the seams of SQLiteStore --------------------------------------------------------------
    async def open(self) -> None:
        self.sim_owner.check()
        self._loop = asyncio.get_running_loop()
        self._load(self.sim_disk.conn)  # synchronous: reading a local disk is not a crash point

    async def close(self) -> None:
        await self.flush()

    def _persist(self, sql: str, params: tuple | None) -> Awaitable[None]:  # type: ignore[override]
        if self._sim_on_write is not None:
            self._sim_on_write()  # may crash the node right here: the write is then never made
        self.sim_owner.check()
        assert self._loop is not None, "SimStore.open() was not awaited"
        fut: asyncio.Future[None] = self._loop.create_future()
        self._sim_queue.append((sql, params, fut))
        if self._sim_timer is None:
            self._sim_schedule()
        return fut

    def _persist_event(self, session_id: str, role: str, event: Any) -> None:
        # The real store queues an event's row for its writer thread with no future; here it
        # is an ordinary queued write (nobody awaits it), so a crash can lose it too.
        fields = json.dumps(event.fields, separators=(",", ":"))
        self._persist(
            sqlite_store._EVENT_INSERT, (session_id, role, event.n, event.t, event.kind, fields)
        )

    def _prune_durable(self, working_cutoff: float, record_cutoff: float) -> None:
        # The real store hands its pruning statements to its writer thread; here they are
        # ordinary queued writes (nobody awaits them), so a crash can cut them short too.
        statements = getattr(sqlite_store, "_prune_statements", None)
        if statements is None:
            super()._prune_durable(working_cutoff, record_cutoff)
            return
        for sql, params in statements(working_cutoff, record_cutoff):
            self._persist(sql, params)

    # -- the simulated writer ------------------------------------------------------------------
    def sim_pending(self) -> int:
        """Writes queued and not yet durable."""
        return len(self._sim_queue)

    def _sim_schedule(self) -> None:
        assert self._loop is not None
        delay = self._sim_rng.uniform(0.0001, self._sim_max_delay_s)
        self._sim_timer = self._loop.call_later(delay, self._sim_group_commit)

    def _sim_group_commit(self) -> None:
        self._sim_timer = None
        if not self.sim_owner.alive or not self._sim_queue:
            return
        # The real writer takes everything queued when it wakes; sometimes writes queue up
        # while it is busy and go in the next batch. Either way the order is kept.
        n = len(self._sim_queue)
        if n > 1 and self._sim_rng.random() < 0.3:
            n = self._sim_rng.randint(1, n - 1)
        batch, self._sim_queue = self._sim_queue[:n], self._sim_queue[n:]
        self._sim_apply(batch)
        if self._sim_queue:
            self._sim_schedule()

    def _sim_apply(self, batch: list[tuple[str, tuple | None, asyncio.Future[None]]]) -> None:
        conn = self.sim_disk.conn
        errors: dict[int, Exception] = {}
        conn.execute("BEGIN")
        try:
            for sql, params, _ in batch:
                if params is not None:  # None: a flush marker, only its position matters
                    conn.execute(sql, params)
            conn.execute("COMMIT")
        except _DATA_ERRORS:
            # As the real writer does: one write's data is at fault, so apply them one by
            # one and fail only that one's awaitable.
            conn.execute("ROLLBACK")
            for i, (sql, params, _) in enumerate(batch):
                if params is None:
                    continue
                try:
                    conn.execute(sql, params)
                except _DATA_ERRORS as exc:
                    errors[i] = exc
                    self._sim_trace("disk", f"{self.sim_owner} write refused: {exc}")
        self.batches += 1
        self.writes += len(batch)
        self.sim_disk.commits += 1
        self.sim_disk.writes += len(batch)
        self._sim_trace("disk", f"{self.sim_owner} commit {len(batch)}")
        for i, (_, _, fut) in enumerate(batch):
            if fut.done():  # an awaiter's cancellation cancels the future, not the write
                continue
            if i in errors:
                fut.set_exception(RuntimeError(f"durable write failed: {errors[i]}"))
            else:
                fut.set_result(None)

    def sim_crash(self) -> int:
        """The process died: writes not yet committed are gone. Returns how many."""
        lost = len(self._sim_queue)
        self._sim_queue = []
        if self._sim_timer is not None:
            self._sim_timer.cancel()
            self._sim_timer = None
        self.sim_disk.lost += lost
        return lost


class LyingStore(SimStore):
    """BROKEN ON PURPOSE: acknowledges each write at once, makes it durable only later.

    A crash then loses writes the runtime was told were durable (an acknowledged inbox row,
    a transaction marked attempted before its commit call ...). Used by the self-test that
    shows the checker catches a store that breaks its contract.
    """

    def _persist(self, sql: str, params: tuple | None) -> Awaitable[None]:  # type: ignore[override]
        super()._persist(sql, params)  # queued; its real durability is not waited for
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def _sim_schedule(self) -> None:
        # Much slower "disk": acknowledged writes stay volatile long enough for crashes to hit.
        assert self._loop is not None
        delay = self._sim_rng.uniform(0.2, 1.0)
        self._sim_timer = self._loop.call_later(delay, self._sim_group_commit)
