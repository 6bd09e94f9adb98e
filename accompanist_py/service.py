"""The sidecar's calls to its own service: the paper's "worker" RPC, over HTTP or HTTPS.

A service is any HTTP server: `POST {base}/ops/{operation}` with a JSON body and an
`Idempotency-Key` header. 200 is the result; 409 a business abort; another 4xx a
non-retryable error; 5xx, a refused connection or a timeout are transient and retried with
capped backoff until the call deadline, so a service that is down for seconds only delays a
saga. Nothing in a service imports this runtime. Over HTTPS the client verifies the service
against a CA and may present a client certificate and/or a bearer token, so that a service
can take calls from its own sidecar only.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from accompanist_py.backoff import Backoff
from accompanist_py.errors import BusinessAbort, ServiceError, ServiceUnavailableError

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass
class CallStats:
    """What a caller learns about one call besides its result: the attempts it took."""

    attempts: int = 0


class ServiceClient(Protocol):
    """Calls operations of the service next to a node."""

    async def call(
        self, operation: str, payload: Any, key: str, stats: CallStats | None = None
    ) -> Any:
        """Run `operation` once (idempotently under `key`) and return its JSON result;
        count every attempt made in `stats`, if given (for the session's timeline)."""

    async def close(self) -> None:
        """Release connections."""


class HttpServiceClient:
    """Calls a service over HTTP, retrying transient failures."""

    def __init__(
        self,
        base_url: str,
        *,
        attempt_timeout_s: float = 5.0,
        deadline_s: float = 300.0,
        backoff: Backoff | None = None,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._ssl = ssl_context
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.attempt_timeout = aiohttp.ClientTimeout(total=attempt_timeout_s)
        self.deadline_s = deadline_s
        self.backoff = backoff or Backoff()
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, ssl=self._ssl or True),
                timeout=self.attempt_timeout,
                headers=self._headers,
            )
        return self._session

    async def call(
        self, operation: str, payload: Any, key: str, stats: CallStats | None = None
    ) -> Any:
        url = f"{self.base_url}/ops/{operation}"
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            if stats is not None:
                stats.attempts = attempt
            try:
                async with self._client().post(
                    url, json=payload, headers={IDEMPOTENCY_HEADER: key}
                ) as resp:
                    if resp.status == 200:
                        return await resp.json()
                    body = await _error_text(resp)
                    if resp.status == 409:
                        raise BusinessAbort(operation, body)
                    if 400 <= resp.status < 500:
                        raise ServiceError(operation, resp.status, body)
                    problem = f"{resp.status}: {body}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                problem = f"{exc.__class__.__name__}: {exc}"
            if time.monotonic() - started > self.deadline_s:
                raise ServiceUnavailableError(
                    f"{url} still failing after {attempt} attempts: {problem}"
                )
            log.debug("retrying %s (attempt %d): %s", url, attempt, problem)
            await asyncio.sleep(self.backoff.delay(attempt))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    try:
        body = await resp.json(content_type=None)
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
        return str(body)
    except (ValueError, aiohttp.ClientError):
        return (await resp.text())[:300]


Handler = Callable[[str, Any, str], Any | Awaitable[Any]]


class LocalServiceClient:
    """A service as a Python callable `handler(operation, payload, key)`, for `run_local`.

    The handler signals a business abort by raising `BusinessAbort`.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def call(
        self, operation: str, payload: Any, key: str, stats: CallStats | None = None
    ) -> Any:
        if stats is not None:
            stats.attempts = 1
        result = self.handler(operation, payload, key)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def close(self) -> None:
        pass


class NoService:
    """For nodes without a service: any call is a configuration error."""

    async def call(
        self, operation: str, payload: Any, key: str, stats: CallStats | None = None
    ) -> Any:
        raise ServiceError(operation, 0, "this node has no service configured")

    async def close(self) -> None:
        pass
