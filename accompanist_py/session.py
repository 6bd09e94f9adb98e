"""One session of a choreography at one role: execution, replay, and the outcome protocol.

A `RoleSession` runs the role's projection of the choreography as an asyncio task. Everything
it does goes through the node's store, so that re-running it after a crash is a replay: sends
land on the outbox rows they made before (and must match them byte for byte), receives are
served from the inbox, service calls and `locally` results come from the journal.

Outcome protocol. A participant that finishes its part sends DONE to the initiator, listing the
roles it sent messages to; the initiator completes once it has finished and heard DONE from
every role known to be involved (termination detection by diffusion), then sends DECISION to
all of them. Any role that fails sends ABORT to every role; each role then compensates its own
transactions in reverse order and ends compensated (business abort) or failed (error). So all
roles agree, and the client hears "committed" only when no role can still abort.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from accompanist_py import failpoints
from accompanist_py.choreography import Choreography
from accompanist_py.errors import (
    BusinessAbort,
    ReceiveTimeoutError,
    ReplayDivergenceError,
    ServiceError,
    ServiceUnavailableError,
)
from accompanist_py.located import Located
from accompanist_py.message import Control, Kind, Message, decode_value, encode_value
from accompanist_py.projector import Op
from accompanist_py.saga import (
    Transaction,
    TxnState,
    commit_key,
    compensation_payload,
    undo_key,
)
from accompanist_py.store import SessionRecord, SessionState, TxnRecord

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
        self.choices: dict[str, bytes] = {}
        self.involved: set[str] = set()
        self._send_seq: dict[str, int] = {}
        self._recv_seq: dict[str, int] = {}
        self._mailbox: dict[tuple[str, int], Message] = {}
        self._waiters: dict[tuple[str, int], asyncio.Future[Message]] = {}
        self._dones: dict[str, list[str]] = {}
        self._progress = asyncio.Event()  # set when a DONE or DECISION arrives
        self._decided = False
        self._abort: tuple[str, bool] | None = None  # (reason, failed)
        self._abort_origin = False  # this role decided the abort: it must tell every role
        self._started = False  # a task cancelled before its first step would never run
        self._compensating = False
        self._finishing = False
        self._txn_index = 0
        # The latest `locally` journal write not yet known durable: a send waits for it, since
        # replay could not reproduce a non-deterministic result that a peer has already seen.
        self._unsynced: Awaitable[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.finished: asyncio.Future[SessionRecord] = asyncio.get_running_loop().create_future()
        if record.state == SessionState.ABORTING:
            # Recovered mid-abort: resume it as it was, before the inbox is replayed.
            info = decode_value(record.result) if record.result else {}
            self._abort = (str(info.get("reason", "aborted")), bool(info.get("failed")))
            self._abort_origin = bool(info.get("origin"))
        for msg in node.store.inbox(self.session_id, self.role):
            self.accept(msg)

    # -- messages in -------------------------------------------------------------------------
    def accept(self, msg: Message) -> None:
        """Take a message that is (being made) durable in the inbox.

        Choices carried in its headers are learned now, not when it is consumed: a role that
        joins after a choice must know it before its first receive. This cannot make replay
        diverge: every message received before a crash is in the inbox after it, so a choice
        known in the first run is known in the replay (one unknown in the first run failed
        the session, which is then never replayed).
        """
        for cid, v in msg.headers.get("c", {}).items():
            self.choices.setdefault(cid, v)
        if msg.kind is not Kind.CONTROL:
            key = (msg.sender, msg.seq)
            waiter = self._waiters.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)
            else:
                self._mailbox[key] = msg
            return
        body = decode_value(msg.payload)
        if msg.seq == Control.DONE:
            self._dones[msg.sender] = list(body.get("involved", []))
            self._progress.set()
        elif msg.seq == Control.DECISION:
            self._decided = True
            self._progress.set()
        elif msg.seq == Control.ABORT:
            self.abort(str(body.get("reason", "aborted")), bool(body.get("failed")))

    def abort(self, reason: str, failed: bool, *, origin: bool = False) -> None:
        """The session aborts: stop the role's part (if running) and compensate.

        `origin`: this role decided the abort (rather than hearing of it), so it tells every
        other role, also after a crash, until they acknowledge.
        """
        if self.record.finished or self._abort is not None:
            return
        if self._finishing:
            log.warning("abort of %s at %s ignored: already finishing", self.session_id, self.role)
            return
        self._abort = (reason, failed)
        self._abort_origin = origin
        self.record.state = SessionState.ABORTING
        self.record.result = encode_value({"reason": reason, "failed": failed, "origin": origin})
        self.node.store.save_session(self.record)
        if (
            self.task is not None
            and self._started
            and not self._compensating
            and asyncio.current_task() is not self.task  # from inside, _run carries on itself
        ):
            self.task.cancel()

    def fail(self, reason: str) -> None:
        """Fail the session from outside its task (a peer refused one of its messages)."""
        self.abort(reason, failed=True, origin=True)

    # -- primitives used by Op ---------------------------------------------------------------
    def learn_choice(self, choice_id: str, value: Any) -> None:
        self.choices[choice_id] = encode_value(value)

    async def send(self, receiver: str, kind: Kind, value: Any) -> None:
        if self._unsynced is not None:
            await self._unsynced
            self._unsynced = None
        seq = self._send_seq.get(receiver, 0)
        self._send_seq[receiver] = seq + 1
        self.involved.add(receiver)
        headers = {"c": dict(self.choices)} if self.choices else {}
        msg = Message(
            self.chor.name,
            self.session_id,
            self.role,
            receiver,
            seq,
            kind,
            encode_value(value),
            headers,
        )
        await self.node.post(msg)

    async def receive(self, sender: str, kind: Kind) -> Any:
        seq = self._recv_seq.get(sender, 0)
        self._recv_seq[sender] = seq + 1
        key = (sender, seq)
        msg = self._mailbox.pop(key, None)
        if msg is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[key] = waiter
            timeout = self.node.config.receive_timeout_s
            try:
                msg = await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                raise ReceiveTimeoutError(
                    f"role {self.role!r} of session {self.session_id!r} waited {timeout:g}s for "
                    f"message (sender={sender!r}, seq={seq})"
                ) from None
            finally:
                self._waiters.pop(key, None)
        if msg.kind is not kind:
            raise ReplayDivergenceError(
                f"role {self.role!r} expected a {kind.value} message from {sender!r} (seq {seq}) "
                f"but got {msg.kind.value}: the roles disagree on the choreography's path"
            )
        return decode_value(msg.payload)

    async def journaled(self, step: str, what: str, run: Callable[[], Awaitable[Any]]) -> Any:
        """Run `run` once per step; on replay return (or re-raise) the recorded outcome."""
        store = self.node.store
        entry = store.journal(self.session_id, self.role, step)
        if entry is not None:
            recorded, blob = entry
            if recorded != what:
                raise ReplayDivergenceError(
                    f"replay of session {self.session_id!r} at role {self.role!r}: step {step} "
                    f"was {recorded!r} before the restart and is {what!r} now"
                )
            return _unpack_outcome(decode_value(blob))
        try:
            value = await run()
        except BusinessAbort as exc:
            store.put_journal(
                self.session_id,
                self.role,
                step,
                what,
                encode_value({"abort": [exc.operation, exc.reason]}),
            )
            raise
        except ServiceError as exc:
            store.put_journal(
                self.session_id,
                self.role,
                step,
                what,
                encode_value({"error": [exc.operation, exc.status, exc.reason]}),
            )
            raise
        written = store.put_journal(
            self.session_id, self.role, step, what, encode_value({"ok": value})
        )
        if what == "locally":
            self._unsynced = written
        if failpoints.armed("after_journal"):
            await written
            failpoints.hit("after_journal")
        return value

    async def call_service(self, step: str, operation: str, payload: Any, key: str) -> Any:
        idem = f"{self.session_id}:{key}"

        async def run() -> Any:
            return await self._call(operation, payload, idem)

        return await self.journaled(step, f"call:{operation}", run)

    async def _call(self, operation: str, payload: Any, key: str) -> Any:
        if self._unsynced is not None:  # a payload may carry a `locally` result: make it stick
            await self._unsynced
            self._unsynced = None
        self.node.metrics.service_calls.inc()
        failpoints.hit("before_call")
        value = await self.node.service.call(operation, payload, key)
        failpoints.hit("after_call")
        return value

    async def transact(self, step: str, txn: Transaction, payload: Any) -> Any:
        index = self._txn_index
        self._txn_index += 1
        store = self.node.store
        prior = {t.index: t for t in store.txns(self.session_id, self.role)}.get(index)
        if prior is not None and prior.name != txn.name:
            raise ReplayDivergenceError(
                f"replay of session {self.session_id!r} at role {self.role!r}: transaction "
                f"#{index} was {prior.name!r} before the restart and is {txn.name!r} now"
            )

        def record(state: str) -> TxnRecord:
            return TxnRecord(
                self.session_id,
                self.role,
                index,
                txn.name,
                txn.compensate,
                encode_value(payload),
                state,
            )

        if prior is None:
            # Durable before the commit call: an abort must find every transaction that may
            # have taken effect, even one that arrives after a crash and before replay gets
            # back to this step.
            await store.save_txn(record(TxnState.ATTEMPTED))
        key = commit_key(self.session_id, txn.name)

        async def run() -> Any:
            return await self._call(txn.commit, payload, key)

        try:
            value = await self.journaled(step, f"txn:{txn.name}", run)
        except BusinessAbort:
            store.save_txn(record(TxnState.REFUSED))
            raise
        if prior is None or prior.state == TxnState.ATTEMPTED:
            store.save_txn(record(TxnState.COMMITTED))
        return value

    # -- the run -----------------------------------------------------------------------------
    def start(self, ready: Awaitable[None] | None = None) -> None:
        """Run the role's part as a task, once `ready` (the session record's write) is done."""
        self.task = asyncio.create_task(
            self._run(ready), name=f"session {self.session_id}@{self.role}"
        )

    async def _run(self, ready: Awaitable[None] | None) -> None:
        self._started = True
        started = time.monotonic()
        try:
            if self._abort is None:
                try:
                    if ready is not None:
                        await ready
                    value = await self._execute()
                    await self._conclude(value)
                except asyncio.CancelledError:
                    if self._abort is None:
                        raise  # node shutdown: the durable state stays for recovery
                except Exception as exc:
                    failed = not isinstance(exc, BusinessAbort)
                    if failed:
                        log.warning("session %s failed at %s: %s", self.session_id, self.role, exc)
                    self.abort(str(exc), failed, origin=True)
            if self._abort is not None:
                await self._compensate()
        finally:
            self.node.session_ended(self, time.monotonic() - started)

    async def _execute(self) -> Any:
        op = Op(self, self.chor, {r: r for r in self.chor.roles})
        owners = frozenset({self.initiator})
        if self.role == self.initiator and self.record.args is not None:
            values = decode_value(self.record.args)
            args = [Located(owners, self.role, v) for v in values]
        else:
            args = [Located(owners, self.role) for _ in self.chor.params]
        return await self.chor.fn(op, *args)

    async def _conclude(self, value: Any) -> None:
        if isinstance(value, Located):
            value = value.value if value.is_here else None
        if self.role == self.initiator:
            while not self._all_done():
                self._progress.clear()
                await self._progress.wait()
            linger = self.node.config.decision_linger_s
            await asyncio.gather(
                *(
                    self._control(r, Control.DECISION, {"outcome": "completed"}, linger)
                    for r in sorted(self._participants())
                )
            )
        else:
            await self._control(self.initiator, Control.DONE, {"involved": sorted(self.involved)})
            self.record.state = SessionState.AWAITING
            self.node.store.save_session(self.record)
            while not self._decided:
                self._progress.clear()
                await self._progress.wait()
        await self._finish(SessionState.COMPLETED, value)

    def _participants(self) -> set[str]:
        known = set(self.involved)
        for involved in self._dones.values():
            known.update(involved)
        known.discard(self.role)
        return known

    def _all_done(self) -> bool:
        return self._participants() <= set(self._dones)

    async def _control(
        self, receiver: str, seq: int, body: dict[str, Any], linger_s: float = 0.0
    ) -> None:
        msg = Message(
            self.chor.name,
            self.session_id,
            self.role,
            receiver,
            seq,
            Kind.CONTROL,
            encode_value(body),
        )
        await self.node.post(msg, check_replay=False, linger_s=linger_s)

    async def _compensate(self) -> None:
        assert self._abort is not None
        self._compensating = True
        reason, failed = self._abort
        if self._abort_origin:  # again after a crash: the fixed seq makes repeats harmless
            for r in self.chor.roles:
                if r != self.role:
                    await self._control(r, Control.ABORT, {"reason": reason, "failed": failed})
        store = self.node.store
        pending = [
            t
            for t in store.txns(self.session_id, self.role)
            if t.state in (TxnState.ATTEMPTED, TxnState.COMMITTED)
        ]
        for txn in sorted(pending, key=lambda t: t.index, reverse=True):
            body = compensation_payload(self.session_id, txn.name)
            key = undo_key(self.session_id, txn.name)
            attempt = 0
            while True:
                attempt += 1
                try:
                    self.node.metrics.service_calls.inc()
                    await self.node.service.call(txn.compensate, body, key)
                    failpoints.hit("during_compensation")
                    state = TxnState.COMPENSATED
                    break
                except ServiceUnavailableError as exc:
                    log.warning(
                        "compensation %s of %s still failing: %s", txn.name, self.session_id, exc
                    )
                    await asyncio.sleep(self.node.config.backoff.max_s)
                except ServiceError as exc:
                    log.error("compensation %s of %s refused: %s", txn.name, self.session_id, exc)
                    state = TxnState.COMPENSATION_FAILED
                    break
            txn.state = state
            store.save_txn(txn)
        outcome = "failed" if failed else "compensated"
        await self._finish(
            SessionState.FAILED if failed else SessionState.COMPENSATED,
            {"outcome": outcome, "reason": reason},
        )

    async def _finish(self, state: str, result: Any) -> None:
        self._finishing = True
        self.record.state = state
        self.record.result = encode_value(result)
        await self.node.store.save_session(self.record)
        self.node.store.forget_working_state(self.session_id, self.role)
        if not self.finished.done():
            self.finished.set_result(self.record)


def _unpack_outcome(recorded: dict[str, Any]) -> Any:
    if "abort" in recorded:
        operation, reason = recorded["abort"]
        raise BusinessAbort(operation, reason)
    if "error" in recorded:
        operation, status, reason = recorded["error"]
        raise ServiceError(operation, status, reason)
    return recorded["ok"]
