"""Simulated services: one in-memory service per node, honouring docs/contracts.md.

A `ServiceModel` is the service's durable state; it lives outside every node and survives
their crashes. It is idempotent by key: a repeated key returns the stored answer and applies
nothing. Payload `{"abort": true}` is a business abort (409), `{"bad": true}` a non-retryable
error (400). An operation `undo_X` with body `{"commit_key": K}` (sent under key "K:undo")
undoes commit K if it took effect, or else leaves a tombstone that makes a later commit K
answer 409 "compensated" and apply nothing. Every applied effect is recorded, with the
virtual time, for the invariant checker; so is every payload sent under a key, so that a
replay sending different payloads under one key is caught.

`SimServiceClient` is a node incarnation's client for it, shaped like the runtime's
`LocalServiceClient` (`call`, `close`). Each attempt takes a random virtual latency each way;
a request, once sent, is processed by the service in a task of its own, so neither the
caller's crash nor the attempt's timeout stops it (as with a real HTTP request already on the
wire). Transient failures (the service down for a window, as while it crashes and restarts; a
slow request outlasting the attempt's timeout; a response lost after the effect was applied)
are retried by the client, under the same key, with capped backoff until its deadline, then
raised as `ServiceUnavailableError`, as `HttpServiceClient` does.

With `dedup=False` the model is BROKEN ON PURPOSE (a repeated key applies its effect again):
the self-test uses it to show that the checker catches double effects.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sim_loop import Incarnation, SimLoop, Trace, owner_context

from accompanist_py.backoff import Backoff
from accompanist_py.errors import BusinessAbort, ServiceError, ServiceUnavailableError

UNDO_PREFIX = "undo_"

Outcome = tuple[str, Any]  # ("ok", result) | ("abort", reason) | ("error", reason) | transient


@dataclass(frozen=True)
class Effect:
    """One effect a service applied."""

    t: float
    service: str
    key: str
    operation: str
    kind: str  # "commit" (any forward operation) or "undo"
    commit_key: str | None  # for an undo: the commit it undid
    payload: str  # canonical JSON of the request body

    def __str__(self) -> str:
        target = f" of {self.commit_key}" if self.commit_key else ""
        return f"{self.service}:{self.kind} {self.key}{target} @{self.t:.4f}"


@dataclass
class ServiceModel:
    """The durable state of one node's service."""

    name: str
    trace: Trace
    dedup: bool = True
    answers: dict[str, Outcome] = field(default_factory=dict)
    effects: list[Effect] = field(default_factory=list)
    applied: dict[str, Effect] = field(default_factory=dict)  # commits by key
    tombstones: set[str] = field(default_factory=set)
    first_payload: dict[str, str] = field(default_factory=dict)
    mismatches: list[tuple[float, str, str, str]] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)
    requests: int = 0
    transient: int = 0

    def down(self, now: float) -> bool:
        return any(start <= now < end for start, end in self.outages)

    def apply(self, now: float, operation: str, payload: Any, key: str) -> Outcome:
        """Handle one request, as one transaction of the service's database."""
        self.requests += 1
        text = json.dumps(payload, sort_keys=True)
        first = self.first_payload.setdefault(key, text)
        if first != text:
            self.mismatches.append((now, key, first, text))
        if self.dedup and key in self.answers:
            return self.answers[key]
        outcome = self._apply(now, operation, payload, key, text)
        self.answers[key] = outcome
        self.trace("svc", f"{self.name} {operation} {key} -> {outcome[0]}")
        return outcome

    def _apply(self, now: float, operation: str, payload: Any, key: str, text: str) -> Outcome:
        if operation.startswith(UNDO_PREFIX):
            commit_key = payload.get("commit_key") if isinstance(payload, dict) else None
            if not isinstance(commit_key, str):
                return ("error", "a compensation needs 'commit_key'")
            if commit_key in self.applied:
                self.effects.append(
                    Effect(now, self.name, key, operation, "undo", commit_key, text)
                )
                return ("ok", {"compensated": True})
            self.tombstones.add(commit_key)
            return ("ok", {"compensated": False})
        if key in self.tombstones:
            return ("abort", "compensated")
        if isinstance(payload, dict) and payload.get("bad"):
            return ("error", "bad request (asked for by the payload)")
        if isinstance(payload, dict) and payload.get("abort"):
            return ("abort", f"{operation} declined")
        effect = Effect(now, self.name, key, operation, "commit", None, text)
        self.effects.append(effect)
        self.applied[key] = effect
        return ("ok", {"operation": operation, "key": key, "echo": payload})


