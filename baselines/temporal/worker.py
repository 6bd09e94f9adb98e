"""Temporal workers for the baseline, and the two configurations the benchmark reports.

`distributed` is how the paper's repository deploys Temporal: one worker process per service,
next to it, polling that service's task queue for regular activities; the initiator service's
worker also runs the workflows, in the default sandbox. `tuned` is the best honest latency we
found (measured in README.md): the workflow and its service calls run in one worker hosted by
the gateway, so the gateway's client gets eager workflow start; the workflow runner is
unsandboxed and service calls are local activities with the very same timeout and retry policy.
`deployment()` tells the harness which processes a configuration needs.

    python -m baselines.temporal.worker --config distributed --workload warehouse \
        --service payment --service-url http://127.0.0.1:8002 --temporal 127.0.0.1:7233
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import PollerBehaviorSimpleMaximum, UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from baselines.temporal.activities import ServiceActivities
from baselines.temporal.saga import Dispatch
from baselines.temporal.workflows import WORKFLOWS, TemporalWorkload


@dataclass(frozen=True)
class Tuning:
    """Every knob a configuration turns; printed in the benchmark report."""

    name: str
    per_service_workers: bool  # a worker process per service, per-service activity task queues
    sandboxed: bool  # the SDK's default sandboxed workflow runner
    local_activities: bool  # service calls as local activities in the workflow's worker
    eager_activities: bool  # activity tasks handed back with the workflow-task completion
    eager_start: bool  # client request_eager_start; needs the worker in the client's process
    max_cached_workflows: int = 1000
    workflow_pollers: int = 5
    activity_pollers: int = 5
    # Handling many sagas at once is the worker's job; the defaults cap neither side here.
    max_concurrent_workflow_tasks: int | None = None
    max_concurrent_activities: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CONFIGS: dict[str, Tuning] = {
    "distributed": Tuning(
        name="distributed",
        per_service_workers=True,
        sandboxed=True,
        local_activities=False,
        # The paper's deployment uses plain activities; with per-service queues eager execution
        # could only ever apply to the initiator's own steps, so it is off for a clean baseline.
        eager_activities=False,
        eager_start=False,
    ),
    "tuned": Tuning(
        name="tuned",
        per_service_workers=False,
        sandboxed=False,
        local_activities=True,
        eager_activities=True,
        eager_start=True,
    ),
}


def task_queue(tuning: Tuning, workload: str, service: str | None = None) -> str:
    """`{workload}-{config}` for workflows, `{workload}-{config}-{service}` for a service's
    activities: configurations sharing one server never pick up each other's tasks."""
    queue = f"{workload}-{tuning.name}"
    return f"{queue}-{service}" if service else queue


def dispatch(tuning: Tuning, workload: TemporalWorkload) -> Dispatch:
    """How this configuration's workflows route each service call."""
    if not tuning.per_service_workers:
        return Dispatch(local_activities=tuning.local_activities)
    queues = {service: task_queue(tuning, workload.name, service) for service in workload.services}
    return Dispatch(local_activities=False, task_queues=queues)


@contextlib.asynccontextmanager
async def running_worker(
    client: Client,
    tuning: Tuning,
    workload: TemporalWorkload,
    service_urls: dict[str, str],
    *,
    host_workflows: bool,
    queue: str,
) -> AsyncIterator[Worker]:
    """Run a worker until the block ends, then shut it down (the SDK needs that before exit)."""
    activities = ServiceActivities(service_urls)
    await activities.open()
    worker = Worker(
        client,
        task_queue=queue,
        workflows=[workload.workflow] if host_workflows else [],
        activities=[activities.call] if service_urls else [],
        workflow_runner=SandboxedWorkflowRunner()
        if tuning.sandboxed
        else UnsandboxedWorkflowRunner(),
        max_cached_workflows=tuning.max_cached_workflows,
        max_concurrent_workflow_tasks=tuning.max_concurrent_workflow_tasks,
        max_concurrent_activities=tuning.max_concurrent_activities,
        workflow_task_poller_behavior=PollerBehaviorSimpleMaximum(tuning.workflow_pollers),
        activity_task_poller_behavior=PollerBehaviorSimpleMaximum(tuning.activity_pollers),
        disable_eager_activity_execution=not tuning.eager_activities,
        # In-flight service calls get a moment to finish; the rest are retried by the server.
        graceful_shutdown_timeout=timedelta(seconds=2),
    )
    try:
        async with worker:
            yield worker
    finally:
        await activities.close()


