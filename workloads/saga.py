"""What a saga step is, how its idempotency keys are spelled, and a plain reference run.

Each workload's `spec.py` lists its steps as `Step` values. The choreography and the Temporal
workflow both build their payloads from the same steps, so they send identical requests under
identical keys. `run_direct` executes the steps one after another straight against the
services: it is the sequential meaning that both systems must reproduce, and the tests use it
to drive the services through every outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    """Run one saga sequentially against the services at `urls` (role -> base URL).

    Returns `{"saga_id", "outcome", "reason", "results"}`. On a business abort every commit
    step attempted so far, the failed one included, is compensated in reverse order: that is
    always safe because compensating an unapplied commit only leaves a tombstone.
    """
    saga_id = request["saga_id"]
    results: dict[str, Any] = {}
    attempted: list[Step] = []
    for step in steps:
        if step.undo is not None:
            attempted.append(step)
        status, body = await call(
            session,
            urls[step.role],
            step.operation,
            idempotency_key(saga_id, step.name),
            step.build(request, results),
        )
        if status == 200:
            results[step.name] = body
            continue
        if step.undo is None:
            return {
                "saga_id": saga_id,
                "outcome": REJECTED,
                "reason": body["error"],
                "results": results,
            }
        for done in reversed(attempted):
            status, _ = await call(
                session,
                urls[done.role],
                done.undo,
                undo_key(saga_id, done.name),
                undo_payload(saga_id, done.name),
            )
            if status != 200:
                raise ServiceError(f"compensation {done.undo} of {saga_id} answered {status}")
        return {
            "saga_id": saga_id,
            "outcome": COMPENSATED,
            "reason": body["error"],
            "results": results,
        }
    return {"saga_id": saga_id, "outcome": COMMITTED, "reason": None, "results": results}
