"""The one Temporal activity of the baseline: a call to a workload service, per docs/contracts.md.

Every saga step, commit or compensation, is `POST /ops/{operation}` on the step's service with
the step's `Idempotency-Key`. The status code decides what Temporal does next: 409 is a business
abort (non-retryable, carrying the service's reason), any other 4xx is a non-retryable bad
request, and 5xx, a refused connection or a timeout is transient and retried with the capped
backoff in `CALL_POLICY` — the same numbers as the accompanist_py sidecar's `[timeouts]`, so that
both systems detect and ride out failures alike. A service behind HTTPS is called with the
worker's client certificate (`accompanist_py.tls.client_context`), as a sidecar calls its
service.
"""

from __future__ import annotations

import ssl
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

ACTIVITY_NAME = "service_call"
# ApplicationError types the workflows branch on.
BUSINESS_ABORT = "BusinessAbort"
BAD_REQUEST = "BadRequest"


@dataclass(frozen=True)
class CallPolicy:
    """Timeout and retry settings of one service call; printed by the harness in its report."""

    start_to_close_s: float = 5.0  # one attempt (contracts.md [timeouts] service_call_s)
    retry_initial_s: float = 0.05  # retry_initial_s
    retry_backoff: float = 2.0
    retry_max_s: float = 1.0  # retry_max_s
    # 0 = unlimited: a service that is down for seconds must delay a saga, never abort it.
    maximum_attempts: int = 0

    def retry_policy(self) -> RetryPolicy:
        """The Temporal retry policy for these settings."""
        return RetryPolicy(
            initial_interval=timedelta(seconds=self.retry_initial_s),
            backoff_coefficient=self.retry_backoff,
            maximum_interval=timedelta(seconds=self.retry_max_s),
            maximum_attempts=self.maximum_attempts,
        )

    @property
    def start_to_close(self) -> timedelta:
        return timedelta(seconds=self.start_to_close_s)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CALL_POLICY = CallPolicy()


@dataclass
class ServiceCall:
    """One step's request to a service; the workflow builds it, the activity sends it."""

    service: str
    operation: str
    idempotency_key: str
    body: dict[str, Any] = field(default_factory=dict)


class ServiceActivities:
    """Holds the worker's service URLs and its one keep-alive HTTP(S) session."""

    def __init__(
        self,
        service_urls: dict[str, str],
        policy: CallPolicy = CALL_POLICY,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.service_urls = {name: url.rstrip("/") for name, url in service_urls.items()}
        self.policy = policy
        self.tls = tls
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Create the shared session (call inside the worker's event loop)."""
        if self._session is None:
            # No connection cap: the worker's own concurrency limits decide the parallelism.
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, ssl=self.tls or True)
            timeout = aiohttp.ClientTimeout(total=self.policy.start_to_close_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @activity.defn(name=ACTIVITY_NAME)
    async def call(self, call: ServiceCall) -> dict[str, Any]:
        """POST the step to its service; raise per the status-code contract."""
        url = self.service_urls.get(call.service)
        if url is None:
            raise ApplicationError(
                f"this worker has no URL for service {call.service!r}",
                type=BAD_REQUEST,
                non_retryable=True,
            )
        await self.open()
        assert self._session is not None
        try:
            async with self._session.post(
                f"{url}/ops/{call.operation}",
                json=call.body,
                headers={"Idempotency-Key": call.idempotency_key},
            ) as response:
                status = response.status
                payload = await _json_or_text(response)
        except (TimeoutError, aiohttp.ClientError) as error:
            # Transient by contract: let the retry policy try again.
            raise ApplicationError(f"{call.service} unreachable: {error!r}") from error
        if status == 200:
            return payload if isinstance(payload, dict) else {"result": payload}
        if status == 409:
            # BENIGN: an abort is a normal outcome; the SDK would otherwise log a traceback for
            # each, which costs the worker CPU under load.
            raise ApplicationError(
                _reason(payload),
                payload,
                type=BUSINESS_ABORT,
                non_retryable=True,
                category=ApplicationErrorCategory.BENIGN,
            )
        if 400 <= status < 500:
            raise ApplicationError(
                f"{call.service} /ops/{call.operation} -> {status}: {_reason(payload)}",
                type=BAD_REQUEST,
                non_retryable=True,
            )
        raise ApplicationError(f"{call.service} /ops/{call.operation} -> {status}")


async def _json_or_text(response: aiohttp.ClientResponse) -> Any:
    try:
        return await response.json(content_type=None)
    except ValueError:
        return await response.text()


def _reason(payload: Any) -> str:
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return str(payload)
