"""Temporal detects a dead worker as fast as the sidecars do, with the sidecars' own numbers.

The call policy is read from the sidecar's defaults, not copied; a service call on a worker that
is killed -9 is given up after the heartbeat timeout (the sidecars' longest resend interval),
not after the whole start-to-close timeout; and a call slower than the heartbeat timeout on a
live worker is kept alive by its heartbeats rather than run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from temporalio import workflow
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from accompanist_py.sidecar.config import parse
from baselines.temporal.activities import ACTIVITY_NAME, CALL_POLICY, ServiceCall
from baselines.temporal.devserver import DevServer
from bench.systems.accompanist import sidecar_config
from launch import ProcessSpec
from launch.process import HostProcess, ProcessBackend

CALLS_QUEUE = "failure-detection-calls"
FLOWS_QUEUE = "failure-detection-flows"
# A worker for the `service_call` activity alone, in a process of its own so that it can die.
WORKER = """
import asyncio, sys
from temporalio.client import Client
from temporalio.worker import Worker
from accompanist_py import eventloop
from baselines.temporal.activities import ServiceActivities

async def main(target, url, queue):
    client = await Client.connect(target)
    calls = ServiceActivities({"svc": url})
    async with Worker(client, task_queue=queue, activities=[calls.call]):
        print("polling", flush=True)
        await asyncio.Event().wait()

eventloop.run(main(*sys.argv[1:]))
"""


@workflow.defn(sandboxed=False)
class OneCall:
    """One service call with the baseline's policy, on the activity worker's queue."""

    @workflow.run
    async def run(self, operation: str) -> dict:
        return await workflow.execute_activity(
            ACTIVITY_NAME,
            ServiceCall("svc", operation, f"{workflow.info().workflow_id}:call", {}),
            result_type=dict,
            task_queue=CALLS_QUEUE,
            **CALL_POLICY.activity_options(),
        )


def test_the_call_policy_is_the_sidecars_own_timeouts() -> None:
    minimal = {"name": "a", "roles": ["a"], "listen": "127.0.0.1:1", "choreographies": ["m"]}
    for config in (
        parse({**minimal, "mode": "default"}),
        parse(tomllib.loads(sidecar_config("a", 1, None, {}, "m"))),
    ):
        assert config.service_call_s == CALL_POLICY.start_to_close_s
        assert config.service_deadline_s == CALL_POLICY.schedule_to_close_s
        assert config.node.backoff.initial_s == CALL_POLICY.retry_initial_s
        assert config.node.backoff.multiplier == CALL_POLICY.retry_backoff
        assert config.node.backoff.max_s == CALL_POLICY.retry_max_s
    assert CALL_POLICY.heartbeat_timeout_s == CALL_POLICY.retry_max_s


class _Service:
    """A service whose first call to `hang` never answers and whose `slow` takes 2.5 s."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.first_call = asyncio.Event()

    async def op(self, request: web.Request) -> web.Response:
        operation = request.match_info["operation"]
        self.calls[operation] = self.calls.get(operation, 0) + 1
        self.first_call.set()
        if operation == "hang" and self.calls[operation] == 1:
            await asyncio.sleep(3600)
        if operation == "slow":
            await asyncio.sleep(3 * CALL_POLICY.heartbeat_timeout_s - 0.5)
        return web.json_response({"operation": operation, "calls": self.calls[operation]})


@contextlib.asynccontextmanager
async def _serving(service: _Service) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/ops/{operation}", service.op)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def _activity_worker(target: str, url: str, log: Path) -> Iterator[HostProcess]:
    argv = [sys.executable, "-c", WORKER, target, url, CALLS_QUEUE]
    process = ProcessBackend().launch(ProcessSpec("activity-worker", argv), log, 1)
    try:
        yield process
    finally:
        process.stop(signal.SIGKILL, 0.0)


async def _started(client: Client, workflow_id: str) -> Any:
    """The ACTIVITY_TASK_STARTED event of the workflow's one call (the attempt that finished)."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    started = [
        e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert len(started) == 1
    return started[0].activity_task_started_event_attributes


@contextlib.asynccontextmanager
async def _one_call_flows(server: DevServer) -> AsyncIterator[tuple[Client, _Service, str]]:
    """A client, the service and its URL, and a worker hosting `OneCall` in this process."""
    service = _Service()
    client = await Client.connect(server.target, namespace=server.namespace)
    async with (
        _serving(service) as url,
        Worker(
            client,
            task_queue=FLOWS_QUEUE,
            workflows=[OneCall],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ),
    ):
        yield client, service, url


async def test_a_killed_workers_call_is_given_up_after_the_heartbeat_timeout(
    temporal_server: DevServer, tmp_path: Path
) -> None:
    async with _one_call_flows(temporal_server) as (client, service, url):
        handle = await client.start_workflow(
            OneCall.run, "hang", id="killed-worker", task_queue=FLOWS_QUEUE
        )
        with _activity_worker(temporal_server.target, url, tmp_path / "first.log") as first:
            await asyncio.wait_for(service.first_call.wait(), 60)
            first.stop(signal.SIGKILL, 0.0)
        with _activity_worker(temporal_server.target, url, tmp_path / "second.log"):
            result = await asyncio.wait_for(handle.result(), 60)
        started = await _started(client, "killed-worker")
    assert result == {"operation": "hang", "calls": 2}
    assert started.attempt == 2
    timeout = started.last_failure.timeout_failure_info.timeout_type
    assert timeout == TimeoutType.TIMEOUT_TYPE_HEARTBEAT, TimeoutType.Name(timeout)


async def test_a_slow_call_on_a_live_worker_is_kept_alive_by_its_heartbeats(
    temporal_server: DevServer, tmp_path: Path
) -> None:
    async with _one_call_flows(temporal_server) as (client, _, url):
        with _activity_worker(temporal_server.target, url, tmp_path / "worker.log"):
            result = await asyncio.wait_for(
                client.execute_workflow(
                    OneCall.run, "slow", id="slow-call", task_queue=FLOWS_QUEUE
                ),
                60,
            )
        started = await _started(client, "slow-call")
    assert result == {"operation": "slow", "calls": 1}
    assert started.attempt == 1
