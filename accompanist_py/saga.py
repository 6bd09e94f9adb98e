"""Sagas: transactions with compensations, run at one role each.

A `Transaction` is a pair of service operations: `commit` does the step, `compensate` undoes it.
`op.transact(role, txn)` runs the commit at `role` with the idempotency key
"{session}:{txn.name}" after durably recording that it was attempted; a business abort (HTTP
409) fails the whole session. Every role then compensates its own attempted transactions in
reverse order, exactly once each, with the key "{session}:{txn.name}:undo" and the body
{"commit_key": "{session}:{txn.name}"}, so a service can tell which effect to undo and ignore a
commit it never saw. A commit refused with 409 took no effect and is not compensated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Transaction:
    """A saga step: service operation `commit`, undone by service operation `compensate`."""

    name: str
    commit: str
    compensate: str
    payload: Any = None


class TxnState:
    """Lifecycle of a transaction at its role, as recorded in the store."""

    ATTEMPTED = "attempted"  # recorded before the commit call: it may have taken effect
    COMMITTED = "committed"
    REFUSED = "refused"  # the commit was refused (409): nothing to compensate
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"  # the service refused the undo (4xx)


def commit_key(session_id: str, name: str) -> str:
    """Idempotency key of a transaction's commit (the same on every system we benchmark)."""
    return f"{session_id}:{name}"


def undo_key(session_id: str, name: str) -> str:
    """Idempotency key of a transaction's compensation."""
    return f"{session_id}:{name}:undo"


def compensation_payload(session_id: str, name: str) -> dict[str, Any]:
    """Body of the compensating call: the key of the commit it undoes.

    The service finds the effect to undo by that key (see docs/contracts.md), so a
    compensation needs nothing else and undoes exactly what the commit did.
    """
    return {"commit_key": commit_key(session_id, name)}
