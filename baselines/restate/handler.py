"""Every workload's saga as a Restate handler, and the process that serves them.

Restate is a durable-execution server: a client calls a handler through the server's ingress,
the server invokes the handler over HTTP/2 on the deployment that hosts it and journals every
step the handler reports. The handler here is `workloads.saga.run_saga` over the workload's
steps (its descriptor's `steps`), so it sends the requests every other system sends, under the
same idempotency keys, in the same order, and compensates in reverse order on a refusal. Each
call is one `ctx.run`: one attempt at the service (`baselines.contract.attempt`), its answer
journaled by the server before the handler goes on. A transient failure is retried by Restate
with the sidecars' backoff (50 ms doubling to 1 s) until the sidecars' deadline; a refusal
(409, or another 4xx) is an answer, journaled like a result.

One Restate service per workload, named after it, with one handler, `run`; the client calls it
with the saga id as the `idempotency-key`, so a saga posted again attaches to the invocation the
first post started. The handler's own invocations are retried by the server with the same
backoff when this process dies (`INVOCATION_RETRY`), unlimited: the harness kills it and starts
it again, and the server replays each unfinished invocation's journal here.

    python -m baselines.restate.handler --port 9080 \
        --service-url warehouse=http://127.0.0.1:8001 --service-url payment=...
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import restate
from hypercorn.asyncio import serve
from hypercorn.config import Config
from restate import RunOptions, TerminalError

from accompanist_py import eventloop
from accompanist_py.tls import client_context
from baselines.contract import CALL_POLICY, attempt
from workloads import Workload, discover
from workloads.saga import CompensationRefused, Refused, run_saga

HANDLER = "run"
H2_MAX_STREAMS = 1000  # the server's own concurrent-invocations-limit
_BACKOFF = CALL_POLICY.backoff
# A step's retries: the sidecars' backoff, for as long as their service deadline.
STEP_RETRY: RunOptions[dict] = RunOptions(
    initial_retry_interval=timedelta(seconds=_BACKOFF.initial_s),
    retry_interval_factor=_BACKOFF.multiplier,
    max_retry_interval=timedelta(seconds=_BACKOFF.max_s),
    max_duration=timedelta(seconds=CALL_POLICY.deadline_s),
)
# An invocation whose handler process died: tried again as a sidecar resends to a restarted peer.
INVOCATION_RETRY = restate.InvocationRetryPolicy(
    initial_interval=timedelta(seconds=_BACKOFF.initial_s),
    exponentiation_factor=_BACKOFF.multiplier,
    max_interval=timedelta(seconds=_BACKOFF.max_s),
)


class _Calls:
    """The process's service URLs and its one keep-alive HTTP(S) session."""

    urls: dict[str, str] = {}
    tls: ssl.SSLContext | None = None
    session: aiohttp.ClientSession | None = None


async def _attempt(role: str, operation: str, key: str, body: dict[str, Any]) -> dict:
    """One attempt at a step; what Restate journals: `{"result": ...}` or `{"refused": ...}`.
    A transient failure raises, so that Restate retries it under `STEP_RETRY`."""
    url = _Calls.urls.get(role)
    if url is None:
        raise TerminalError(f"this handler has no URL for service {role!r}", status_code=400)
    if _Calls.session is None:
        _Calls.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0,
                                               ssl=_Calls.tls or True))  # fmt: skip
    answer = await attempt(_Calls.session, url, operation, key, body)
    return answer.as_record()


def saga_service(workload: Workload) -> restate.Service:
    """The Restate service of one workload: `POST /<workload>/run` with its request."""
    service = restate.Service(workload.name)

    @service.handler(HANDLER, invocation_retry_policy=INVOCATION_RETRY)
    async def run(ctx: restate.Context, request: dict[str, Any]) -> dict[str, Any]:
        saga_id = str(request["saga_id"])

        async def step(role: str, operation: str, key: str, body: dict[str, Any]) -> dict:
            answer = await ctx.run_typed(key, _attempt, STEP_RETRY, role, operation, key, body)
            if "refused" in answer:
                raise Refused(answer["refused"])
            return answer["result"]

        try:
            done = await run_saga(saga_id, workload.steps, request, step)
        except CompensationRefused as error:
            raise TerminalError(f"saga {saga_id}: {error}") from error  # a service bug
        return {k: done[k] for k in ("saga_id", "outcome", "reason")}

    return service


def application() -> Any:
    """The ASGI application serving every workload's saga."""
    return restate.app([saga_service(w) for w in discover().values()])


async def serve_handlers(port: int, host: str = "127.0.0.1") -> None:
    """Serve until SIGTERM or SIGINT (HTTP/2 in cleartext, as the server speaks to it)."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = "-"
    config.keep_alive_timeout = 600  # the server keeps its connections to a deployment open
    # The server runs every invocation as one HTTP/2 stream and opens another connection past
    # 128 of them (its http2-streams-per-connection-limit); hypercorn's default of 100
    # concurrent streams would queue invocations below that, here and nowhere else.
    config.h2_max_concurrent_streams = H2_MAX_STREAMS
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    serving = asyncio.ensure_future(serve(application(), config, shutdown_trigger=stopping.wait))
    print(f"restate handlers on {host}:{port}", flush=True)
    eventloop.announce()
    try:
        await serving
    finally:
        if _Calls.session is not None:
            await _Calls.session.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m baselines.restate.handler", description=__doc__
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--service-url", action="append", default=[], metavar="NAME=URL")
    parser.add_argument("--tls-ca", type=Path, help="CA of the services' certificates")
    parser.add_argument("--tls-cert", type=Path, help="this process's client certificate")
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args(argv)
    _Calls.urls = dict(u.split("=", 1) for u in args.service_url)
    if args.tls_ca is not None:
        _Calls.tls = client_context(args.tls_ca, args.tls_cert, args.tls_key)
    eventloop.run(serve_handlers(args.port, args.host))


if __name__ == "__main__":
    main()