TRANSIENT: Outcome = ("transient", None)


class SimServiceClient:
    """A node incarnation's client of its service (the runtime's `ServiceClient`)."""

    def __init__(
        self,
        model: ServiceModel,
        owner: Incarnation,
        loop: SimLoop,
        rng: random.Random,
        *,
        deadline_s: float = 10.0,
        backoff: Backoff | None = None,
        lose_response: float = 0.0,
        slow: float = 0.0,
        attempt_timeout_s: float = 1.0,
        crash_point: Callable[[str, str], None] | None = None,
    ) -> None:
        self.model = model
        self.owner = owner
        self.loop = loop
        self.rng = rng
        self.deadline_s = deadline_s
        self.backoff = backoff or Backoff(initial_s=0.01, max_s=0.5)
        self.lose_response = lose_response
        self.slow = slow
        self.attempt_timeout_s = attempt_timeout_s
        self._crash_point = crash_point
        self.retries = 0

    async def call(self, operation: str, payload: Any, key: str, stats: Any = None) -> Any:
        self.owner.check()
        body = json.loads(json.dumps(payload))  # what an HTTP request carries
        started = self.loop.time()
        attempt = 0
        while True:
            attempt += 1
            if stats is not None:
                stats.attempts = attempt
            if self._crash_point is not None:
                self._crash_point(self.owner.node, "call")
            self.owner.check()
            kind, value = await self._attempt(operation, body, key)
            if self._crash_point is not None:
                self._crash_point(self.owner.node, "answer")  # the answer is in, not journaled
            self.owner.check()
            if kind == "ok":
                return json.loads(json.dumps(value))
            if kind == "abort":
                raise BusinessAbort(operation, value)
            if kind == "error":
                raise ServiceError(operation, 400, value)
            self.model.transient += 1
            if self.loop.time() - started > self.deadline_s:
                raise ServiceUnavailableError(
                    f"service {self.model.name} {operation} still failing after {attempt} "
                    "attempts (simulated)"
                )
            self.retries += 1
            await asyncio.sleep(self.backoff.delay(attempt))
            self.owner.check()

    async def _attempt(self, operation: str, body: Any, key: str) -> Outcome:
        if self.model.down(self.loop.time()):
            await asyncio.sleep(0.001)  # connection refused
            return TRANSIENT
        # The service's own work: not the caller's task, so the caller's crash cannot stop it.
        server = self.loop.create_task(
            self._serve(operation, body, key), context=owner_context(None)
        )
        try:
            outcome = await asyncio.wait_for(asyncio.shield(server), self.attempt_timeout_s)
        except TimeoutError:
            # The request may still take effect later; the retry (same key) must not repeat it.
            self.model.trace("svc", f"{self.model.name} attempt timed out {key}")
            return TRANSIENT
        await asyncio.sleep(self.rng.uniform(0.0005, 0.004))
        if outcome[0] == "transient":
            return TRANSIENT
        if self.model.down(self.loop.time()) or (
            self.lose_response and self.rng.random() < self.lose_response
        ):
            # Applied, but the answer never came back: the client will ask again.
            self.model.trace("svc", f"{self.model.name} response lost {key}")
            return TRANSIENT
        return outcome

    async def _serve(self, operation: str, body: Any, key: str) -> Outcome:
        slow = self.slow and self.rng.random() < self.slow
        # A slow request (a stalled server, a long queue) may outlast the attempt's timeout.
        await asyncio.sleep(self.rng.uniform(0.2, 3.0) if slow else self.rng.uniform(0.0005, 0.004))
        if self.model.down(self.loop.time()):
            return TRANSIENT
        return self.model.apply(self.loop.time(), operation, body, key)

    async def close(self) -> None:
        pass
