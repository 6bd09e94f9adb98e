"""The saga steps of one session at one role: commit them, and compensate them on abort.

A transaction is recorded ATTEMPTED, durably, before its commit call: an abort must find every
transaction that may have taken effect, even one whose answer a crash lost. Compensation runs
the attempted and committed ones in reverse order, each under its own undo key, and marks each
COMPENSATED after its call; a crash in between repeats the call under the same key, which the
service answers from its dedup record, so each is undone exactly once. A compensation is
retried on every failure until it succeeds: stopping would leave an effect of an aborted saga
in place. While one keeps failing, `stuck` says which, how often and why (status, metrics).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from accompanist_py import events, failpoints
from accompanist_py.errors import BusinessAbort, ReplayDivergenceError
from accompanist_py.message import encode_value
from accompanist_py.saga import Transaction, TxnState, commit_key, compensation_payload, undo_key
from accompanist_py.store import TxnRecord

if TYPE_CHECKING:
    from accompanist_py.session import RoleSession

log = logging.getLogger(__name__)


@dataclass
class Stuck:
    """A compensation that keeps failing."""

    transaction: str
    attempts: int
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"transaction": self.transaction, "attempts": self.attempts, "error": self.error}


class Transactions:
    """Commit and compensation of one session's transactions at one role."""

    def __init__(self, session: RoleSession) -> None:
        self.session = session
        self.stuck: Stuck | None = None
        self._next_index = 0

    async def transact(self, step: str, txn: Transaction, payload: Any) -> Any:
        s = self.session
        store = s.node.store
        index = self._next_index
        self._next_index += 1
        key = commit_key(s.session_id, txn.name)
        s.journal.claim(key, f"transaction {txn.name!r}")
        prior = {t.index: t for t in store.txns(s.session_id, s.role)}.get(index)
        if prior is not None and prior.name != txn.name:
            raise ReplayDivergenceError(
                f"replay of session {s.session_id!r} at role {s.role!r}: transaction "
                f"#{index} was {prior.name!r} before the restart and is {txn.name!r} now"
            )

        def record(state: str) -> TxnRecord:
            return TxnRecord(
                s.session_id, s.role, index, txn.name, txn.compensate, encode_value(payload), state
            )

        if prior is None:
            await store.save_txn(record(TxnState.ATTEMPTED))

        async def run() -> Any:
            return await s.call(txn.commit, payload, key)

        try:
            value = await s.journal.step(step, f"txn:{txn.name}", run)
        except BusinessAbort as exc:
            if prior is None or prior.state != TxnState.REFUSED:
                store.save_txn(record(TxnState.REFUSED))
                s.note(
                    events.REFUSED, transaction=txn.name, operation=txn.commit, reason=exc.reason
                )
            raise
        if prior is None or prior.state == TxnState.ATTEMPTED:
            store.save_txn(record(TxnState.COMMITTED))
            s.note(events.COMMITTED, transaction=txn.name, operation=txn.commit)
        return value

    async def compensate(self) -> None:
        """Undo every transaction that may have taken effect here, newest first."""
        s = self.session
        store = s.node.store
        pending = [
            t
            for t in store.txns(s.session_id, s.role)
            if t.state in (TxnState.ATTEMPTED, TxnState.COMMITTED)
        ]
        for txn in sorted(pending, key=lambda t: t.index, reverse=True):
            await self._undo(txn)
            txn.state = TxnState.COMPENSATED
            store.save_txn(txn)
            s.note(events.COMPENSATED, transaction=txn.name, operation=txn.compensate)

    async def _undo(self, txn: TxnRecord) -> None:
        s = self.session
        body = compensation_payload(s.session_id, txn.name)
        key = undo_key(s.session_id, txn.name)
        attempt = 0
        while True:
            attempt += 1
            try:
                await s.timed_call(txn.compensate, body, key)
                failpoints.hit("during_compensation")
                self.stuck = None
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: the effect must still be undone
                self.stuck = Stuck(txn.name, attempt, f"{exc.__class__.__name__}: {exc}"[:500])
                s.node.metrics.of(s.role).compensation_retries.inc()
                log.warning(
                    "compensation %s of %s at %s failed (attempt %d), retrying: %s",
                    txn.name,
                    s.session_id,
                    s.role,
                    attempt,
                    exc,
                )
                await asyncio.sleep(s.node.config.backoff.delay(attempt))
