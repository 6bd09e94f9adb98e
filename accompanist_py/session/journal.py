"""The step journal of one session at one role: what each step returned, for replay.

A journaled step runs once; after a crash, replay returns (or re-raises) the recorded outcome
instead of running it again. Journal rows are written without waiting: a lost row only means
the step runs again, under the same idempotency key, so the service answers as before. A
`locally` result is the exception: it may be non-deterministic, so anything that lets it out
of the role (a send, a service call) first waits until its row is durable.

Idempotency keys are claimed here too: each service call and transaction of a session at a
role needs its own key, and two steps claiming one are refused instead of silently sharing the
first one's response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from accompanist_py import failpoints
from accompanist_py.errors import (
    BusinessAbort,
    ChoreographyError,
    ReplayDivergenceError,
    ServiceError,
)
from accompanist_py.message import decode_value, encode_value
from accompanist_py.store import Store


class Journal:
    """Recorded step outcomes and claimed idempotency keys of one session at one role."""

    def __init__(self, store: Store, session_id: str, role: str) -> None:
        self.store = store
        self.session_id = session_id
        self.role = role
        self._unsynced: Awaitable[None] | None = None
        self._keys: dict[str, str] = {}  # idempotency key -> the step that claimed it

    def claim(self, key: str, what: str) -> None:
        """Reserve idempotency key `key` for `what`; a second claim is a choreography error."""
        first = self._keys.get(key)
        if first is not None:
            raise ChoreographyError(
                f"{what} at role {self.role!r} of session {self.session_id!r} needs the "
                f"idempotency key {key!r}, which {first} already used: a key used twice would "
                "silently return the first call's response. Give every transaction (and "
                "every call key) of a session a distinct name"
            )
        self._keys[key] = what

    async def sync(self) -> None:
        """Wait until the latest `locally` result is durable (before it can leave the role)."""
        if self._unsynced is not None:
            await self._unsynced
            self._unsynced = None

    async def step(self, step: str, what: str, run: Callable[[], Awaitable[Any]]) -> Any:
        """Run `run` once per step; on replay return (or re-raise) the recorded outcome."""
        entry = self.store.journal(self.session_id, self.role, step)
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
            self._put(step, what, {"abort": [exc.operation, exc.reason]})
            raise
        except ServiceError as exc:
            self._put(step, what, {"error": [exc.operation, exc.status, exc.reason]})
            raise
        written = self._put(step, what, {"ok": value})
        if what == "locally":
            self._unsynced = written
        if failpoints.armed("after_journal"):
            await written
            failpoints.hit("after_journal")
        return value

    def _put(self, step: str, what: str, outcome: dict[str, Any]) -> Awaitable[None]:
        return self.store.put_journal(self.session_id, self.role, step, what, encode_value(outcome))


def _unpack_outcome(recorded: dict[str, Any]) -> Any:
    if "abort" in recorded:
        operation, reason = recorded["abort"]
        raise BusinessAbort(operation, reason)
    if "error" in recorded:
        operation, status, reason = recorded["error"]
        raise ServiceError(operation, status, reason)
    return recorded["ok"]
