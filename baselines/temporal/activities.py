"""The one Temporal activity of the baseline: a call to a workload service, per docs/contracts.md.

Every saga step, commit or compensation, is `POST /ops/{operation}` on the step's service with
the step's `Idempotency-Key`. The status code decides what Temporal does next: 409 is a business
abort (non-retryable, carrying the service's reason), any other 4xx is a non-retryable bad
request, and 5xx, a refused connection or a timeout is transient and retried with the capped
backoff in `CALL_POLICY`. Its numbers are read from the accompanist_py sidecar's own defaults
(`SidecarConfig`, `Backoff`: the `[timeouts]` the harness writes into every sidecar's config),
not copied, so that both systems detect and ride out failures alike. While a call runs, the
activity heartbeats, so that the server gives up on an attempt whose worker was killed after
`heartbeat_timeout_s` (the sidecars' longest resend interval) instead of the whole
`start_to_close_s`. A service behind HTTPS is called with the worker's client certificate
(`accompanist_py.tls.client_context`), as a sidecar calls its service.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from accompanist_py.backoff import Backoff
from accompanist_py.sidecar.config import SidecarConfig

ACTIVITY_NAME = "service_call"
# ApplicationError types the workflows branch on.
BUSINESS_ABORT = "BusinessAbort"
BAD_REQUEST = "BadRequest"


_SIDECAR_BACKOFF = Backoff()


@dataclass(frozen=True)
class CallPolicy:
    """Timeout and retry settings of one service call; printed by the harness in its report.

    Each default is the sidecar's setting of the same job (docs/contracts.md `[timeouts]`).
    """

    start_to_close_s: float = SidecarConfig.service_call_s  # one attempt: service_call_s
    # All attempts together: service_deadline_s. A service down for seconds delays a saga;
    # one down for minutes fails it, in both systems alike.
    schedule_to_close_s: float = SidecarConfig.service_deadline_s
    retry_initial_s: float = _SIDECAR_BACKOFF.initial_s  # retry_initial_s
    retry_backoff: float = _SIDECAR_BACKOFF.multiplier
    retry_max_s: float = _SIDECAR_BACKOFF.max_s  # retry_max_s
    # A dead worker's attempt is given up after this long without a heartbeat: a sidecar's
    # peers resend to a restarted sidecar at once (/ready) and at worst every retry_max_s.
    heartbeat_timeout_s: float = _SIDECAR_BACKOFF.max_s
    maximum_attempts: int = 0  # 0 = unlimited: schedule_to_close_s is the limit

    def retry_policy(self) -> RetryPolicy:
        """The Temporal retry policy for these settings."""
        return RetryPolicy(
            initial_interval=timedelta(seconds=self.retry_initial_s),
            backoff_coefficient=self.retry_backoff,
            maximum_interval=timedelta(seconds=self.retry_max_s),
            maximum_attempts=self.maximum_attempts,
        )

    def activity_options(self) -> dict[str, Any]:
        """Keyword arguments of `workflow.execute_activity` for a service call."""
        return {
            "start_to_close_timeout": timedelta(seconds=self.start_to_close_s),
            "schedule_to_close_timeout": timedelta(seconds=self.schedule_to_close_s),
            "heartbeat_timeout": timedelta(seconds=self.heartbeat_timeout_s),
            "retry_policy": self.retry_policy(),
        }

    def local_activity_options(self) -> dict[str, Any]:
        """The same for `workflow.execute_local_activity`, which has no heartbeat: a killed
        worker's local activities are detected through its workflow task's timeout."""
        options = self.activity_options()
        del options["heartbeat_timeout"]
        return options

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
        beating = asyncio.create_task(self._heartbeat())
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
        finally:
            beating.cancel()
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

    async def _heartbeat(self) -> None:
        """Tell the server this worker is alive while a call runs longer than a third of the
        heartbeat timeout; the usual call of a few milliseconds sends no heartbeat at all."""
        timeout = activity.info().heartbeat_timeout  # None for a local activity
        if not timeout:
            return
        while True:
            await asyncio.sleep(timeout.total_seconds() / 3)
            activity.heartbeat()


async def _json_or_text(response: aiohttp.ClientResponse) -> Any:
    try:
        return await response.json(content_type=None)
    except ValueError:
        return await response.text()


def _reason(payload: Any) -> str:
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return str(payload)
