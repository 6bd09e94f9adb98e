"""The store's in-memory state, and the non-durable store built on it alone.

All reads a running session makes are served from memory; a durable store only adds writing
ahead. Every mutator returns an awaitable that resolves once the write is durable (at once
here), so callers choose what to wait for: an inbox row before its ack, an outbox row before
its send, an attempted transaction before its commit call; journal rows need no wait, since a
lost one only means the step is re-run under the same idempotency key.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from accompanist_py.events import Event
from accompanist_py.message import Message, encode_value


class SessionState:
    """Where a session stands at one role."""

    RUNNING = "running"  # the role's part is executing (or replaying)
    AWAITING = "awaiting"  # the role's part returned; it waits for the session's outcome
    ABORTING = "aborting"  # the session aborted; compensations are running
    COMPLETED = "completed"
    COMPENSATED = "compensated"  # aborted for a business reason, fully compensated
    FAILED = "failed"  # aborted by an error, fully compensated

    TERMINAL = frozenset({COMPLETED, COMPENSATED, FAILED})


@dataclass
class SessionRecord:
    """One session at one role."""

    session_id: str
    role: str
    choreography: str
    state: str = SessionState.RUNNING
    args: bytes | None = None  # the inputs, kept at the initiator only
    result: bytes | None = None
    restarts: int = 0
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    owner: str | None = None  # the authenticated client that started it (at the initiator)

    @property
    def finished(self) -> bool:
        return self.state in SessionState.TERMINAL


@dataclass
class TxnRecord:
    """One transaction of a saga at its role."""

    session_id: str
    role: str
    index: int
    name: str
    compensate: str
    payload: bytes
    state: str


class _Done:
    """An awaitable that is already complete: what a write costs in the non-durable mode."""

    def __await__(self):  # type: ignore[no-untyped-def]
        return
        yield


DONE: Awaitable[None] = _Done()

_Key = tuple[str, str]  # (session id, role)


class MemoryStore:
    """Non-durable store: everything is lost when the process dies ("default mode")."""

    durable = False

    def __init__(self) -> None:
        self.clock: Callable[[], float] = time.time  # the node sets its own
        self.sessions: dict[_Key, SessionRecord] = {}
        # Sessions that could not be rebuilt from what the store holds: (session, role) -> why.
        self.quarantined: dict[_Key, str] = {}
        self._finished: deque[_Key] = deque()  # in the order they finished, for pruning
        self._pending: Counter[_Key] = Counter()  # unacknowledged sends per (session, sender)
        self._inbox: dict[_Key, dict[tuple[str, int], Message]] = {}
        self._outbox: dict[tuple[str, str, str, int], Message] = {}
        self._journal: dict[_Key, dict[str, tuple[str, bytes]]] = {}
        self._txns: dict[_Key, list[TxnRecord]] = {}
        # Acknowledged sends of live sessions, loaded on restart so replay can be checked
        # against them: (session, sender) -> (receiver, seq) -> message.
        self._acked_history: dict[_Key, dict[tuple[str, int], Message]] = {}
        # The session timeline (accompanist_py.events), kept here with the record it tells of.
        self._events: dict[_Key, list[Event]] = {}

    async def open(self) -> None:
        """Prepare the store (load a durable one's contents)."""

    async def close(self) -> None:
        """Flush and release resources."""

    # -- what subclasses override to persist -------------------------------------------------
    def _persist(self, sql: str, params: tuple) -> Awaitable[None]:
        return DONE

    def _persist_event(self, session_id: str, role: str, event: Event) -> None:
        """Write an event ahead (durable stores); nobody waits for it."""

    # -- sessions ----------------------------------------------------------------------------
    def session(self, session_id: str, role: str) -> SessionRecord | None:
        return self.sessions.get((session_id, role))

    def save_session(self, rec: SessionRecord) -> Awaitable[None]:
        rec.updated = self.clock()
        key = (rec.session_id, rec.role)
        if rec.finished and (key not in self.sessions or not self.sessions[key].finished):
            self._finished.append(key)
        self.sessions[key] = rec
        return self._persist(
            "INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(session_id, role) DO "
            "UPDATE SET state=excluded.state, result=excluded.result, "
            "restarts=excluded.restarts, updated=excluded.updated",
            (
                rec.session_id,
                rec.role,
                rec.choreography,
                rec.state,
                rec.args,
                rec.result,
                rec.restarts,
                rec.created,
                rec.updated,
                rec.owner,
            ),
        )

    def unfinished(self) -> list[SessionRecord]:
        return [r for r in self.sessions.values() if not r.finished]

    def forget_working_state(self, session_id: str, role: str) -> None:
        """Drop a finished session's inbox, journal and transactions from memory.

        The durable copies stay until `prune`; the session record stays for idempotent starts.
        """
        key = (session_id, role)
        self._inbox.pop(key, None)
        self._journal.pop(key, None)
        self._txns.pop(key, None)
        self._acked_history.pop(key, None)

    # -- inbox -------------------------------------------------------------------------------
    def put_inbox(self, msg: Message) -> tuple[bool, Awaitable[None]]:
        """Record a received message; returns (False, ...) for a duplicate."""
        box = self._inbox.setdefault((msg.session, msg.receiver), {})
        if (msg.sender, msg.seq) in box:
            return False, DONE
        box[(msg.sender, msg.seq)] = msg
        return True, self._persist(
            "INSERT OR IGNORE INTO inbox VALUES (?,?,?,?,?,?,?,?)",
            (
                msg.session,
                msg.receiver,
                msg.sender,
                msg.seq,
                msg.choreography,
                msg.kind.value,
                msg.payload,
                _pack_headers(msg.headers),
            ),
        )

    def inbox_message(self, session_id: str, role: str, sender: str, seq: int) -> Message | None:
        return self._inbox.get((session_id, role), {}).get((sender, seq))

    def inbox(self, session_id: str, role: str) -> list[Message]:
        return list(self._inbox.get((session_id, role), {}).values())

    # -- outbox ------------------------------------------------------------------------------
    def put_outbox(self, msg: Message) -> tuple[Message | None, Awaitable[None]]:
        """Record a message to send; if one with the same key exists, return it instead."""
        existing = self.sent_before(msg)
        if existing is not None:
            return existing, DONE
        self._outbox[msg.key] = msg
        self._pending[(msg.session, msg.sender)] += 1
        return None, self._persist(
            "INSERT OR IGNORE INTO outbox VALUES (?,?,?,?,?,?,?,?,0)",
            (
                msg.session,
                msg.sender,
                msg.receiver,
                msg.seq,
                msg.choreography,
                msg.kind.value,
                msg.payload,
                _pack_headers(msg.headers),
            ),
        )

    def sent_before(self, msg: Message) -> Message | None:
        """The outbox row with this message's key, if the session sent it before a restart."""
        found = self._outbox.get(msg.key)
        if found is None:
            found = self._acked_history.get((msg.session, msg.sender), {}).get(
                (msg.receiver, msg.seq)
            )
        return found

    def ack_outbox(self, msg: Message) -> Awaitable[None]:
        """The receiver has the message durably: stop re-sending it."""
        if self._outbox.pop(msg.key, None) is not None:
            key = (msg.session, msg.sender)
            self._pending[key] -= 1
            if self._pending[key] <= 0:
                del self._pending[key]
        return self._persist(
            "UPDATE outbox SET acked=1 WHERE session_id=? AND sender=? AND receiver=? AND seq=?",
            msg.key,
        )

    def outbox_size(self) -> int:
        return len(self._outbox)

    def pending_outbox(self) -> list[Message]:
        return list(self._outbox.values())

    # -- journal -----------------------------------------------------------------------------
    def journal(self, session_id: str, role: str, step: str) -> tuple[str, bytes] | None:
        return self._journal.get((session_id, role), {}).get(step)

    def put_journal(
        self, session_id: str, role: str, step: str, what: str, value: bytes
    ) -> Awaitable[None]:
        self._journal.setdefault((session_id, role), {})[step] = (what, value)
        return self._persist(
            "INSERT OR REPLACE INTO journal VALUES (?,?,?,?,?)",
            (session_id, role, step, what, value),
        )

    def journal_steps(self, session_id: str, role: str) -> int:
        """How many step outcomes the journal holds (what a replay serves without running)."""
        return len(self._journal.get((session_id, role), {}))

    # -- events ------------------------------------------------------------------------------
    def event_count(self, session_id: str, role: str) -> int:
        return len(self._events.get((session_id, role), ()))

    def put_event(self, session_id: str, role: str, event: Event) -> None:
        """Append an event to a session's timeline; written in order with the other writes,
        never awaited (an event is a report, not a promise)."""
        self._events.setdefault((session_id, role), []).append(event)
        self._persist_event(session_id, role, event)

    async def read_events(self, session_id: str, role: str) -> list[Event]:
        """A session's timeline at `role`, oldest first (empty if none was recorded)."""
        return list(self._events.get((session_id, role), ()))

    # -- transactions ------------------------------------------------------------------------
    def txns(self, session_id: str, role: str) -> list[TxnRecord]:
        return list(self._txns.get((session_id, role), []))

    def save_txn(self, txn: TxnRecord) -> Awaitable[None]:
        records = self._txns.setdefault((txn.session_id, txn.role), [])
        for i, r in enumerate(records):
            if r.index == txn.index:
                records[i] = txn
                break
        else:
            records.append(txn)
        return self._persist(
            "INSERT OR REPLACE INTO txns VALUES (?,?,?,?,?,?,?)",
            (
                txn.session_id,
                txn.role,
                txn.index,
                txn.name,
                txn.compensate,
                txn.payload,
                txn.state,
            ),
        )

    # -- retention ---------------------------------------------------------------------------
    def prune(self, retention_s: float, record_retention_s: float) -> int:
        """Forget what finished sessions no longer need; returns how many records went.

        Their inbox, outbox, journal and transaction rows go after `retention_s`; their
        records (state and result) and events after `record_retention_s`, and never while one
        of their messages is unacknowledged: a record is the tombstone that makes a late
        duplicate, a repeated start or a participant's question find the session finished
        rather than revive it or presume it aborted.
        """
        now = self.clock()
        cutoff = now - record_retention_s
        pruned = 0
        for _ in range(len(self._finished)):
            key = self._finished[0]
            rec = self.sessions.get(key)
            if rec is not None and rec.finished and rec.updated >= cutoff:
                break  # the queue is in finishing order: the rest are younger
            self._finished.popleft()
            if rec is None or not rec.finished:
                continue
            if key in self._pending:
                self._finished.append(key)  # ask again next time
                continue
            del self.sessions[key]
            self.forget_working_state(*key)
            self._events.pop(key, None)
            pruned += 1
        self._prune_durable(now - retention_s, cutoff)
        return pruned

    def _prune_durable(self, working_cutoff: float, record_cutoff: float) -> None:
        """Delete durable rows of finished sessions (durable stores only), off the hot path."""

    async def flush(self) -> None:
        """Wait until every write issued so far is durable."""
        await asyncio.sleep(0)

    def backlog(self) -> int:
        """Writes issued and not yet durable (admission control keeps this bounded)."""
        return 0


def _pack_headers(headers: dict) -> bytes:
    return encode_value(headers)
