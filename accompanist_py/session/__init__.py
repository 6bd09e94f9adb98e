"""One session at one role: run the role's part, then carry out the outcome protocol.

A `RoleSession` is the executor that wires four rooms to its node (and tells the node's
timeline, `accompanist_py.events`, what happens): the `mailbox` (ordered
receives, choices), the `journal` (replayable step outcomes, idempotency keys), the
`transactions` (saga steps and their compensation) and the `outcome` state machine (the
protocol, in `outcome.py`). Everything the part does goes through the node's store, so that
running it again after a crash is a replay: sends land on the outbox rows they made before
(and must match them byte for byte), receives are served from the inbox, service calls and
`locally` results come from the journal.

Events (the part's end, control messages, timers) are turned into state transitions at once
and synchronously, so they apply in the order they happen; their effects are carried out by
the session's task in that order, each only once the state it follows from is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from accompanist_py import events, failpoints
from accompanist_py.choreography import Choreography
from accompanist_py.errors import BusinessAbort, ServiceError, ServiceUnavailableError
from accompanist_py.located import Located
from accompanist_py.message import Control, Kind, Message, control_body, decode_value, encode_value
from accompanist_py.projector import Op
from accompanist_py.saga import Transaction, commit_key
from accompanist_py.service import CallStats
from accompanist_py.session.journal import Journal
from accompanist_py.session.mailbox import Mailbox
from accompanist_py.session.outcome import (
    ABORTING,
    AWAITING,
    COMPLETED,
    NOTHING,
    RUNNING,
    Decision,
    Effects,
    Outcome,
)
from accompanist_py.session.transactions import Transactions
from accompanist_py.store import DONE, SessionRecord

if TYPE_CHECKING:
    from accompanist_py.node import Node

log = logging.getLogger(__name__)


class RoleSession:
    """The execution of one session at one role."""

    def __init__(self, node: Node, record: SessionRecord, chor: Choreography) -> None:
        self.node = node
        self.record = record
        self.chor = chor
        self.session_id = record.session_id
        self.role = record.role
        self.initiator = chor.initiator
        self.mailbox = Mailbox(self.session_id, self.role, node.config.receive_timeout_s)
        self.journal = Journal(node.store, self.session_id, self.role)
        self.transactions = Transactions(self)
        self.outcome = Outcome(self.role, chor.initiator, chor.roles, state=record.state)
        self.task: asyncio.Task[None] | None = None
        self.finished: asyncio.Future[SessionRecord] = asyncio.get_running_loop().create_future()
        # Each queued transition: its barrier, its effects, its staged messages, and the
        # (state, result) it wrote, which is what clients hear once the barrier has passed.
        self._effects: deque[
            tuple[Awaitable[None], Effects, list[Message], tuple[str, bytes | None] | None]
        ] = deque()
        self.durable: tuple[str, bytes | None] = (record.state, record.result)
        self._wake = asyncio.Event()
        self._barrier: Awaitable[None] = DONE  # the latest write of this session's state
        self._in_part = False
        self._value: Any = None  # what the role's part returned
        self._deadline: asyncio.TimerHandle | None = None
        if record.state != RUNNING:
            own = decode_value(record.result) if record.result is not None else {}
            self._value = own.get("value") if isinstance(own, dict) else None
            self._apply(self.outcome.recovered(own))
        for msg in node.store.inbox(self.session_id, self.role):
            self.accept(msg)

    @property
    def choices(self) -> dict[str, bytes]:
        return self.mailbox.choices

    @property
    def stuck(self) -> dict[str, Any] | None:
        """The compensation that keeps failing, if any."""
        stuck = self.transactions.stuck
        return stuck.to_json() if stuck is not None else None

    # -- events ------------------------------------------------------------------------------
    def accept(self, msg: Message) -> None:
        """Take a message that is (being made) durable in the inbox, or a QUERY."""
        self.mailbox.put(msg)
        if msg.kind is not Kind.CONTROL:
            return
        body = control_body(msg)
        if msg.seq == Control.DONE:
            self._apply(self.outcome.done(msg.sender, body["involved"]))
        elif msg.seq == Control.ABORT:
            self._apply(self.outcome.veto(msg.sender, body["reason"], body["failed"]), msg.sender)
        elif msg.seq == Control.QUERY:
            self._apply(self.outcome.query(msg.sender))
        elif msg.seq == Control.DECISION:
            self._apply(self.outcome.decided(Decision.from_body(body)), msg.sender)

    def fail(self, reason: str) -> None:
        """Fail the session from outside its part (a peer refused one of its messages)."""
        self._apply(self.outcome.part_failed(reason, True, self.mailbox.sent_to), self.role)

    def note(self, kind: str, **fields: Any) -> None:
        """Record an event of this session here (`accompanist_py.events`)."""
        self.node.events.record(self.session_id, self.role, kind, **fields)

    def _apply(self, fx: Effects, origin: str | None = None) -> None:
        """`origin`: whose failure, veto or decision an abort comes from (for the timeline)."""
        """Start carrying out a transition: issue its writes now, queue the rest."""
        if fx is NOTHING:
            return
        if fx.violation is not None:
            log.warning("session %s at %s: %s; ignored", self.session_id, self.role, fx.violation)
            return
        store = self.node.store
        if fx.state is not None:
            self.record.state = fx.state
            self.record.result = encode_value(self._result(fx))
            self._barrier = store.save_session(self.record)
            written = (self.record.state, self.record.result)
            if fx.state == ABORTING:
                why = decode_value(self.record.result)
                self.note(
                    events.ABORT,
                    reason=why.get("reason"),
                    failed=bool(why.get("failed")),
                    origin=origin or self.role,
                )
        else:
            written = None
        staged = [self._control(r, seq, body) for r, seq, body in fx.send]
        for msg in staged:  # after the state: a durable row implies a durable state
            self._barrier = self.node.stage(msg) or self._barrier
        if fx.cancel_part and self._in_part and self.task is not asyncio.current_task():
            self.task.cancel()  # type: ignore[union-attr]
        self._effects.append((self._barrier, fx, staged, written))
        self._wake.set()

    def _result(self, fx: Effects) -> Any:
        """What the session record holds in a state: enough to redo its effects."""
        decision = self.outcome.decision
        if fx.state == COMPLETED:
            return self._value
        if fx.state == AWAITING:
            return {"value": self._value, "involved": sorted(self.outcome.involved)}
        if fx.state == ABORTING:
            if decision is None:  # this participant's veto
                return {**fx.send[0][2], "vetoed": True}
            return {"reason": decision.reason, "failed": decision.failed}
        assert decision is not None
        return {"outcome": fx.state, "reason": decision.reason}

    # -- primitives used by Op ---------------------------------------------------------------
    def learn_choice(self, choice_id: str, value: Any) -> None:
        self.mailbox.learn_choice(choice_id, value)

    async def send(self, receiver: str, kind: Kind, value: Any) -> None:
        await self.journal.sync()
        seq = self.mailbox.next_seq(receiver)
        msg = Message(
            self.chor.name,
            self.session_id,
            self.role,
            receiver,
            seq,
            kind,
            encode_value(value),
            self._headers(),
        )
        await self.node.post(msg)

    async def receive(self, sender: str, kind: Kind) -> Any:
        return await self.mailbox.take(sender, kind)

    async def journaled(self, step: str, what: str, run: Callable[[], Awaitable[Any]]) -> Any:
        return await self.journal.step(step, what, run)

    async def call_service(self, step: str, operation: str, payload: Any, key: str) -> Any:
        idem = commit_key(self.session_id, key)
        self.journal.claim(idem, f"call {operation!r} (step {step})")

        async def run() -> Any:
            return await self.call(operation, payload, idem)

        return await self.journal.step(step, f"call:{operation}", run)

    async def transact(self, step: str, txn: Transaction, payload: Any) -> Any:
        return await self.transactions.transact(step, txn, payload)

    async def call(self, operation: str, payload: Any, key: str) -> Any:
        """One call to this role's service (a payload may carry a `locally` result: sync it)."""
        await self.journal.sync()
        failpoints.hit("before_call")
        value = await self.timed_call(operation, payload, key)
        failpoints.hit("after_call")
        return value

    async def timed_call(self, operation: str, payload: Any, key: str) -> Any:
        """A service call between its `call_start` and `call_end` events."""
        self.note(events.CALL_START, operation=operation)
        stats = CallStats()
        started = time.monotonic()
        status = "cancelled"
        try:
            value = await self.node.service.call(operation, payload, key, stats)
            status = "ok"
            return value
        except BusinessAbort:
            status = "refused"
            raise
        except ServiceError:
            status = "error"
            raise
        except ServiceUnavailableError:
            status = "unavailable"
            raise
        except Exception:
            status = "error"
            raise
        finally:
            seconds = time.monotonic() - started
            self.node.metrics.call_ended(self.role, operation, seconds, max(1, stats.attempts))
            if status != "cancelled" or not self.node.closing:
                self.note(
                    events.CALL_END,
                    operation=operation,
                    status=status,
                    attempts=max(1, stats.attempts),
                    latency_ms=round(seconds * 1000, 3),
                )

    def _session_headers(self) -> dict[str, Any]:
        """What every message of the session carries: its start time and owner."""
        headers: dict[str, Any] = {"t": self.record.created}
        if self.record.owner is not None:
            headers["o"] = self.record.owner
        return headers

    def _headers(self) -> dict[str, Any]:
        headers = self._session_headers()
        if self.mailbox.choices:
            headers["c"] = dict(self.mailbox.choices)
        return headers

    def _control(self, receiver: str, seq: int, body: dict[str, Any]) -> Message:
        return Message(
            self.chor.name,
            self.session_id,
            self.role,
            receiver,
            seq,
            Kind.CONTROL,
            encode_value(body),
            self._session_headers(),
        )

    # -- the run -----------------------------------------------------------------------------
    def start(self, ready: Awaitable[None] | None = None) -> None:
        """Run the session as a task, once `ready` (the session record's write) is done."""
        self.task = asyncio.create_task(
            self._run(ready), name=f"session {self.session_id}@{self.role}"
        )
        if self.outcome.is_initiator and self.outcome.decision is None:
            waited = self.node.config.decision_timeout_s
            remaining = self.record.created + waited - self.node.clock()
            self._deadline = asyncio.get_running_loop().call_later(
                max(0.0, remaining),
                lambda: self._apply(self.outcome.deadline_passed(waited), "deadline"),
            )

    async def _run(self, ready: Awaitable[None] | None) -> None:
        started = time.monotonic()
        try:
            if ready is not None:
                await ready
            if self.outcome.state == RUNNING:
                await self._run_part()
            await self._drive()
        except asyncio.CancelledError:
            raise  # the node stops: the durable state stays for recovery
        except Exception as exc:  # a runtime bug: end the session rather than hang its client
            log.exception("session %s at %s broke down", self.session_id, self.role)
            self._abandon(f"internal error: {exc.__class__.__name__}: {exc}")
        finally:
            if self._deadline is not None:
                self._deadline.cancel()
            self.node.session_ended(self, time.monotonic() - started)

    async def _run_part(self) -> None:
        self._in_part = True
        try:
            value = await self._execute()
        except asyncio.CancelledError:
            self._in_part = False
            if self.outcome.state == RUNNING or self.node.closing:
                raise  # not an abort: the node is stopping
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            return
        except Exception as exc:
            self._in_part = False
            failed = not isinstance(exc, BusinessAbort)
            if failed:
                log.warning("session %s failed at %s: %s", self.session_id, self.role, exc)
            self._apply(self.outcome.part_failed(str(exc), failed, self.mailbox.sent_to))
            return
        self._in_part = False
        if isinstance(value, Located):
            value = value.value if value.is_here else None
        self._value = value
        self._apply(self.outcome.part_ended(self.mailbox.sent_to))

    async def _execute(self) -> Any:
        op = Op(self, self.chor, {r: r for r in self.chor.roles})
        owners = frozenset({self.initiator})
        if self.role == self.initiator and self.record.args is not None:
            values = decode_value(self.record.args)
            args = [Located(owners, self.role, v) for v in values]
        else:
            args = [Located(owners, self.role) for _ in self.chor.params]
        return await self.chor.fn(op, *args)

    async def _drive(self) -> None:
        """Carry out queued effects in order, each once its state is durable; then wait."""
        while True:
            while self._effects:
                barrier, fx, staged, written = self._effects.popleft()
                await barrier
                if written is not None:
                    self.durable = written
                _failpoint(self.outcome.is_initiator, fx)
                for msg in staged:
                    self.node.release(msg)
                for receiver, seq, body in fx.reply:
                    self.node.release(self._control(receiver, seq, body), stored=False)
                if fx.compensate:
                    await self.transactions.compensate()
                    self._apply(self.outcome.compensation_done())
                if fx.finish:
                    self._finish()
                    return
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # arrives as the event is set, and the node's close() then waits for ever.
            try:
                async with asyncio.timeout(self.node.config.query_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                self._apply(self.outcome.query_due())

    def _finish(self) -> None:
        self.note(events.FINISHED, state=self.record.state)
        self.node.store.forget_working_state(self.session_id, self.role)
        if not self.finished.done():
            self.finished.set_result(self.record)

    def _abandon(self, reason: str) -> None:
        self.record.state = "failed"
        self.record.result = encode_value({"outcome": "failed", "reason": reason})
        self.node.store.save_session(self.record)
        self.node.metrics.of(self.role).sessions_broken.inc()
        self._finish()


def _failpoint(initiator: bool, fx: Effects) -> None:
    """The instants between a protocol state becoming durable and anyone hearing of it."""
    if not fx.send:
        return
    if initiator:
        failpoints.hit("after_decision")
    elif fx.send[0][1] == Control.DONE:
        failpoints.hit("after_vote")
    else:
        failpoints.hit("after_veto")


__all__ = ["RoleSession"]