def exit_without_finalizers(code: int = 0) -> None:
    """End the process once everything is shut down, skipping interpreter finalization.

    The SDK's Rust runtime keeps threads alive until the interpreter tears down; that teardown
    occasionally aborts the process (SIGABRT) after a perfectly clean worker shutdown, which a
    supervisor would read as a crash.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@dataclass(frozen=True)
class WorkerCommand:
    """One process the harness starts, placed in the zone of `service`."""

    service: str
    argv: list[str]


@dataclass(frozen=True)
class Deployment:
    """What a configuration needs besides the dev server and the services."""

    config: str
    workers: list[WorkerCommand] = field(default_factory=list)
    gateway_args: list[str] = field(default_factory=list)


def deployment(
    config: str,
    workload: str,
    service_urls: dict[str, str],
    temporal: str,
    namespace: str = "default",
) -> Deployment:
    """The worker processes and gateway arguments of `config` for `workload`.

    `service_urls` are as seen from where each caller runs: in `distributed` each worker sits
    next to its service; in `tuned` the gateway (hosting the worker) calls every service, so
    the harness passes the URLs of its cross-zone proxies.
    """
    tuning = CONFIGS[config]
    twin = WORKFLOWS[workload]
    connection = ["--temporal", temporal, "--namespace", namespace]
    if not tuning.per_service_workers:
        urls = [
            arg for name, url in service_urls.items() for arg in ("--service-url", f"{name}={url}")
        ]
        return Deployment(config, gateway_args=[*connection, *urls])
    workers = [
        WorkerCommand(
            service,
            [
                sys.executable,
                "-m",
                "baselines.temporal.worker",
                "--config",
                config,
                "--workload",
                workload,
                "--service",
                service,
                "--service-url",
                service_urls[service],
                *connection,
            ],
        )
        for service in twin.services
    ]
    return Deployment(config, workers=workers, gateway_args=connection)


async def serve_service(
    config: str, workload: str, service: str, service_url: str, target: str, namespace: str
) -> None:
    """The `distributed` worker of one service; runs until SIGTERM or SIGINT."""
    tuning = CONFIGS[config]
    if not tuning.per_service_workers:
        raise SystemExit(f"configuration {config!r} runs its worker inside the gateway")
    twin = WORKFLOWS[workload]
    if service not in twin.services:
        raise SystemExit(f"workload {workload!r} has no service {service!r}")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    client = await Client.connect(target, namespace=namespace)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(
            running_worker(
                client,
                tuning,
                twin,
                {service: service_url},
                host_workflows=False,
                queue=task_queue(tuning, workload, service),
            )
        )
        if service == twin.initiator:
            await stack.enter_async_context(
                running_worker(
                    client,
                    tuning,
                    twin,
                    {},
                    host_workflows=True,
                    queue=task_queue(tuning, workload),
                )
            )
        print(f"worker {workload}/{service} ready ({config})", flush=True)
        await stopping.wait()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Temporal worker for one service")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="distributed")
    parser.add_argument("--workload", choices=sorted(WORKFLOWS), required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--service-url", required=True)
    parser.add_argument("--temporal", default="127.0.0.1:7233")
    parser.add_argument("--namespace", default="default")
    args = parser.parse_args(argv)
    asyncio.run(
        serve_service(
            args.config,
            args.workload,
            args.service,
            args.service_url,
            args.temporal,
            args.namespace,
        )
    )
    exit_without_finalizers()


if __name__ == "__main__":
    main()
