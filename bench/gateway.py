"""The one HTTP entry point of a saga workload, in front of either system.

Locust measures both systems from the same boundary: `POST /sagas/{workload}` with
`{"saga_id", "request"}` answers, once the saga has ended, `200 {"saga_id", "outcome",
"reason", ...}`; `500 {"saga_id", "error"}` when it failed for good (a failed workflow, a
session without an outcome, a refusal), which no retry would change; `503 {"saga_id", "error"}`
when its system stayed unreachable or kept restarting until `--deadline-s`, which is worth
posting again. Re-posting a saga id returns that saga's outcome and never starts it twice.
Behind it sits one backend, for each of the deployments of `bench.matrix.SYSTEMS`:

- `accompanist`: the initiator sidecar, `POST /sessions/{choreography}` with the saga id as the
  session id (idempotent there), over one keep-alive session.
- `temporal-distributed` / `temporal-tuned`: a Temporal client; the workflow id is the saga id,
  and a start that finds it running or finished attaches to it. In the tuned configuration
  this process also hosts the worker, which is what makes eager workflow start possible.
- `restate`: `POST {ingress}/{workload}/run` with the saga id as the `idempotency-key`, so that
  a repeated call attaches to the invocation the first started.
- `dbos`: DBOS Transact runs in this process (it is a library) with its SQLite system database
  at `--dbos-db`; the workflow id is the saga id, and a restarted gateway resumes the workflows
  it left unfinished.

Every backend retries through a restart of what it talks to (sidecar, Temporal or Restate
server; DBOS's system database when it is busy), up to `--deadline-s`, since the harness
crashes those on purpose: one loop (`_retrying`) with the runtime's own backoff
(`accompanist_py.backoff.Backoff`, 50 ms doubling to 1 s), so that no system rides out a crash
with a better policy than another. The load generator posts a saga again the same way, with the
same saga id, after a 503 or no answer (never after a 500), which is what lets it survive a
crash of this process itself (temporal-tuned's worker and DBOS live here).

With `--tls-ca` (and `--tls-cert`/`--tls-key`, the gateway's client certificate) the gateway
calls over HTTPS what it calls over HTTP: the initiator sidecar, or the services its
temporal-tuned worker or DBOS calls. `--token-file` sends the token in it as `Authorization:
Bearer` to the sidecar instead of (or besides) a certificate. The Temporal frontend and the
Restate ingress are reached in plaintext: neither server can serve TLS
(baselines/temporal/README.md, baselines/restate/README.md). Locust reaches the gateway itself
in plaintext, for every system alike.

    python -m bench.gateway --system accompanist --workload warehouse --port 8080 \
        --sidecar http://127.0.0.1:7001
    python -m bench.gateway --system temporal-tuned --workload warehouse --port 8080 \
        --temporal 127.0.0.1:7233 --service-url warehouse=http://127.0.0.1:8001 ...
    python -m bench.gateway --system restate --workload warehouse --port 8080 \
        --restate http://127.0.0.1:8180
    python -m bench.gateway --system dbos --workload warehouse --port 8080 \
        --dbos-db dbos.sqlite --service-url warehouse=http://127.0.0.1:8001 ...

This process must never import gevent (Locust runs apart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from accompanist_py import eventloop
from accompanist_py.backoff import Backoff
from accompanist_py.tls import client_context
from bench.matrix import SYSTEMS
from workloads import discover
from workloads.outcomes import OUTCOMES

# The deployments the gateway fronts, each by the system that names it: systems that differ only
# in configuration share one (accompanist-default runs accompanist's).
DEPLOYMENTS = {s.deployment: s for s in SYSTEMS.values() if s.deployment == s.name}
T = TypeVar("T")
MAX_SAGA_ID = 200


@dataclass(frozen=True)
class GatewayConfig:
    """Everything one gateway process is told on its command line."""

    system: str
    workload: str
    host: str = "127.0.0.1"
    port: int = 8080
    deadline_s: float = 120.0  # one saga, retries through restarts included
    sidecar: str = "http://127.0.0.1:7001"
    choreography: str | None = None  # default: the workload's name
    temporal: str = "127.0.0.1:7233"
    namespace: str = "default"
    service_urls: dict[str, str] = field(default_factory=dict)
    tls_ca: Path | None = None  # the CA of the sidecar's (or the services') certificates
    tls_cert: Path | None = None  # the gateway's client certificate and key
    tls_key: Path | None = None
    token: str | None = None  # bearer token for the sidecar
    restate: str = "http://127.0.0.1:8180"  # the Restate server's ingress
    dbos_db: Path = Path("dbos.sqlite")  # DBOS's system database

    def client_tls(self) -> ssl.SSLContext | None:
        """The context the gateway's HTTPS calls use, or None for plaintext."""
        if self.tls_ca is None:
            return None
        # Without a certificate (a token client) it verifies the server and presents none.
        return client_context(self.tls_ca, self.tls_cert, self.tls_key)


