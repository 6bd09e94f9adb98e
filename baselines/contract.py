"""One attempt at a saga step's service call, classified by docs/contracts.md, for the baselines.

Every step, commit or compensation, is `POST /ops/{operation}` on the step's service with the
step's `Idempotency-Key`. The answer decides what an orchestrator does next: 200 is the step's
result; 409 is a business refusal, an outcome to record and branch on (`Answer.refused`); any
other 4xx is a bad request that no retry would change, a refusal too (as the Temporal twin
treats it), its status in the reason; 5xx, a refused connection
or a timeout is transient (`Transient`), to be retried with the sidecars' backoff for as long
as `RetryPolicy.deadline_s` allows (`retrying`). The numbers are the accompanist_py sidecar's
own defaults, read from `SidecarConfig` and `Backoff` rather than copied, so that every system
rides out a failing service alike. The DBOS and Restate twins use this module; the Temporal
twin's activity (`baselines/temporal/activities.py`) applies the same contract through
Temporal's retry policy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from accompanist_py.backoff import Backoff
from accompanist_py.sidecar.config import SidecarConfig

_SIDECAR_BACKOFF = Backoff()


@dataclass(frozen=True)
class RetryPolicy:
    """Timeouts and retries of one step's call; each default is the sidecar's own setting."""

    attempt_s: float = SidecarConfig.service_call_s  # one attempt: service_call_s
    deadline_s: float = SidecarConfig.service_deadline_s  # all attempts: service_deadline_s
    backoff: Backoff = _SIDECAR_BACKOFF  # retry_initial_s, x2, retry_max_s


CALL_POLICY = RetryPolicy()


class Transient(Exception):
    """No answer, or a 5xx: the service may answer if asked again."""


@dataclass(frozen=True)
class Answer:
    """A service's answer to one step: its JSON result, or the reason it refused (409)."""

    result: dict[str, Any] | None = None
    refused: str | None = None

    def as_record(self) -> dict[str, Any]:
        """A plain dict an orchestrator can journal: `{"result": ...}` or `{"refused": ...}`."""
        return {"refused": self.refused} if self.refused is not None else {"result": self.result}


async def attempt(
    session: aiohttp.ClientSession,
    url: str,
    operation: str,
    key: str,
    body: Mapping[str, Any],
    policy: RetryPolicy = CALL_POLICY,
) -> Answer:
    """POST the step once; its `Answer`, or `Transient`."""
    try:
        async with session.post(
            f"{url.rstrip('/')}/ops/{operation}",
            json=dict(body),
            headers={"Idempotency-Key": key},
            timeout=aiohttp.ClientTimeout(total=policy.attempt_s),
        ) as response:
            status = response.status
            try:
                payload: Any = await response.json(content_type=None)
            except ValueError:
                payload = await response.text()
    except (TimeoutError, aiohttp.ClientError) as error:
        raise Transient(f"{url} unreachable: {error!r}") from error
    if status == 200:
        return Answer(result=payload if isinstance(payload, dict) else {"result": payload})
    if status == 409:
        return Answer(refused=_reason(payload))
    if 400 <= status < 500:
        return Answer(refused=f"{url}/ops/{operation} -> {status}: {_reason(payload)}")
    raise Transient(f"{url}/ops/{operation} -> {status}")


async def retrying(
    once: Callable[[], Awaitable[Answer]], policy: RetryPolicy = CALL_POLICY
) -> Answer:
    """`once()` until it answers, retrying `Transient` with the policy's backoff; past the
    deadline the last `Transient` is raised. For an orchestrator whose own step retries cannot
    be capped as the sidecars' are (DBOS)."""
    deadline = time.monotonic() + policy.deadline_s
    retries = 0
    while True:
        try:
            return await once()
        except Transient:
            retries += 1
            pause = policy.backoff.delay(retries)
            if time.monotonic() + pause > deadline:
                raise
            await asyncio.sleep(pause)


def _reason(payload: Any) -> str:
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return str(payload)


__all__ = [
    "CALL_POLICY",
    "Answer",
    "RetryPolicy",
    "Transient",
    "attempt",
    "retrying",
]
