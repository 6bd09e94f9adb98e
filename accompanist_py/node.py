"""A node hosts one or more roles: it owns their sessions, the store, the outbox and transport.

The sidecar process wraps one node in an HTTP server; `testing.run_local` wires several nodes
over an in-memory network. The node is where messages enter (`deliver`: validate, dedup,
persist, then acknowledge), where sessions start (idempotently, by id) and where, on start,
every unfinished session is recovered by replay.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from accompanist_py import failpoints
from accompanist_py.backoff import Backoff
from accompanist_py.choreography import Registry
from accompanist_py.errors import ChoreographyError, ReplayDivergenceError
from accompanist_py.message import Control, Kind, Message, decode_value, encode_value
from accompanist_py.metrics import Gauge, NodeMetrics
from accompanist_py.outbox import Outbox
from accompanist_py.service import NoService, ServiceClient
from accompanist_py.session import RoleSession
from accompanist_py.store import MemoryStore, SessionRecord, SessionState
from accompanist_py.transport import Transport

log = logging.getLogger(__name__)


class NodeStopping(Exception):
    """The node is shutting down; the session goes on after its restart."""


@dataclass(frozen=True)
class NodeConfig:
    """Timeouts and limits of a node."""

    receive_timeout_s: float = 60.0
    backoff: Backoff = field(default_factory=Backoff)
    max_batch: int = 64
    max_inflight: int = 16
    retention_s: float = 600.0  # finished sessions' messages and journal go after this
    record_retention_s: float = 3600.0  # their records (state, result) after this
    prune_interval_s: float = 30.0
    # Final decisions are off the critical path: let them wait this long to share a request.
    decision_linger_s: float = 0.02


@dataclass
class SessionStatus:
    """What a client learns about a session."""

    session_id: str
    choreography: str
    role: str
    state: str
    result: Any
    restarts: int

    @property
    def finished(self) -> bool:
        return self.state in SessionState.TERMINAL

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "choreography": self.choreography,
            "role": self.role,
            "state": self.state,
            "result": self.result,
            "restarts": self.restarts,
        }


class Node:
    """Runs the sessions of the roles it hosts."""

    def __init__(
        self,
        name: str,
        roles: list[str],
        registry: Registry,
        transport: Transport,
        *,
        store: MemoryStore | None = None,
        service: ServiceClient | None = None,
        config: NodeConfig | None = None,
    ) -> None:
        if not roles:
            raise ChoreographyError(f"node {name!r} hosts no role")
        self.name = name
        self.roles = list(roles)
        self.registry = registry
        self.transport = transport
        self.store = store if store is not None else MemoryStore()
        self.service = service or NoService()
        self.config = config or NodeConfig()
        self.metrics = NodeMetrics()
        self.sessions: dict[tuple[str, str], RoleSession] = {}
        self.outbox = Outbox(
            transport,
            self._acked,
            self._rejected,
            backoff=self.config.backoff,
            max_batch=self.config.max_batch,
            max_inflight=self.config.max_inflight,
        )
        self._pruner: asyncio.Task[None] | None = None
        self._closed = False
        self._local: set[asyncio.Task[None]] = set()  # deliveries between roles hosted here
        self.metrics.gauges += [
            Gauge(
                "accompanist_sessions_active", "Sessions running here.", lambda: len(self.sessions)
            ),
            Gauge(
                "accompanist_outbox_pending",
                "Messages not yet acknowledged.",
                self.store.outbox_size,
            ),
        ]

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, start receiving, recover unfinished sessions, tell peers we're up."""
        await self.store.open()
        await self.transport.start(self.roles, self.deliver, self.outbox.wake)
        for msg in self.store.pending_outbox():
            if msg.receiver in self.roles:
                task = asyncio.create_task(self._deliver_here(msg))
                self._local.add(task)
                task.add_done_callback(self._local.discard)
            else:
                self.outbox.push(msg)
        for rec in self.store.unfinished():
            if rec.role not in self.roles or rec.choreography not in self.registry:
                log.error(
                    "cannot recover session %s at %s: choreography %r not loaded",
                    rec.session_id,
                    rec.role,
                    rec.choreography,
                )
                continue
            rec.restarts += 1
            self.store.save_session(rec)
            self.metrics.sessions_recovered.inc()
            self._spawn(rec)
        await self.transport.announce_ready()
        self._pruner = asyncio.create_task(self._prune_forever())

    async def close(self) -> None:
        """Stop sessions (their durable state stays for recovery) and release resources.

        Clients waiting for a session's end get `NodeStopping`: the session resumes when the
        node restarts, and a repeated start with the same id returns its outcome.
        """
        if self._closed:
            return
        self._closed = True
        if self._pruner is not None:
            self._pruner.cancel()
        sessions = list(self.sessions.values())
        tasks = [s.task for s in sessions if s.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in sessions:
            if not s.finished.done():
                s.finished.set_exception(NodeStopping(f"node {self.name!r} is stopping"))
                s.finished.exception()  # retrieved: nobody may be waiting
        await self.outbox.close()
        await self.transport.close()
        await self.service.close()
        await self.store.close()

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.prune_interval_s)
            self.store.prune(self.config.retention_s, self.config.record_retention_s)

    # -- starting sessions -------------------------------------------------------------------
    async def start_session(
        self,
        choreography: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        wait: bool = True,
    ) -> SessionStatus:
        """Start a session (or join the one with this id) at the choreography's initiator."""
        chor = self.registry.get(choreography)
        if chor.initiator not in self.roles:
            raise ChoreographyError(
                f"choreography {chor.name!r} starts at role {chor.initiator!r}, which node "
                f"{self.name!r} does not host (it hosts {', '.join(self.roles)})"
            )
        inputs = chor.bind(args or [], kwargs or {})
        sid = session_id or uuid.uuid4().hex
        rec = self.store.session(sid, chor.initiator)
        if rec is not None and rec.choreography != chor.name:
            raise ChoreographyError(
                f"session {sid!r} already exists for choreography {rec.choreography!r}"
            )
        if rec is None:
            rec = SessionRecord(sid, chor.initiator, chor.name, args=encode_value(inputs))
            # The session runs once its record is durable: a crash cannot then lose a session
            # whose messages peers have already acted on.
            written = self.store.save_session(rec)
            self.metrics.sessions_started.inc()
            self._spawn(rec, ready=written)
        running = self.sessions.get((sid, chor.initiator))
        if wait and running is not None:
            await asyncio.shield(running.finished)
        return self.status(sid, chor.initiator)

    def status(self, session_id: str, role: str | None = None) -> SessionStatus:
        """The state of a session at `role` (default: the first hosted role that knows it)."""
        for r in [role] if role else self.roles:
            rec = self.store.session(session_id, r)
            if rec is not None:
                result = decode_value(rec.result) if rec.result is not None else None
                return SessionStatus(
                    rec.session_id, rec.choreography, rec.role, rec.state, result, rec.restarts
                )
        raise KeyError(session_id)

    def _spawn(self, rec: SessionRecord, ready: Awaitable[None] | None = None) -> RoleSession:
        session = RoleSession(self, rec, self.registry.get(rec.choreography))
        self.sessions[(rec.session_id, rec.role)] = session
        session.start(ready)
        return session

    def session_ended(self, session: RoleSession, seconds: float) -> None:
        self.sessions.pop((session.session_id, session.role), None)
        state = session.record.state
        if state == SessionState.COMPLETED:
            self.metrics.sessions_completed.inc()
        elif state == SessionState.COMPENSATED:
            self.metrics.sessions_compensated.inc()
        elif state == SessionState.FAILED:
            self.metrics.sessions_failed.inc()
        if state in SessionState.TERMINAL:
            self.metrics.session_duration.observe(seconds)

    # -- messages out ------------------------------------------------------------------------
    async def post(self, msg: Message, *, check_replay: bool = True, linger_s: float = 0.0) -> None:
        """Send `msg` through the outbox, unless replay finds it was sent before.

        The message leaves while its outbox row is still being written: everything it can
        depend on is either durable already (inbox rows are acknowledged only once durable;
        `locally` results are awaited by the session before it sends) or reproduced exactly
        by replay (service results, under the same idempotency key). If the row is lost in a
        crash, replay sends the same message again and the receiver drops the duplicate.
        """
        existing, _ = self.store.put_outbox(msg)
        if existing is not None:
            if check_replay and existing.payload != msg.payload:
                raise ReplayDivergenceError(
                    f"replay of session {msg.session!r} at role {msg.sender!r} would send a "
                    f"different message #{msg.seq} to {msg.receiver!r} than before the restart: "
                    "the choreography is not deterministic (read time, randomness or external "
                    "state only inside op.locally/op.call)"
                )
            return  # already queued by recovery, or already acknowledged
        failpoints.hit("before_send")
        if msg.receiver in self.roles:
            # Both roles live here: hand it over directly, as a peer would receive it.
            task = asyncio.create_task(self._deliver_here(msg))
            self._local.add(task)
            task.add_done_callback(self._local.discard)
            return
        self.outbox.push(msg, linger_s)

    async def _deliver_here(self, msg: Message) -> None:
        refused = await self.deliver([msg])
        if refused:
            self._rejected([msg], refused[0][1])
        else:
            self._acked([msg])

    def _acked(self, batch: list[Message]) -> None:
        failpoints.hit("after_send")
        for msg in batch:
            self.store.ack_outbox(msg)
        self.metrics.messages_sent.inc(len(batch))

    def _rejected(self, batch: list[Message], reason: str) -> None:
        # Stop resending, but loudly, and fail the sessions concerned (they compensate).
        for msg in batch:
            self.store.ack_outbox(msg)
            session = self.sessions.get((msg.session, msg.sender))
            if session is not None:
                session.fail(f"{msg.receiver} refused message #{msg.seq}: {reason}")
        self.metrics.messages_rejected.inc(len(batch))

    # -- messages in -------------------------------------------------------------------------
    def validate(self, msg: Message) -> None:
        """Raise ValueError with a precise reason if this node must refuse `msg`."""
        if msg.receiver not in self.roles:
            raise ValueError(
                f"node {self.name!r} does not host role {msg.receiver!r} "
                f"(it hosts {', '.join(self.roles)})"
            )
        if msg.choreography not in self.registry:
            raise ValueError(f"unknown choreography {msg.choreography!r}")
        roles = self.registry.get(msg.choreography).roles
        if msg.sender not in roles or msg.receiver not in roles:
            raise ValueError(
                f"choreography {msg.choreography!r} has no role {msg.sender!r} or {msg.receiver!r}"
            )
        if msg.sender == msg.receiver:
            raise ValueError("a role cannot send to itself")
        if msg.seq < 0 and msg.seq not in Control.NAMES:
            raise ValueError(f"invalid sequence number {msg.seq}")
        if (msg.kind is Kind.CONTROL) != (msg.seq < 0):
            raise ValueError("control messages use control seqs, data and choices seq >= 0")

    async def deliver(self, batch: list[Message]) -> list[tuple[int, str]]:
        """Accept a batch; returns once every message in it is durable (the acknowledgement).

        Returns the messages refused for good, as (index in batch, reason): one bad message
        does not hold up the others, which may belong to other sessions.
        """
        refused: list[tuple[int, str]] = []
        durable: list[Awaitable[None]] = []
        for index, msg in enumerate(batch):
            try:
                self.validate(msg)
                self._accept(msg, durable)
            except ValueError as exc:
                refused.append((index, str(exc)))
        for written in durable:
            await written
        return refused

    def _accept(self, msg: Message, durable: list[Awaitable[None]]) -> None:
        rec = self.store.session(msg.session, msg.receiver)
        if rec is not None and rec.finished:
            # A late copy for a finished session. Acknowledge it only once what the session
            # received is durable, like any duplicate.
            self.metrics.messages_duplicate.inc()
            durable.append(self.store.flush())
            return
        new, written = self.store.put_inbox(msg)
        if not new:
            # The first copy may still be on its way to disk: the ack waits for it.
            self.metrics.messages_duplicate.inc()
            self._check_duplicate(msg)
            durable.append(self.store.flush())
            return
        self.metrics.messages_received.inc()
        durable.append(written)
        session = self.sessions.get((msg.session, msg.receiver))
        if session is not None:
            session.accept(msg)
            return
        initiator = self.registry.get(msg.choreography).initiator
        if rec is None and (
            msg.seq in (Control.DONE, Control.DECISION) or msg.receiver == initiator
        ):
            # Sessions start at their initiator only through a client's start; anything else
            # for a session unknown there is a leftover of one forgotten long ago.
            log.warning(
                "message #%d from %s for unknown session %s at %s ignored",
                msg.seq,
                msg.sender,
                msg.session,
                msg.receiver,
            )
            return
        if rec is None:
            rec = SessionRecord(msg.session, msg.receiver, msg.choreography)
            # The session's first record goes in the same batch as its first message.
            durable.append(self.store.save_session(rec))
            self.metrics.sessions_started.inc()
        self._spawn(rec)  # its constructor reads the inbox, this message included

    def _check_duplicate(self, msg: Message) -> None:
        kept = self.store.inbox_message(msg.session, msg.receiver, msg.sender, msg.seq)
        if kept is not None and kept.kind is not Kind.CONTROL and kept.payload != msg.payload:
            raise ValueError(
                f"replay divergence: {msg.sender!r} re-sent message #{msg.seq} of session "
                f"{msg.session!r} with a different payload than the one {msg.receiver!r} "
                "already received; the choreography is not deterministic"
            )

    def on_peer_ready(self, roles: list[str]) -> None:
        self.outbox.wake(roles)


async def wait_idle(nodes: list[Node], timeout_s: float = 30.0) -> None:
    """Wait until no node has a running session or an unacknowledged message."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(n.sessions or n.store.outbox_size() for n in nodes):
        if loop.time() > deadline:
            raise TimeoutError("nodes still busy")
        await asyncio.sleep(0.01)
