"""Temporal workers for the baseline, and the two configurations the benchmark reports.

`distributed` is how the paper's repository deploys Temporal: one worker process per service,
next to it, polling that service's task queue for regular activities; the initiator service's
worker also runs the workflows, in the default sandbox. `tuned` is the best honest latency we
found (measured in README.md): the workflow and its service calls run in one worker hosted by
the gateway, so the gateway's client gets eager workflow start; the workflow runner is
unsandboxed and service calls are local activities with the very same timeout and retry policy.
`deployment()` tells the harness which processes a configuration needs. Both configurations
detect a killed worker with the sidecars' numbers (`WORKFLOW_TASKS` here, `CALL_POLICY` in
activities.py, README.md *Failure detection*), and a worker process runs on uvloop, as the
sidecars do (`accompanist_py.eventloop`).

    python -m baselines.temporal.worker --config distributed --workload warehouse \
        --service payment --service-url http://127.0.0.1:8002 --temporal 127.0.0.1:7233 \
        [--tls-ca CA --tls-cert CERT --tls-key KEY]

The `--tls-*` files are the worker's client certificate for an `https://` service. The
connection to the Temporal frontend is plaintext: the dev server cannot serve TLS (README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import PollerBehaviorSimpleMaximum, UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from accompanist_py import eventloop
from accompanist_py.tls import client_context
from baselines.temporal.activities import CALL_POLICY, ServiceActivities
from baselines.temporal.saga import Dispatch
from baselines.temporal.workflows import WORKFLOWS, TemporalWorkload


@dataclass(frozen=True)
class WorkflowTaskPolicy:
    """How soon a killed worker's workflow tasks move on to its restarted self.

    A workflow task that a worker had started when it was killed waits `timeout_s` (the SDK's
    default is 10 s); one sent to the sticky queue of a dead worker waits
    `sticky_schedule_to_start_s` (default 10 s) before going to the normal queue. Both are the
    sidecars' longest resend interval, as the activity heartbeat timeout is: a restarted sidecar
    hears from its peers at once, so a restarted worker must find its tasks waiting for it too.
    A local activity running longer than 80 % of `timeout_s` makes the SDK heartbeat the task,
    so the short timeout bounds detection only, not the length of a saga. Counted in every
    history (`audit.py`), it costs no throughput while sticky execution is on, as it is here:
    a cached workflow's task takes milliseconds. Without the cache every task replays the whole
    history, tasks queue up in the worker past 1 s, time out and replay again (README.md, *Do
    the short timeouts cost throughput?*).
    """

    timeout_s: float = CALL_POLICY.heartbeat_timeout_s
    sticky_schedule_to_start_s: float = CALL_POLICY.heartbeat_timeout_s

    @property
    def timeout(self) -> timedelta:
        """`task_timeout` of a workflow start."""
        return timedelta(seconds=self.timeout_s)


WORKFLOW_TASKS = WorkflowTaskPolicy()


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
    service_tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Worker]:
    """Run a worker until the block ends, then shut it down (the SDK needs that before exit).

    `service_tls` is the context of HTTPS service calls (`accompanist_py.tls.client_context`).
    """
    activities = ServiceActivities(service_urls, tls=service_tls)
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
        sticky_queue_schedule_to_start_timeout=timedelta(
            seconds=WORKFLOW_TASKS.sticky_schedule_to_start_s
        ),
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
    """One process the harness starts, placed in the zone of `service`; it prints `ready_line`
    once it polls its task queues (a worker has no port to probe)."""

    service: str
    argv: list[str]
    ready_line: str = ""


def ready_line(workload: str, service: str) -> str:
    """What a worker prints once its workers poll: the harness's readiness check."""
    return f"worker {workload}/{service} ready"


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
    *,
    tls: Mapping[str, Sequence[str]] | None = None,
) -> Deployment:
    """The worker processes and gateway arguments of `config` for `workload`.

    `service_urls` are as seen from where each caller runs: in `distributed` each worker sits
    next to its service; in `tuned` the gateway (hosting the worker) calls every service, so
    the harness passes the URLs of its cross-zone proxies. `tls` maps each caller of the
    services (a service's name for its worker, `"gateway"` for the tuned gateway) to the
    `--tls-ca/--tls-cert/--tls-key` options of its client certificate.
    """
    tuning = CONFIGS[config]
    twin = WORKFLOWS[workload]
    tls = tls or {}
    connection = ["--temporal", temporal, "--namespace", namespace]
    if not tuning.per_service_workers:
        urls = [
            arg for name, url in service_urls.items() for arg in ("--service-url", f"{name}={url}")
        ]
        return Deployment(config, gateway_args=[*connection, *urls, *tls.get("gateway", ())])
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
                *tls.get(service, ()),
            ],
            ready_line(workload, service),
        )
        for service in twin.services
    ]
    return Deployment(config, workers=workers, gateway_args=connection)


async def serve_service(
    config: str,
    workload: str,
    service: str,
    service_url: str,
    target: str,
    namespace: str,
    service_tls: ssl.SSLContext | None = None,
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
                service_tls=service_tls,
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
        print(f"{ready_line(workload, service)} ({config})", flush=True)
        eventloop.announce()
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
    parser.add_argument("--tls-ca", type=Path, help="the CA of an https:// service's certificate")
    parser.add_argument("--tls-cert", type=Path, help="the worker's client certificate")
    parser.add_argument("--tls-key", type=Path, help="its private key")
    args = parser.parse_args(argv)
    files = (args.tls_ca, args.tls_cert, args.tls_key)
    if any(files) and not all(files):
        parser.error("--tls-ca, --tls-cert and --tls-key go together")
    eventloop.run(
        serve_service(
            args.config,
            args.workload,
            args.service,
            args.service_url,
            args.temporal,
            args.namespace,
            client_context(*files) if all(files) else None,
        )
    )
    exit_without_finalizers()


if __name__ == "__main__":
    main()
