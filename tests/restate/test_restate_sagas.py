"""The Restate twin runs every saga path to the outcome the workload spec prescribes, and a saga
in flight survives a SIGKILL of the handler process and of the Restate server.

Real Restate server (the npm package's binary), a real handler process, real service processes.
Requests are drawn with a high abort rate so that every abort path and the hotel's early endings
occur; afterwards the workload's checker must find the services consistent with the outcomes the
client saw.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from baselines.restate.testing import post_saga, running_restate
from launch import free_port
from workloads import discover
from workloads.consistency import fetch_states
from workloads.launch import running_services
from workloads.testing import BATCH_ABORT_RATE, assert_batch_as_specified, batch_requests


@pytest.mark.parametrize("workload", ["warehouse", "hotel"])
async def test_every_saga_path_ends_as_specified_and_leaves_services_consistent(
    workload: str, tmp_path: Path
) -> None:
    requests = batch_requests(workload, 7)
    async with (
        running_services(workload, tmp_path, seed=7, size=50, abort_rate=BATCH_ABORT_RATE) as urls,
        running_restate(urls, tmp_path) as (server, _),
        aiohttp.ClientSession() as http,
    ):
        outcomes = await asyncio.gather(*(post_saga(http, server, workload, r) for r in requests))
        # The same keys again: the recorded outcomes, and no step runs twice.
        again = await asyncio.gather(*(post_saga(http, server, workload, r) for r in requests))
        states = await asyncio.to_thread(fetch_states, urls)

    assert again == outcomes
    assert_batch_as_specified(workload, requests, outcomes, states)


@pytest.mark.parametrize("victim", ["handler", "server"])
async def test_sagas_in_flight_survive_a_kill_of_the_handler_or_the_server(
    victim: str, tmp_path: Path
) -> None:
    """The services are down at first, so every saga's first step keeps retrying; the victim is
    killed with SIGKILL and started again, the services come up, and every saga commits."""
    descriptor = discover()["warehouse"]
    requests = descriptor.requests(11, 6, 0.0)
    ports = {service: free_port() for service in descriptor.services}
    urls = {service: f"http://127.0.0.1:{port}" for service, port in ports.items()}
    async with (
        running_restate(urls, tmp_path) as (server, handlers),
        aiohttp.ClientSession() as http,
    ):
        waiting = [asyncio.ensure_future(post_saga(http, server, "warehouse", r)) for r in requests]
        done, _ = await asyncio.wait(waiting, timeout=2)
        assert not done  # all of them are in flight, retrying their first step
        if victim == "handler":
            handlers.kill()
            await handlers.start()
        else:
            server.kill()
            for future in waiting:  # their connections died with the server
                future.cancel()
            await server.start()
            waiting = [
                asyncio.ensure_future(post_saga(http, server, "warehouse", r)) for r in requests
            ]
        async with running_services(
            "warehouse", tmp_path, seed=11, size=50, abort_rate=0.0, ports=ports
        ):
            outcomes = await asyncio.gather(*waiting)
            states = await asyncio.to_thread(fetch_states, urls)
    assert [o["outcome"] for o in outcomes] == ["committed"] * len(requests)
    report = descriptor.check(states, sent={o["saga_id"]: o["outcome"] for o in outcomes})
    assert report.ok, report.summary()
