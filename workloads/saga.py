"""What a saga step is, how its idempotency keys are spelled, and what running one means.

Each workload's `spec.py` lists its steps as `Step` values. Every system builds its payloads
from the same steps, so all send identical requests under identical keys. `run_saga` is the one
meaning of a linear saga (steps in order, compensation of everything attempted in reverse on a
refusal): the orchestrated twins (Temporal, DBOS, Restate) run it with their own durable step
call, the choreography reproduces it, and `run_direct` runs it straight against the services,
with no durability, to drive them through every outcome in tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from accompanist_py.saga import commit_key, compensation_payload, undo_key
from workloads.outcomes import COMMITTED, COMPENSATED, REJECTED


@dataclass(frozen=True)
class Step:
    """One step of a saga.

    `payload(request, *results)` builds the operation's body from the client's request and
    the results of the earlier steps named in `needs`, in that order. A step without `undo` is
    read-only: a 409 there ends the saga as rejected, before anything needs compensating.
    """

    name: str
    role: str
    operation: str
    undo: str | None
    needs: tuple[str, ...]
    payload: Callable[..., dict[str, Any]]

    def build(self, request: Mapping[str, Any], results: Mapping[str, Any]) -> dict[str, Any]:
        """The operation's body, given the results of the steps run so far."""
        return self.payload(request, *(results[name] for name in self.needs))


# One spelling of the keys for every system: the runtime's (accompanist_py.saga).
idempotency_key = commit_key  # `{saga_id}:{step}`
undo_payload = compensation_payload  # {"commit_key": `{saga_id}:{step}`}


def split_key(key: str) -> tuple[str, str]:
    """(saga_id, step) of a commit key; saga ids may themselves contain colons."""
    saga_id, _, step = key.rpartition(":")
    return saga_id, step


class ServiceError(Exception):
    """A service answered neither 200 nor 409."""


class Refused(Exception):
    """A service refused a step: its 409, with the service's reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CompensationRefused(Exception):
    """A service refused a compensation, which the service contract forbids: a bug to show,
    never an outcome."""


# How a system sends one step to its service: (role, operation, idempotency key, body) -> the
# answer's JSON body, or Refused. Each system wraps the HTTP call in its own durability (a
# Temporal activity, a DBOS step, a Restate `ctx.run`); its retries stay inside.
StepCall = Callable[[str, str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


async def run_saga(
    saga_id: str, steps: Sequence[Step], request: Mapping[str, Any], call: StepCall
) -> dict[str, Any]:
    """Run one saga's `steps` in order through `call`; `{"saga_id", "outcome", "reason",
    "results"}`.

    A refused read-only step ends the saga as rejected (nothing was committed yet). A refused
    commit compensates every commit attempted, itself included, in reverse order: always safe,
    because compensating an unapplied commit only leaves a tombstone. Deterministic given the
    answers, so an orchestrator may replay it.
    """
    results: dict[str, Any] = {}
    attempted: list[Step] = []
    for step in steps:
        if step.undo is not None:
            # Registered before the call: its fate is unknown until the answer arrives.
            attempted.append(step)
        key = idempotency_key(saga_id, step.name)
        try:
            results[step.name] = await call(
                step.role, step.operation, key, step.build(request, results)
            )
        except Refused as refused:
            if step.undo is None:
                return _outcome(saga_id, REJECTED, refused.reason, results)
            for done in reversed(attempted):
                assert done.undo is not None
                undo = undo_key(saga_id, done.name)
                try:
                    await call(done.role, done.undo, undo, undo_payload(saga_id, done.name))
                except Refused as error:
                    raise CompensationRefused(f"{done.undo} {undo}: {error.reason}") from error
            return _outcome(saga_id, COMPENSATED, refused.reason, results)
    return _outcome(saga_id, COMMITTED, None, results)


def _outcome(saga_id: str, outcome: str, reason: str | None, results: dict[str, Any]) -> dict:
    return {"saga_id": saga_id, "outcome": outcome, "reason": reason, "results": results}


async def call(
    session: aiohttp.ClientSession, url: str, operation: str, key: str, payload: Mapping[str, Any]
) -> tuple[int, dict[str, Any]]:
    """POST one operation with its idempotency key; return (status, JSON body)."""
    async with session.post(
        f"{url}/ops/{operation}", json=dict(payload), headers={"Idempotency-Key": key}
    ) as response:
        body = await response.json(content_type=None)
        if response.status not in (200, 409):
            raise ServiceError(f"{operation} at {url}: {response.status} {body}")
        return response.status, body


async def run_direct(
    steps: Sequence[Step],
    request: Mapping[str, Any],
    urls: Mapping[str, str],
    session: aiohttp.ClientSession,
) -> dict[str, Any]:
    """Run one saga sequentially against the services at `urls` (role -> base URL), with no
    durability at all: the meaning every system must reproduce (:func:`run_saga`)."""

    async def direct(role: str, operation: str, key: str, body: dict[str, Any]) -> dict:
        status, answer = await call(session, urls[role], operation, key, body)
        if status == 409:
            raise Refused(answer["error"])
        return answer

    try:
        return await run_saga(request["saga_id"], steps, request, direct)
    except CompensationRefused as error:
        raise ServiceError(str(error)) from error
