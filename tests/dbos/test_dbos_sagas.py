"""The DBOS twin runs every saga path to the outcome the workload spec prescribes, and a killed
DBOS process resumes its unfinished workflows when it starts again.

Real DBOS Transact with its SQLite system database, real service processes. Requests are drawn
with a high abort rate so that every abort path and the hotel's early endings occur; afterwards
the workload's checker must find the services consistent with the outcomes the client saw.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from baselines.dbos.saga import DbosHost
from launch import ProcessSpec, free_port
from launch.process import HostProcess, ProcessBackend
from workloads import discover
from workloads.consistency import fetch_states
from workloads.launch import running_services
from workloads.testing import BATCH_ABORT_RATE, assert_batch_as_specified, batch_requests


@pytest.mark.parametrize("workload", ["warehouse", "hotel"])
async def test_every_saga_path_ends_as_specified_and_leaves_services_consistent(
    workload: str, tmp_path: Path
) -> None:
    requests = batch_requests(workload, 7)
    async with running_services(
        workload, tmp_path, seed=7, size=50, abort_rate=BATCH_ABORT_RATE
    ) as urls:
        host = DbosHost(tmp_path / "dbos.sqlite", urls)
        await host.start()
        try:
            outcomes = await asyncio.gather(
                *(host.run(workload, r["saga_id"], r) for r in requests)
            )
            # The same ids again: the recorded outcomes, and no step runs twice.
            again = await asyncio.gather(*(host.run(workload, r["saga_id"], r) for r in requests))
        finally:
            await host.stop()
        states = await asyncio.to_thread(fetch_states, urls)

    assert again == outcomes
    assert_batch_as_specified(workload, requests, outcomes, states)


# A DBOS process that starts the sagas it is given and announces each start. Its services are
# not up yet, so every first step keeps retrying: the kill lands while all of them are pending.
STARTER = """
import asyncio, json, sys
from pathlib import Path
from baselines.dbos.saga import DbosHost, saga
from dbos import DBOS, SetWorkflowID

async def main():
    database, urls, requests = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
    host = DbosHost(database, urls)
    await host.start()
    for request in requests:
        with SetWorkflowID(request["saga_id"]):
            await DBOS.start_workflow_async(saga, "warehouse", request["saga_id"], request)
        print("started", request["saga_id"], flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def _start(database: Path, urls: dict[str, str], requests: list[dict], log: Path) -> HostProcess:
    argv = [sys.executable, "-c", STARTER, str(database), json.dumps(urls), json.dumps(requests)]
    return ProcessBackend().launch(ProcessSpec("dbos-starter", argv), log, 1)


def _announced(log: Path) -> int:
    """How many starts the starter has announced, each on a line of its own (DBOS may log
    around them)."""
    return sum(line.startswith("started ") for line in log.read_text().splitlines())


async def test_a_killed_dbos_process_resumes_its_workflows_when_it_starts_again(
    tmp_path: Path,
) -> None:
    descriptor = discover()["warehouse"]
    requests = descriptor.requests(11, 6, 0.0)
    database = tmp_path / "dbos.sqlite"
    ports = {service: free_port() for service in descriptor.services}
    urls = {service: f"http://127.0.0.1:{port}" for service, port in ports.items()}
    log = tmp_path / "starter.log"
    starter = _start(database, urls, requests, log)
    try:
        while _announced(log) < len(requests):
            assert starter.poll() is None, log.read_text()
            await asyncio.sleep(0.05)
    finally:
        starter.stop(signal.SIGKILL, 0.0)
    async with running_services(
        "warehouse", tmp_path, seed=11, size=50, abort_rate=0.0, ports=ports
    ) as up:
        assert up == urls
        # A new process on the same system database recovers them, as the same executor, at
        # launch: nobody starts them again, their results are only awaited.
        host = DbosHost(database, urls)
        await host.start()
        try:
            outcomes = await asyncio.gather(*(host.result(r["saga_id"]) for r in requests))
        finally:
            await host.stop()
        states = await asyncio.to_thread(fetch_states, urls)
    assert [o["outcome"] for o in outcomes] == ["committed"] * len(requests)
    report = descriptor.check(states, sent={o["saga_id"]: o["outcome"] for o in outcomes})
    assert report.ok, report.summary()
