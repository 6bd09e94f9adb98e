"""A node hosts one or more roles: it owns their sessions, the store, the outbox and transport.

The sidecar process wraps one node in an HTTP server; `testing.run_local` wires several nodes
over an in-memory network. The node is where messages enter (`deliver`: validate everything,
then dedup, persist, and acknowledge once durable), where sessions start (idempotently, by id,
acknowledged once their record is durable) and where, on start, every unfinished session is
recovered by replay. It also answers for sessions that no longer run here: a participant asking
a finished initiator hears its decision; one asking an initiator that never knew the session
hears "presumed abort"; nothing is stored for either.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from accompanist_py import events, failpoints
from accompanist_py.backoff import Backoff
from accompanist_py.choreography import Registry
from accompanist_py.errors import ChoreographyError, Overloaded, ReplayDivergenceError
from accompanist_py.events import Event, Timeline
from accompanist_py.message import (
    Control,
    Kind,
    Message,
    check_shape,
    control_body,
    decode_value,
    encode_value,
)
from accompanist_py.metrics import NodeMetrics, Reading
from accompanist_py.outbox import Outbox
from accompanist_py.service import NoService, ServiceClient
from accompanist_py.session import RoleSession
from accompanist_py.session.outcome import PRESUMED_ABORT, Decision
from accompanist_py.store import MemoryStore, SessionRecord, SessionState, Store
from accompanist_py.transport import Transport

log = logging.getLogger(__name__)


class NodeStopping(Exception):
    """The node is shutting down; the session goes on after its restart."""


@dataclass(frozen=True)
class NodeConfig:
    """Timeouts and limits of a node."""

    receive_timeout_s: float = 60.0
    # The initiator aborts a session not decided this long after it started; a participant
    # waiting for the decision asks the initiator again this often.
    decision_timeout_s: float = 300.0
    query_interval_s: float = 2.0
    client_wait_s: float = 330.0  # a client's start with wait=true answers 202 after this
    backoff: Backoff = field(default_factory=Backoff)
    max_batch: int = 64
    max_inflight: int = 16
    max_payload_bytes: int = 1024 * 1024
    # Admission control: over any of these, new sessions are refused for now (503, or a
    # retryable refusal to a peer) while the sessions already running go on and drain them.
    max_batch_received: int = 1024  # messages in one incoming batch
    max_sessions: int = 10_000  # running at once on this node
    max_store_backlog: int = 100_000  # writes queued for the store
    max_outbox_per_peer: int = 100_000  # messages waiting for one receiving role
    retention_s: float = 600.0  # finished sessions' messages and journal go after this
    record_retention_s: float = 3600.0  # their records (state, result) after this
    prune_interval_s: float = 30.0
    # Final decisions are off the critical path: let them wait this long to share a request.
    decision_linger_s: float = 0.02
    # The session timeline (accompanist_py.events): on or off, and its bound per session
    # and role (past it, one `truncated` event and no more).
    events_enabled: bool = True
    max_events_per_session: int = events.DEFAULT_LIMIT

    def __post_init__(self) -> None:
        if self.retention_s > self.record_retention_s:
            raise ValueError(
                f"retention_s ({self.retention_s:g}) must not exceed record_retention_s "
                f"({self.record_retention_s:g}): a session's record is its tombstone and must "
                "outlive its messages"
            )
        if 2 * self.decision_timeout_s > self.record_retention_s:
            raise ValueError(
                f"record_retention_s ({self.record_retention_s:g}) must be at least twice "
                f"decision_timeout_s ({self.decision_timeout_s:g}): a participant refuses to "
                "start a session older than half the record retention"
            )
        if min(self.receive_timeout_s, self.decision_timeout_s, self.query_interval_s) <= 0:
            raise ValueError("timeouts must be positive")
        limits = (
            self.max_payload_bytes,
            self.max_batch_received,
            self.max_sessions,
            self.max_store_backlog,
            self.max_outbox_per_peer,
            self.max_events_per_session,
        )
        if min(limits) <= 0:
            raise ValueError("limits must be positive")


@dataclass
class SessionStatus:
    """What a client learns about a session."""

    session_id: str
    choreography: str
    role: str
    state: str
    result: Any
    restarts: int
    stuck: dict[str, Any] | None = None  # a compensation that keeps failing

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
            "stuck": self.stuck,
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
        store: Store | None = None,
        service: ServiceClient | None = None,
        config: NodeConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not roles:
            raise ChoreographyError(f"node {name!r} hosts no role")
        self.name = name
        self.roles = list(roles)
        self.registry = registry
        self.transport = transport
        self.store: Store = store if store is not None else MemoryStore()
        self.store.clock = clock
        self.clock = clock  # wall time: session deadlines and ages outlive restarts
        self.service = service or NoService()
        self.config = config or NodeConfig()
        self.metrics = NodeMetrics(self.roles)
        self.events = Timeline(
            self.store,
            clock,
            enabled=self.config.events_enabled,
            limit=self.config.max_events_per_session,
        )
        self.sessions: dict[tuple[str, str], RoleSession] = {}
        self.outbox = Outbox(
            transport,
            self._acked,
            self._rejected,
            backoff=self.config.backoff,
            max_batch=self.config.max_batch,
            max_inflight=self.config.max_inflight,
        )
        self.closing = False
        self._pruner: asyncio.Task[None] | None = None
        self._local: set[asyncio.Task[None]] = set()  # deliveries between roles hosted here
        self._unstored: set[tuple[str, str, str, int]] = set()  # answers and queries in flight
        self._export_readings()

    def _export_readings(self) -> None:
        """The figures kept elsewhere than in counters, read when /metrics is scraped."""
        m = self.metrics

        def per_role(count: Callable[[RoleSession], bool]) -> Callable[[], dict[str, float]]:
            def read() -> dict[str, float]:
                out = dict.fromkeys(self.roles, 0.0)
                for (_, role), session in list(self.sessions.items()):
                    if count(session):
                        out[role] = out.get(role, 0.0) + 1
                return out

            return read

        m.add(
            Reading(
                "accompanist_sessions_active",
                "Sessions running here.",
                per_role(lambda s: True),
                label="role",
            )
        )
        m.add(
            Reading(
                "accompanist_compensations_stuck",
                "Sessions whose current compensation keeps failing.",
                per_role(lambda s: s.stuck is not None),
                label="role",
            )
        )
        m.add(
            Reading(
                "accompanist_sessions_awaiting_decision",
                "Participants that voted and wait for the initiator's decision.",
                per_role(lambda s: s.outcome.waiting_for_decision),
                label="role",
            )
        )
        m.add(
            Reading(
                "accompanist_outbox_pending",
                "Messages not yet acknowledged.",
                self.store.outbox_size,
            )
        )
        m.add(
            Reading(
                "accompanist_outbox_waiting",
                "Messages queued for a receiving role (an unreachable peer's grow).",
                self.outbox.waiting,
                label="peer",
            )
        )
        m.add(
            Reading(
                "accompanist_store_backlog",
                "Writes queued for the store (past max_store_backlog peers are told to wait).",
                self.store.backlog,
            )
        )
        m.add(
            Reading(
                "accompanist_sessions_quarantined",
                "Sessions set aside because the store could not rebuild them.",
                lambda: len(self.store.quarantined),
            )
        )
        timeline = self.events
        m.add(
            Reading(
                "accompanist_events_recorded",
                "Session events recorded (truncation marks included).",
                lambda: timeline.recorded,
                counter=True,
            )
        )
        m.add(
            Reading(
                "accompanist_events_truncated",
                "Session timelines that reached their bound (one truncated event each).",
                lambda: timeline.truncated,
                counter=True,
            )
        )
        if hasattr(self.store, "on_commit"):  # a store with a group-committing writer
            store: Any = self.store
            store.on_commit = m.watch_commits()
            m.add(
                Reading(
                    "accompanist_store_commits",
                    "Group commits made by the store's writer.",
                    lambda: store.batches,
                    counter=True,
                )
            )
            m.add(
                Reading(
                    "accompanist_store_writes",
                    "Writes committed by the store's writer (flush marks included).",
                    lambda: store.writes,
                    counter=True,
                )
            )

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, recover unfinished sessions, start receiving, tell peers we're up.

        Sessions are rebuilt before the transport delivers anything, so a message for one of
        them finds it instead of starting it a second time.
        """
        await self.store.open()
        self._recover()
        await self.transport.start(self.roles, self.deliver, self.outbox.wake)
        for msg in self.store.pending_outbox():
            self.release(msg)
        await self.transport.announce_ready()
        self._pruner = asyncio.create_task(self._prune_forever())

    def _recover(self) -> None:
        for key, reason in list(self.store.quarantined.items()):
            self._quarantine(key, reason)
        for rec in self.store.unfinished():
            key = (rec.session_id, rec.role)
            if key in self.store.quarantined:
                continue
            if rec.role not in self.roles or rec.choreography not in self.registry:
                # A configuration matter, not the session's: set aside until it is loaded.
                log.error(
                    "cannot recover session %s at %s: choreography %r not loaded here",
                    rec.session_id,
                    rec.role,
                    rec.choreography,
                )
                continue
            rec.restarts += 1
            self.store.save_session(rec)
            self.metrics.of(rec.role).sessions_recovered.inc()
            self._note_recovery(rec)
            try:
                self._spawn(rec)
            except Exception as exc:
                self.sessions.pop(key, None)
                self._quarantine(key, f"cannot rebuild the session: {exc!r}"[:500])

    def _note_recovery(self, rec: SessionRecord) -> None:
        """The timeline of a recovered session: it restarted, and what its replay will serve."""
        sid, role = rec.session_id, rec.role
        self.events.record(sid, role, events.RESTART, restarts=rec.restarts, state=rec.state)
        if rec.state == SessionState.RUNNING:  # only a running part is run again
            steps = self.store.journal_steps(sid, role)
            received = len(self.store.inbox(sid, role))
            self.events.record(sid, role, events.REPLAY, steps=steps, received=received)

    def _quarantine(self, key: tuple[str, str], reason: str) -> None:
        """Set a session aside as failed, with its reason; /health and /metrics show it."""
        log.error("session %s at %s quarantined: %s", key[0], key[1], reason)
        self.store.quarantined[key] = reason
        rec = self.store.session(*key)
        if rec is not None and not rec.finished:
            rec.state = SessionState.FAILED
            rec.result = encode_value({"outcome": "failed", "reason": f"quarantined: {reason}"})
            self.store.save_session(rec)

    async def close(self) -> None:
        """Stop sessions (their durable state stays for recovery) and release resources.

        Clients waiting for a session's end get `NodeStopping`: the session resumes when the
        node restarts, and a repeated start with the same id returns its outcome.
        """
        if self.closing:
            return
        self.closing = True
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
        owner: str | None = None,
    ) -> SessionStatus:
        """Start a session (or join the one with this id) at the choreography's initiator.

        Returns once the session's record is durable (so an acknowledged start survives a
        crash) and, with `wait`, once it has ended or `client_wait_s` has passed. `owner` is
        the authenticated client: a session with an owner is no one else's to join or read
        (to them it does not exist). Raises `Overloaded` rather than start one too many.
        """
        chor = self.registry.get(choreography)
        if chor.initiator not in self.roles:
            raise ChoreographyError(
                f"choreography {chor.name!r} starts at role {chor.initiator!r}, which node "
                f"{self.name!r} does not host (it hosts {', '.join(self.roles)})"
            )
        inputs = chor.bind(args or [], kwargs or {})
        sid = session_id or uuid.uuid4().hex
        if not sid or len(sid) > 128:
            raise ChoreographyError("a session id is a non-empty string of at most 128 characters")
        rec = self.store.session(sid, chor.initiator)
        if rec is not None and not _owns(owner, rec):
            raise ChoreographyError(f"session {sid!r} belongs to another client")
        if rec is not None and rec.choreography != chor.name:
            raise ChoreographyError(
                f"session {sid!r} already exists for choreography {rec.choreography!r}"
            )
        if rec is None:
            full = self.overloaded()
            if full is not None:
                self.metrics.of(chor.initiator).sessions_refused.inc()
                raise Overloaded(full)
            rec = SessionRecord(
                sid,
                chor.initiator,
                chor.name,
                args=encode_value(inputs),
                created=self.clock(),
                owner=owner,
            )
            # The session runs once its record is durable: a crash cannot then lose a session
            # whose messages peers have already acted on.
            written = self.store.save_session(rec)
            self.metrics.of(chor.initiator).sessions_started.inc()
            self.events.record(
                sid,
                chor.initiator,
                events.STARTED,
                choreography=chor.name,
                origin="client",
                by=owner,
            )
            self._spawn(rec, ready=written)
            await written
        else:
            await self.store.flush()  # the record may still be on its way to disk
        running = self.sessions.get((sid, chor.initiator))
        if wait and running is not None:
            # After client_wait_s the client hears the current state, and may ask again.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.client_wait_s):
                    await asyncio.shield(running.finished)
        return self.status(sid, chor.initiator, owner=owner)

    def status(
        self, session_id: str, role: str | None = None, *, owner: str | None = None
    ) -> SessionStatus:
        """The state of a session at `role` (default: the first hosted role that knows it).

        A session started by an authenticated client is known to that client only: to any
        other `owner` it raises KeyError, as an unknown one does.
        """
        for r in [role] if role else self.roles:
            rec = self.store.session(session_id, r)
            if rec is not None and _owns(owner, rec):
                running = self.sessions.get((session_id, r))
                # A running session reports its last durable state: a client must never
                # hear of an outcome that a kill -9 now could still take back.
                state, raw = running.durable if running is not None else (rec.state, rec.result)
                result = decode_value(raw) if raw is not None else None
                return SessionStatus(
                    rec.session_id,
                    rec.choreography,
                    rec.role,
                    state,
                    result,
                    rec.restarts,
                    running.stuck if running is not None else None,
                )
        raise KeyError(session_id)

    async def session_events(
        self, session_id: str, *, owner: str | None = None
    ) -> dict[str, list[Event]]:
        """The timeline of a session at every role hosted here that knows it: {role: events}.

        Raises KeyError for a session unknown here, or not `owner`'s (as `status` does).
        """
        found: dict[str, list[Event]] = {}
        for role in self.roles:
            rec = self.store.session(session_id, role)
            if rec is not None and _owns(owner, rec):
                found[role] = await self.events.read(session_id, role)
        if not found:
            raise KeyError(session_id)
        return found

    def recent_sessions(
        self, *, owner: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """The newest sessions here that `owner` may see, with their state at each hosted role.

        Each is {"session_id", "choreography", "created", "updated", "roles": {role: state}}
        (a running session's last durable state), newest first by start time; with `state`,
        only sessions in that state at some role. Scans every record held (within
        `record_retention_s`): for an inspector, not a hot path.
        """
        grouped: dict[str, dict[str, Any]] = {}
        for (sid, role), rec in self.store.sessions.items():
            if role not in self.roles or not _owns(owner, rec):
                continue
            running = self.sessions.get((sid, role))
            at = running.durable[0] if running is not None else rec.state
            entry = grouped.get(sid)
            if entry is None:
                entry = grouped[sid] = {
                    "session_id": sid,
                    "choreography": rec.choreography,
                    "created": rec.created,
                    "updated": rec.updated,
                    "roles": {},
                }
            entry["updated"] = max(entry["updated"], rec.updated)
            entry["roles"][role] = at
        chosen = [e for e in grouped.values() if state is None or state in e["roles"].values()]
        return heapq.nlargest(limit, chosen, key=lambda e: (e["created"], e["session_id"]))

    def _spawn(self, rec: SessionRecord, ready: Awaitable[None] | None = None) -> RoleSession:
        session = RoleSession(self, rec, self.registry.get(rec.choreography))
        self.sessions[(rec.session_id, rec.role)] = session
        session.start(ready)
        return session

    def overloaded(self) -> str | None:
        """Why this node takes no new session now, or None: admission control.

        Only new sessions are refused here; messages of running ones are taken unless the
        store's queue is full (`deliver`), so that what is queued drains and the node comes
        back below its limits by itself.
        """
        cfg = self.config
        if len(self.sessions) >= cfg.max_sessions:
            return f"{len(self.sessions)} sessions running, the limit is {cfg.max_sessions}"
        backlog = self.store.backlog()
        if backlog >= cfg.max_store_backlog:
            return f"{backlog} store writes queued, the limit is {cfg.max_store_backlog}"
        for role, waiting in self.outbox.waiting().items():
            if waiting >= cfg.max_outbox_per_peer:
                limit = cfg.max_outbox_per_peer
                return f"{waiting} messages wait for {role!r}, the limit is {limit}"
        return None

    def session_ended(self, session: RoleSession, seconds: float) -> None:
        self.sessions.pop((session.session_id, session.role), None)
        state = session.record.state
        metrics = self.metrics.of(session.role)
        if state == SessionState.COMPLETED:
            metrics.sessions_completed.inc()
        elif state == SessionState.COMPENSATED:
            metrics.sessions_compensated.inc()
        elif state == SessionState.FAILED:
            metrics.sessions_failed.inc()
        if state in SessionState.TERMINAL:
            metrics.session_duration.observe(seconds)

    # -- messages out ------------------------------------------------------------------------
    async def post(self, msg: Message, *, check_replay: bool = True) -> None:
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
        self._note_sent(msg)
        failpoints.hit("before_send")
        self.release(msg)

    def stage(self, msg: Message) -> Awaitable[None] | None:
        """Put a control message in the outbox without sending it; its write, or None if the
        outbox already holds it. `release` sends it once the caller's state is durable."""
        existing, written = self.store.put_outbox(msg)
        if existing is not None:
            return None
        self._note_sent(msg)
        return written

    def _note_sent(self, msg: Message) -> None:
        fields = _message_fields(msg, msg.receiver)
        self.events.record(msg.session, msg.sender, events.SENT, **fields)

    def release(self, msg: Message, *, stored: bool = True) -> None:
        """Hand a message to the outbox (or to a role hosted here).

        `stored=False` is for answers and queries that are never persisted: a lost one is
        asked for again. At most one copy of each is in flight.
        """
        if not stored:
            if msg.key in self._unstored:
                return
            self._unstored.add(msg.key)
        if msg.receiver in self.roles:
            # Both roles live here: hand it over directly, as a peer would receive it.
            task = asyncio.create_task(self._deliver_here(msg))
            self._local.add(task)
            task.add_done_callback(self._local.discard)
            return
        self.outbox.push(msg, self.config.decision_linger_s if _is_commit(msg) else 0.0)

    async def _deliver_here(self, msg: Message) -> None:
        refused = await self.deliver([msg])
        if refused:
            self._rejected([msg], refused[0][1])
        else:
            self._acked([msg])

    def _acked(self, batch: list[Message]) -> None:
        failpoints.hit("after_send")
        for msg in batch:
            self._unstored.discard(msg.key)
            self.store.ack_outbox(msg)
            self.metrics.link(msg.sender, msg.receiver).sent.inc()

    def _rejected(self, batch: list[Message], reason: str) -> None:
        # Stop resending, but loudly, and fail the sessions concerned (they compensate).
        for msg in batch:
            self._unstored.discard(msg.key)
            self.store.ack_outbox(msg)
            session = self.sessions.get((msg.session, msg.sender))
            if session is not None:
                session.fail(f"{msg.receiver} refused message #{msg.seq}: {reason}")
            self.metrics.link(msg.sender, msg.receiver).rejected.inc()

    def _answer(self, msg: Message, rec: SessionRecord | None) -> None:
        """Tell the sender of `msg` the decision of a session that no longer runs here."""
        if rec is None:
            decision = PRESUMED_ABORT
        else:
            result = decode_value(rec.result) if rec.result is not None else None
            reason = result.get("reason") if isinstance(result, dict) else None
            decision = Decision.of_finished(rec.state, reason)
        created = rec.created if rec is not None else msg.headers.get("t", self.clock())
        reply = Message(
            msg.choreography,
            msg.session,
            msg.receiver,
            msg.sender,
            Control.DECISION,
            Kind.CONTROL,
            encode_value(decision.body()),
            {"t": created},
        )
        self.release(reply, stored=False)

    # -- messages in -------------------------------------------------------------------------
    def validate(self, msg: Message, peer: frozenset[str] | None = None) -> None:
        """Raise ValueError with a precise reason if this node must refuse `msg`.

        Everything is checked before anything of the message is stored, so that whatever is
        stored can be reloaded and replayed. `peer` is the set of roles the sending
        connection's certificate names (None: an unauthenticated transport, allowed only in
        development); a message is taken only from a connection certified for its sender.
        """
        check_shape(msg, self.config.max_payload_bytes)
        if peer is not None and msg.sender not in peer:
            raise ValueError(
                f"sender: the connection is certified for role(s) {sorted(peer)}, "
                f"not {msg.sender!r}"
            )
        if msg.receiver not in self.roles:
            raise ValueError(
                f"receiver: node {self.name!r} does not host role {msg.receiver!r} "
                f"(it hosts {', '.join(self.roles)})"
            )
        if msg.choreography not in self.registry:
            raise ValueError(f"choreography: unknown choreography {msg.choreography!r}")
        chor = self.registry.get(msg.choreography)
        if msg.sender not in chor.roles or msg.receiver not in chor.roles:
            raise ValueError(
                f"sender/receiver: choreography {msg.choreography!r} has no role "
                f"{msg.sender!r} or {msg.receiver!r}"
            )
        if msg.sender == msg.receiver:
            raise ValueError("sender: a role cannot send to itself")
        if msg.kind is not Kind.CONTROL:
            return
        name = Control.NAMES[msg.seq]
        if msg.seq in Control.TO_INITIATOR and msg.receiver != chor.initiator:
            raise ValueError(f"receiver: a {name} message goes to the initiator only")
        if msg.seq in Control.FROM_INITIATOR and msg.sender != chor.initiator:
            raise ValueError(f"sender: only the initiator {chor.initiator!r} sends {name}")
        body = control_body(msg)
        unknown = set(body.get("involved", ())) - set(chor.roles)
        if unknown:
            raise ValueError(
                f"body: 'involved' names roles {sorted(unknown)} not in the choreography"
            )

    async def deliver(
        self, batch: list[Message], peer: frozenset[str] | None = None
    ) -> list[tuple[int, str]]:
        """Accept a batch; returns once every message in it is durable (the acknowledgement).

        Returns the messages refused for good, as (index in batch, reason): one bad message
        does not hold up the others, which may belong to other sessions. A refused message
        leaves nothing behind. `peer`: the roles the sender is certified for (see
        `validate`). Raises ValueError for a batch that is too long, and `Overloaded`,
        storing nothing, if the batch would start a session while the node is full, or if the
        store's queue is full: backpressure, so that a fast sender cannot grow this node's
        memory without bound. The sender keeps the batch in its durable outbox and sends it
        again (503 / a retry answer); the writer drains without needing any message, so
        refusing cannot deadlock, and sessions here only wait.
        """
        if len(batch) > self.config.max_batch_received:
            raise ValueError(
                f"batch of {len(batch)} messages, the limit is {self.config.max_batch_received}"
            )
        backlog = self.store.backlog()
        if backlog >= self.config.max_store_backlog:
            self.metrics.batches_deferred.inc()
            raise Overloaded(
                f"{backlog} store writes queued, the limit is {self.config.max_store_backlog}"
            )
        full = self.overloaded()
        if full is not None:
            starting = next((m.receiver for m in batch if self._would_start(m)), None)
            if starting is not None:
                self.metrics.of(starting).sessions_refused.inc()
                raise Overloaded(full)
        refused: list[tuple[int, str]] = []
        accepted: list[tuple[int, list[Awaitable[None]]]] = []
        for index, msg in enumerate(batch):
            durable: list[Awaitable[None]] = []
            try:
                self.validate(msg, peer)
                self._accept(msg, durable)
            except ValueError as exc:
                refused.append((index, str(exc)))
                self.metrics.link(*self._link_of(msg)).refused.inc()
                continue
            accepted.append((index, durable))
        for index, durable in accepted:
            try:
                for written in durable:
                    await written
            except RuntimeError as exc:  # the store refused this write (see SQLiteStore)
                refused.append((index, f"could not store the message: {exc}"))
        return sorted(refused)

    def _link_of(self, msg: Message) -> tuple[str, str]:
        """The (role, peer) labels of a refused message: only names a choreography here knows
        (anything else is "other"), so that junk cannot grow the metrics without bound."""
        known = {r for name in self.registry.names() for r in self.registry.get(name).roles}
        role = msg.receiver if msg.receiver in self.roles else "other"
        peer = msg.sender if isinstance(msg.sender, str) and msg.sender in known else "other"
        return role, peer

    def _would_start(self, msg: Message) -> bool:
        return (
            msg.kind is not Kind.CONTROL
            and isinstance(msg.session, str)
            and isinstance(msg.receiver, str)
            and msg.receiver in self.roles
            and self.store.session(msg.session, msg.receiver) is None
        )

    def _accept(self, msg: Message, durable: list[Awaitable[None]]) -> None:
        key = (msg.session, msg.receiver)
        session = self.sessions.get(key)
        rec = self.store.session(*key)
        at_initiator = msg.receiver == self.registry.get(msg.choreography).initiator
        if msg.seq == Control.QUERY:  # never stored: answered from what is known now
            if session is not None:
                session.accept(msg)
            else:
                self._answer(msg, rec)
            return
        if rec is not None and rec.finished:
            # A late copy, or a question for a finished session: acknowledge it only once what
            # the session received is durable, like any duplicate.
            if at_initiator and msg.kind is Kind.CONTROL:
                self._answer(msg, rec)
            self.metrics.link(msg.receiver, msg.sender).duplicate.inc()
            durable.append(self.store.flush())
            return
        if rec is None and not self._may_start(msg, at_initiator, durable):
            return
        new, written = self.store.put_inbox(msg)
        if not new:
            # The first copy may still be on its way to disk: the ack waits for it.
            self.metrics.link(msg.receiver, msg.sender).duplicate.inc()
            self._check_duplicate(msg)
            durable.append(self.store.flush())
            return
        self.metrics.link(msg.receiver, msg.sender).received.inc()
        durable.append(written)
        self.events.record(
            msg.session, msg.receiver, events.RECEIVED, **_message_fields(msg, msg.sender)
        )
        if session is not None:
            session.accept(msg)
        elif rec is None:
            self._spawn(self.store.session(*key))  # type: ignore[arg-type]
        else:
            log.warning("message for session %s at %s, which is set aside", *key)

    def _may_start(self, msg: Message, at_initiator: bool, durable: list[Awaitable[None]]) -> bool:
        """A message for a session this role has no record of: start it, or not.

        Nothing is stored for a session that will never run: at the initiator a session
        starts only through a client's start, so the sender hears "presumed abort"; a
        DECISION abort leaves just a tombstone, so that a late message cannot start it.
        """
        if at_initiator:
            self._answer(msg, None)
            if msg.kind is Kind.CONTROL:
                return False
            raise ValueError(
                f"session: {msg.session!r} is unknown at its initiator {msg.receiver!r}, "
                "where sessions start only through a client's start"
            )
        started = msg.headers.get("t")
        if msg.kind is Kind.CONTROL:  # a DECISION: validate lets no other control through
            decision = Decision.from_body(control_body(msg))
            if not decision.commit:
                rec = SessionRecord(
                    msg.session,
                    msg.receiver,
                    msg.choreography,
                    state=decision.final_state,
                    result=encode_value(
                        {"outcome": decision.final_state, "reason": decision.reason}
                    ),
                    created=started if started is not None else self.clock(),
                    owner=msg.headers.get("o"),
                )
                durable.append(self.store.save_session(rec))
            return False
        if started is None:
            raise ValueError("headers: 't' (the session's start time) is required to start it")
        age = self.clock() - started
        if age > self.config.record_retention_s / 2:
            raise ValueError(
                f"session: {msg.session!r} is too old to start here (it began {age:.0f}s ago, "
                "more than half the record retention): a late copy of a session whose record "
                "may already be pruned"
            )
        rec = SessionRecord(
            msg.session, msg.receiver, msg.choreography, created=started, owner=msg.headers.get("o")
        )
        # The record goes before the inbox row, in the same batch: no row without its session.
        durable.append(self.store.save_session(rec))
        self.metrics.of(msg.receiver).sessions_started.inc()
        self.events.record(
            msg.session,
            msg.receiver,
            events.STARTED,
            choreography=msg.choreography,
            origin="peer",
            by=msg.sender,
        )
        return True

    def _check_duplicate(self, msg: Message) -> None:
        kept = self.store.inbox_message(msg.session, msg.receiver, msg.sender, msg.seq)
        if kept is not None and kept.kind is not Kind.CONTROL and kept.payload != msg.payload:
            raise ValueError(
                f"payload: replay divergence: {msg.sender!r} re-sent message #{msg.seq} of "
                f"session {msg.session!r} with a different payload than the one "
                f"{msg.receiver!r} already received; the choreography is not deterministic"
            )

    def on_peer_ready(self, roles: list[str]) -> None:
        self.outbox.wake(roles)


def _message_fields(msg: Message, peer: str) -> dict[str, Any]:
    """A message as the timeline tells it: the other role, its seq and its kind."""
    kind = Control.NAMES[msg.seq] if msg.kind is Kind.CONTROL else msg.kind.value
    return {"peer": peer, "seq": msg.seq, "message": kind}


def _owns(client: str | None, rec: SessionRecord) -> bool:
    """Whether `client` may see `rec`: its owner, or anyone for a session without one.

    A participant learns the owner from the session's messages (header "o"), so a client
    sees its session at every role and no one else's. Owners are deployment-wide names: a
    client certificate's name, or a bearer token's name in `[auth] tokens`.
    """
    return rec.owner is None or rec.owner == client


def _is_commit(msg: Message) -> bool:
    """A commit decision is off every critical path: it may wait to share a request."""
    return msg.seq == Control.DECISION and decode_value(msg.payload)["outcome"] == "commit"


async def wait_idle(nodes: list[Node], timeout_s: float = 30.0) -> None:
    """Wait until no node has a running session or an unacknowledged message."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(n.sessions or n.store.outbox_size() for n in nodes):
        if loop.time() > deadline:
            raise TimeoutError("nodes still busy")
        await asyncio.sleep(0.01)