class BackendError(Exception):
    """The saga failed for good: its system ended it without an outcome, or refused it."""

    status = 500


class BackendUnavailable(BackendError):
    """The saga's system stayed unreachable or kept restarting until the deadline; the saga may
    still end well, so a client should post it again."""

    status = 503


class _NotYet(Exception):
    """What the backend answered is worth asking again (it was restarting, or is still busy)."""


async def _retrying(attempt: Callable[[], Awaitable[T]], deadline_s: float) -> T:
    """`attempt()` until it returns, retrying each `_NotYet` with the runtime's backoff.

    Past `deadline_s` the last problem becomes a `BackendUnavailable`. Safe only because every
    attempt names the saga by its id, so that a retry joins the saga the first one started.
    """
    backoff = Backoff()
    deadline = time.monotonic() + deadline_s
    retries = 0
    while True:
        try:
            return await attempt()
        except _NotYet as problem:
            retries += 1
            delay = backoff.delay(retries)
            if time.monotonic() + delay > deadline:
                raise BackendUnavailable(str(problem)) from problem
        await asyncio.sleep(delay)


class Backend(ABC):
    """Runs one saga to its end and returns the outcome record."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect (and, for tuned Temporal, start the in-process worker)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and stop anything `start` began."""

    @abstractmethod
    async def run(self, saga_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """The saga's outcome; the same for every call with the same saga id."""


class _HttpBackend(Backend):
    """A backend reached by `POST url` over one keep-alive HTTP(S) session, retried through
    restarts of what answers it."""

    what = "backend"  # how its problems are named

    def __init__(
        self,
        url: str,
        deadline_s: float,
        tls: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url, self.deadline_s, self.tls = url, deadline_s, tls
        self.headers = headers or {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=self.tls or True),
            timeout=aiohttp.ClientTimeout(total=self.deadline_s),
            headers=self.headers,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def not_yet(self, status: int) -> bool:
        """Whether an answer with `status` is worth asking again (the backend restarts)."""
        return status >= 500

    async def post(self, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """`(status, JSON payload)` of the first answer that is not `not_yet`, or
        `BackendUnavailable` past the deadline."""
        assert self._session is not None, "start() first"
        session = self._session

        async def attempt() -> tuple[int, Any]:
            try:
                async with session.post(self.url, json=body, headers=headers) as response:
                    status, payload = response.status, await response.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, ValueError) as error:
                raise _NotYet(f"{self.what} unreachable: {error!r}") from error
            if self.not_yet(status):
                raise _NotYet(f"{self.what} answered {status}: {payload}")
            return status, payload

        return await _retrying(attempt, self.deadline_s)


class AccompanistBackend(_HttpBackend):
    """Forwards to the initiator sidecar over one keep-alive HTTP session."""

    what = "sidecar"

    def __init__(self, config: GatewayConfig) -> None:
        super().__init__(
            f"{config.sidecar.rstrip('/')}/sessions/{config.choreography or config.workload}",
            config.deadline_s,
            config.client_tls(),
            {"Authorization": f"Bearer {config.token}"} if config.token else {},
        )

    def not_yet(self, status: int) -> bool:
        # 202: the session runs on (the sidecar stopped waiting for it, or is recovering it).
        return status >= 500 or status == 202

    async def run(self, saga_id: str, request: dict[str, Any]) -> dict[str, Any]:
        # The session id makes the start idempotent: a sidecar that knows it attaches to it.
        body = {"session_id": saga_id, "args": [request], "kwargs": {}, "wait": True}
        status, payload = await self.post(body)
        if status != 200:
            raise BackendError(f"sidecar answered {status}: {payload}")
        result = payload.get("result") if isinstance(payload, dict) else None
        if not isinstance(result, dict) or result.get("outcome") not in OUTCOMES:
            raise BackendError(f"session ended without an outcome: {payload}")
        return {**result, "saga_id": saga_id, "reason": result.get("reason")}


class TemporalBackend(Backend):
    """Starts (or attaches to) the workflow whose id is the saga id and awaits its result."""

    def __init__(self, config: GatewayConfig) -> None:
        # Imported here so that an accompanist gateway does not load the Temporal SDK at all.
        from baselines.temporal.worker import CONFIGS
        from baselines.temporal.workflows import WORKFLOWS

        self.config = config
        self.tuning = CONFIGS[DEPLOYMENTS[config.system].config]
        self.twin = WORKFLOWS[config.workload]
        self._client: Any = None
        self._worker = contextlib.AsyncExitStack()

    async def start(self) -> None:
        from temporalio.client import Client

        from baselines.temporal.worker import running_worker, task_queue

        self._client = await Client.connect(self.config.temporal, namespace=self.config.namespace)
        if not self.tuning.per_service_workers:
            missing = set(self.twin.services) - set(self.config.service_urls)
            if missing:
                raise SystemExit(f"--service-url missing for {sorted(missing)}")
            await self._worker.enter_async_context(
                running_worker(
                    self._client,
                    self.tuning,
                    self.twin,
                    self.config.service_urls,
                    host_workflows=True,
                    queue=task_queue(self.tuning, self.twin.name),
                    service_tls=self.config.client_tls(),
                )
            )

    async def close(self) -> None:
        await self._worker.aclose()

    async def run(self, saga_id: str, request: dict[str, Any]) -> dict[str, Any]:
        from temporalio.client import WorkflowFailureError
        from temporalio.service import RPCError, RPCStatusCode

        from baselines.temporal.starter import run_saga

        # What a server restart looks like from here; anything else is answered at once.
        transient = {
            RPCStatusCode.UNAVAILABLE,
            RPCStatusCode.DEADLINE_EXCEEDED,
            RPCStatusCode.RESOURCE_EXHAUSTED,
            RPCStatusCode.ABORTED,
            RPCStatusCode.INTERNAL,
            RPCStatusCode.UNKNOWN,
        }

        async def attempt() -> dict[str, Any]:
            # The workflow id is the saga id: a retry attaches to the workflow the first started.
            try:
                return await run_saga(self._client, self.tuning, self.twin, saga_id, request)
            except WorkflowFailureError as error:
                raise BackendError(f"workflow {saga_id} failed: {error.cause}") from error
            except RPCError as error:
                if error.status not in transient:
                    raise BackendError(f"temporal: {error}") from error
                raise _NotYet(f"temporal: {error}") from error

        return await _retrying(attempt, self.config.deadline_s)


class RestateBackend(_HttpBackend):
    """Calls the workload's handler through the Restate ingress, the saga id as idempotency key."""

    what = "restate"

    def __init__(self, config: GatewayConfig) -> None:
        from baselines.restate.handler import HANDLER

        super().__init__(f"{config.restate.rstrip('/')}/{config.workload}/{HANDLER}",
                         config.deadline_s)  # fmt: skip

    def not_yet(self, status: int) -> bool:
        # What a restarting server or a missing deployment looks like; the rest are answers.
        return status in (502, 503, 504)

    async def run(self, saga_id: str, request: dict[str, Any]) -> dict[str, Any]:
        status, payload = await self.post(request, {"idempotency-key": saga_id})
        if status != 200 or not isinstance(payload, dict) or payload.get("outcome") not in OUTCOMES:
            raise BackendError(f"restate answered {status}: {payload}")
        return {**payload, "saga_id": saga_id}


class DbosBackend(Backend):
    """Runs the saga as a DBOS workflow in this process, the saga id as the workflow id."""

    def __init__(self, config: GatewayConfig) -> None:
        # Imported here so that no other gateway loads DBOS.
        from baselines.dbos.saga import DbosHost

        missing = set(discover()[config.workload].services) - set(config.service_urls)
        if missing:
            raise SystemExit(f"--service-url missing for {sorted(missing)}")
        self.workload, self.deadline_s = config.workload, config.deadline_s
        self.host = DbosHost(config.dbos_db, config.service_urls, tls=config.client_tls())

    async def start(self) -> None:
        await self.host.start()

    async def close(self) -> None:
        await self.host.stop()

    async def run(self, saga_id: str, request: dict[str, Any]) -> dict[str, Any]:
        from sqlalchemy.exc import DBAPIError

        async def attempt() -> dict[str, Any]:
            try:
                return await self.host.run(self.workload, saga_id, request)
            except DBAPIError as error:  # the system database, busy: worth asking again
                raise _NotYet(f"dbos system database: {error}") from error
            except Exception as error:  # the workflow failed: DBOS records it, and so do we
                raise BackendError(f"workflow {saga_id} failed: {error!r}") from error

        # The same bound as the other backends': past it the saga runs on, and the client
        # hears 503 (post it again) rather than waiting on the step retries inside.
        try:
            async with asyncio.timeout(self.deadline_s):
                return await _retrying(attempt, self.deadline_s)
        except TimeoutError as error:
            raise BackendUnavailable(f"workflow {saga_id} still running") from error


BACKENDS: dict[str, Callable[[GatewayConfig], Backend]] = {
    "accompanist": AccompanistBackend,
    "temporal": TemporalBackend,
    "restate": RestateBackend,
    "dbos": DbosBackend,
}


def backend_for(config: GatewayConfig) -> Backend:
    """The backend of `config.system`, a deployment name."""
    system = DEPLOYMENTS.get(config.system)
    if system is None:
        raise ValueError(f"unknown system {config.system!r}; expected one of {list(DEPLOYMENTS)}")
    return BACKENDS[system.kind](config)


def parse_saga(body: Any) -> tuple[str, dict[str, Any]]:
    """Validate a `POST /sagas` body; raise ValueError with a message for the client."""
    if not isinstance(body, dict):
        raise ValueError('body must be a JSON object {"saga_id": str, "request": {...}}')
    saga_id, request = body.get("saga_id"), body.get("request")
    if not isinstance(saga_id, str) or not saga_id or len(saga_id) > MAX_SAGA_ID:
        raise ValueError(f"saga_id must be a non-empty string of at most {MAX_SAGA_ID} characters")
    if not isinstance(request, dict):
        raise ValueError("request must be a JSON object")
    return saga_id, request


def make_app(config: GatewayConfig, backend: Backend) -> web.Application:
    """The aiohttp application; `backend` is started and closed with it."""

    async def post_saga(request: web.Request) -> web.Response:
        workload = request.match_info["workload"]
        if workload != config.workload:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"unknown workload {workload!r}"}),
                content_type="application/json",
            )
        try:
            saga_id, saga_request = parse_saga(await request.json())
        except ValueError as error:  # includes malformed JSON
            raise web.HTTPBadRequest(
                text=json.dumps({"error": str(error)}), content_type="application/json"
            ) from error
        try:
            outcome = await backend.run(saga_id, saga_request)
        except BackendError as error:
            return web.json_response({"saga_id": saga_id, "error": str(error)}, status=error.status)
        return web.json_response(outcome)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"system": config.system, "workload": config.workload})

    async def lifecycle(_: web.Application) -> Any:
        await backend.start()
        yield
        await backend.close()

    app = web.Application()
    app.router.add_post("/sagas/{workload}", post_saga)
    app.router.add_get("/health", health)
    app.cleanup_ctx.append(lifecycle)
    return app


