"""Failpoints: kill this process at a named point of the runtime, for crash-recovery tests.

A sidecar's `[failpoints]` table maps a point to N: the process SIGKILLs itself the N-th time
execution reaches that point (as `kill -9` from outside would, but at an exact instant). Unarmed
points cost one dict lookup.

    before_call          a service call (or commit) is about to be sent
    after_call           the service answered; the journal row is not yet written
    after_journal        the journal row of a service call is durable
    before_send          a message is recorded in the outbox, not yet handed to the transport
    after_send           a peer acknowledged a message, not yet marked acknowledged
    during_compensation  a compensation call returned; later ones have not run
    after_vote           a participant's DONE state is durable; the DONE has not left
    after_veto           a participant's ABORT state is durable; the ABORT has not left
    after_decision       the initiator's decision is durable; no DECISION has left
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

POINTS = (
    "before_call",
    "after_call",
    "after_journal",
    "before_send",
    "after_send",
    "during_compensation",
    "after_vote",
    "after_veto",
    "after_decision",
)

_armed: dict[str, int] = {}
_hits: dict[str, int] = {}
_handler: Callable[[str], None] | None = None


def set_handler(handler: Callable[[str], None] | None) -> None:
    """Call `handler(point)` at every point reached, armed or not (None: stop).

    For the deterministic simulation, which crashes a simulated node there instead of
    killing the process; the handler raises to end the node's current task.
    """
    global _handler
    _handler = handler


def arm(points: dict[str, int]) -> None:
    """Arm failpoints: kill the process on the N-th hit of each named point."""
    unknown = set(points) - set(POINTS)
    if unknown:
        raise ValueError(f"unknown failpoints {sorted(unknown)}; known: {', '.join(POINTS)}")
    _armed.clear()
    _armed.update(points)
    _hits.clear()


def armed(point: str) -> bool:
    return point in _armed or _handler is not None


def hit(point: str) -> None:
    """Mark that execution reached `point`; dies here if it is armed for this hit."""
    if _handler is not None:
        _handler(point)
    if point not in _armed:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] == _armed[point]:
        os.kill(os.getpid(), signal.SIGKILL)
