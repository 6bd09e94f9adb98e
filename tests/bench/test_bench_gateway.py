"""The gateway tells a client whether posting a saga again can help: 503 when its system stayed
unreachable (or kept restarting) until the deadline, 500 with the reason when the saga failed
for good; the same for both backends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bench.gateway import (
    AccompanistBackend,
    Backend,
    GatewayConfig,
    TemporalBackend,
    make_app,
)
from launch import free_port

SAGA = {"saga_id": "g-1", "request": {"n": 1}}
DEADLINE_S = 0.3  # the gateway's own retrying, kept short: these backends never come back


async def _post(backend: Backend, config: GatewayConfig) -> tuple[int, dict[str, Any]]:
    async with TestClient(TestServer(make_app(config, backend))) as client:
        response = await client.post(f"/sagas/{config.workload}", json=SAGA)
        return response.status, await response.json()


def _config(system: str, **changes: Any) -> GatewayConfig:
    return GatewayConfig(system=system, workload="warehouse", deadline_s=DEADLINE_S, **changes)


@contextlib.asynccontextmanager
async def _sidecar(answer: dict[str, Any], status: int = 200) -> AsyncIterator[str]:
    """A stand-in initiator sidecar that answers every session start with `answer`."""

    async def start(_: web.Request) -> web.Response:
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_post("/sessions/{choreography}", start)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_an_unreachable_sidecar_is_answered_503_once_the_deadline_passes() -> None:
    config = _config("accompanist", sidecar=f"http://127.0.0.1:{free_port()}")
    status, body = await _post(AccompanistBackend(config), config)
    assert status == 503 and "sidecar unreachable" in body["error"], body


async def test_a_sidecar_refusal_is_answered_500_with_its_reason() -> None:
    async with _sidecar({"error": "no such choreography"}, 404) as url:
        config = _config("accompanist", sidecar=url)
        status, body = await _post(AccompanistBackend(config), config)
    assert status == 500 and "404" in body["error"] and "no such choreography" in body["error"]


async def test_a_session_without_an_outcome_is_answered_500() -> None:
    async with _sidecar({"result": {"something": "else"}}) as url:
        config = _config("accompanist", sidecar=url)
        status, body = await _post(AccompanistBackend(config), config)
    assert status == 500 and "without an outcome" in body["error"], body


class _Serverless(TemporalBackend):
    async def start(self) -> None:
        """No client: every saga goes to the run_saga the test put in place."""


def _temporal_failing_with(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> Backend:
    """A temporal-distributed backend whose every saga fails with `error`, without a server."""
    import baselines.temporal.starter as starter

    async def failing(*_: Any) -> dict[str, Any]:
        raise error

    monkeypatch.setattr(starter, "run_saga", failing)
    return _Serverless(_config("temporal-distributed"))


async def test_a_failed_workflow_is_answered_500_with_its_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from temporalio.client import WorkflowFailureError

    backend = _temporal_failing_with(monkeypatch, WorkflowFailureError(cause=ValueError("boom")))
    status, body = await _post(backend, _config("temporal-distributed"))
    assert status == 500 and "failed" in body["error"] and "boom" in body["error"], body


async def test_an_unavailable_temporal_frontend_is_answered_503_once_the_deadline_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from temporalio.service import RPCError, RPCStatusCode

    down = RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")
    status, body = await _post(
        _temporal_failing_with(monkeypatch, down), _config("temporal-distributed")
    )
    assert status == 503 and "connection refused" in body["error"], body


async def test_a_temporal_refusal_is_answered_500(monkeypatch: pytest.MonkeyPatch) -> None:
    from temporalio.service import RPCError, RPCStatusCode

    refused = RPCError("bad namespace", RPCStatusCode.INVALID_ARGUMENT, b"")
    status, body = await _post(
        _temporal_failing_with(monkeypatch, refused), _config("temporal-distributed")
    )
    assert status == 500 and "bad namespace" in body["error"], body