async def serve(config: GatewayConfig) -> None:
    """Serve until SIGTERM or SIGINT, then shut the backend down cleanly."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    runner = web.AppRunner(make_app(config, backend_for(config)), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port, backlog=1024).start()
        print(
            f"gateway {config.system}/{config.workload} on {config.host}:{config.port}", flush=True
        )
        eventloop.announce()
        await stopping.wait()
    finally:
        await runner.cleanup()


def parse_args(argv: list[str] | None = None) -> GatewayConfig:
    """The command line as a `GatewayConfig`."""
    parser = argparse.ArgumentParser(description="Saga gateway in front of one system")
    parser.add_argument("--system", choices=list(DEPLOYMENTS), required=True)
    parser.add_argument("--workload", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--deadline-s", type=float, default=120.0)
    parser.add_argument("--sidecar", default="http://127.0.0.1:7001", help="initiator sidecar")
    parser.add_argument("--choreography", default=None, help="default: the workload name")
    parser.add_argument("--temporal", default="127.0.0.1:7233")
    parser.add_argument("--namespace", default="default")
    parser.add_argument(
        "--service-url",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="temporal-tuned and dbos: where the in-process runtime reaches each service",
    )
    parser.add_argument("--tls-ca", type=Path, help="call HTTPS backends signed by this CA")
    parser.add_argument("--tls-cert", type=Path, help="the gateway's client certificate")
    parser.add_argument("--tls-key", type=Path, help="its private key")
    parser.add_argument("--token-file", type=Path, help="a bearer token for the sidecar")
    parser.add_argument("--restate", default="http://127.0.0.1:8180", help="Restate ingress")
    parser.add_argument("--dbos-db", type=Path, default=Path("dbos.sqlite"),
                        help="dbos: the SQLite system database (kept across restarts)")  # fmt: skip
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None) or (
        args.tls_cert is not None and args.tls_ca is None
    ):
        parser.error("--tls-cert and --tls-key go together, and need --tls-ca")
    urls = {}
    for item in args.service_url:
        name, sep, url = item.partition("=")
        if not sep:
            parser.error(f"--service-url wants NAME=URL, got {item!r}")
        urls[name] = url
    return GatewayConfig(
        system=args.system,
        workload=args.workload,
        host=args.host,
        port=args.port,
        deadline_s=args.deadline_s,
        sidecar=args.sidecar,
        choreography=args.choreography,
        temporal=args.temporal,
        namespace=args.namespace,
        service_urls=urls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token=args.token_file.read_text().strip() if args.token_file else None,
        restate=args.restate,
        dbos_db=args.dbos_db,
    )


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    config = parse_args(argv)
    eventloop.run(serve(config))
    if config.system.startswith("temporal-"):
        from baselines.temporal.worker import exit_without_finalizers

        exit_without_finalizers()


if __name__ == "__main__":
    main()
