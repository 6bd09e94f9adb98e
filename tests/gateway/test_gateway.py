"""The gateway gives both systems one HTTP entry point with the same contract.

Temporal: a real gateway process in front of the real dev server, services and workers, in
both configurations. Accompanist: a real gateway process in front of a stand-in initiator
sidecar that records what it is asked, so that the forwarding contract is pinned down
independently of the runtime.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from baselines.temporal.devserver import DevServer
from baselines.temporal.testing import running_gateway, running_workers
from baselines.temporal.worker import deployment
from launch import free_port
from workloads import discover
from workloads.launch import running_services_sync

WAREHOUSE = discover()["warehouse"]


@pytest.fixture(scope="module", params=["distributed", "tuned"])
def temporal_gateway(
    request: pytest.FixtureRequest,
    temporal_server: DevServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(config, gateway URL, service URLs) for one Temporal configuration."""
    config = request.param
    logdir = tmp_path_factory.mktemp(f"gateway-{config}")
    with running_services_sync("warehouse", logdir, seed=5, size=50, abort_rate=0.5) as urls:
        plan = deployment(config, "warehouse", urls, temporal_server.target)
        args = ["--system", f"temporal-{config}", "--workload", "warehouse", *plan.gateway_args]
        with (
            running_workers(plan.workers, logdir),
            running_gateway(args, logdir) as (url, gateway),
        ):
            yield config, url, urls
        assert gateway.exit_code("gateway") == 0, "the gateway must shut down cleanly on SIGTERM"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, workload: str = "warehouse"
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(f"{url}/sagas/{workload}", data=data) as response:
        return response.status, await response.json(content_type=None)


def fetch_state(urls: dict[str, str]) -> dict[str, Any]:
    states = {}
    for service, url in urls.items():
        with urllib.request.urlopen(f"{url}/state", timeout=10) as response:
            states[service] = json.load(response)
    return states


async def test_sagas_end_with_their_outcome_and_reposts_never_run_them_twice(
    temporal_gateway: tuple[str, str, dict[str, str]], http: aiohttp.ClientSession
) -> None:
    config, url, urls = temporal_gateway
    requests = [
        {**r, "saga_id": f"gw-{config}-{r['saga_id']}"} for r in WAREHOUSE.requests(5, 8, 0.5)
    ]
    first = await asyncio.gather(
        *(post(http, url, {"saga_id": r["saga_id"], "request": r}) for r in requests)
    )
    # Re-posted while finished, and twice at once: the same answers, no second run.
    again = await asyncio.gather(
        *(post(http, url, {"saga_id": r["saga_id"], "request": r}) for r in requests * 2)
    )
    assert again == first * 2
    outcomes = {}
    for request, (status, outcome) in zip(requests, first, strict=True):
        assert status == 200, outcome
        assert outcome["saga_id"] == request["saga_id"]
        assert set(outcome) >= {"saga_id", "outcome", "reason"}
        outcomes[request["saga_id"]] = outcome["outcome"]
    assert set(outcomes.values()) == {"committed", "compensated"}
    states = await asyncio.to_thread(fetch_state, urls)
    report = WAREHOUSE.check(states, sent=outcomes)
    assert report.ok, report.summary()
    # Effects counted once: one idempotency record per step key of each saga at each service.
    keys = [r["key"] for state in states.values() for r in state["idempotency"]]
    assert len(keys) == len(set(keys))


async def test_a_saga_posted_twice_at_once_runs_once(
    temporal_gateway: tuple[str, str, dict[str, str]], http: aiohttp.ClientSession
) -> None:
    config, url, _ = temporal_gateway
    request = {**WAREHOUSE.requests(6, 1, 0)[0], "saga_id": f"gw-{config}-twice"}
    body = {"saga_id": request["saga_id"], "request": request}
    (status_a, a), (status_b, b) = await asyncio.gather(
        post(http, url, body), post(http, url, body)
    )
    assert (status_a, status_b) == (200, 200)
    assert a == b
    assert a["outcome"] == "committed"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        [],
        {"request": {}},
        {"saga_id": "", "request": {}},
        {"saga_id": 7, "request": {}},
        {"saga_id": "x" * 201, "request": {}},
        {"saga_id": "s", "request": "not an object"},
    ],
)
async def test_bad_input_is_answered_400_with_a_message(
    temporal_gateway: tuple[str, str, dict[str, str]], http: aiohttp.ClientSession, body: Any
) -> None:
    _, url, _ = temporal_gateway
    status, answer = await post(http, url, body)
    assert status == 400
    assert answer["error"]


async def test_unknown_workload_is_404_and_health_names_the_system(
    temporal_gateway: tuple[str, str, dict[str, str]], http: aiohttp.ClientSession
) -> None:
    config, url, _ = temporal_gateway
    status, answer = await post(http, url, {"saga_id": "s", "request": {}}, workload="nope")
    assert status == 404
    assert "nope" in answer["error"]
    async with http.get(f"{url}/health") as response:
        assert response.status == 200
        assert await response.json() == {"system": f"temporal-{config}", "workload": "warehouse"}


@pytest.fixture
async def stand_in_sidecar() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An initiator sidecar that records each start and ends every session committed."""
    received: list[dict[str, Any]] = []

    async def start(request: web.Request) -> web.Response:
        body = await request.json()
        received.append({"path": request.path, **body})
        result = {"outcome": "committed", "reason": None, "shipment": 1}
        return web.json_response(
            {"session_id": body["session_id"], "state": "completed", "result": result}
        )

    app = web.Application()
    app.router.add_post("/sessions/{choreography}", start)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", received
    await runner.cleanup()


async def test_accompanist_backend_forwards_a_start_to_the_initiator_sidecar(
    stand_in_sidecar: tuple[str, list[dict[str, Any]]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sidecar, received = stand_in_sidecar
    args = ["--system", "accompanist", "--workload", "warehouse", "--sidecar", sidecar]
    request = {"customer": "c", "item": "i", "quantity": 1}
    # The gateway is a subprocess; its startup poll must not block this loop's sidecar.
    with_gateway = running_gateway(args, tmp_path)
    url, _ = await asyncio.to_thread(with_gateway.__enter__)
    try:
        status, outcome = await post(http, url, {"saga_id": "s-1", "request": request})
    finally:
        await asyncio.to_thread(with_gateway.__exit__, None, None, None)
    assert status == 200
    assert outcome == {"saga_id": "s-1", "outcome": "committed", "reason": None, "shipment": 1}
    assert received == [
        {
            "path": "/sessions/warehouse",
            "session_id": "s-1",
            "args": [request],
            "kwargs": {},
            "wait": True,
        }
    ]
