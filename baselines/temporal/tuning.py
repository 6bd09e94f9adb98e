"""Measure what each Temporal setting buys: sequential warehouse sagas on loopback.

Walks a ladder from the distributed configuration to the tuned one, one setting at a time, and
prints a Markdown table of median / p99 end-to-end latency (client start -> workflow result) per
rung. Everything is real: the dev server, the three warehouse services, the workers (separate
processes for the distributed rung; in the measuring process for the others, which eager
workflow start requires). Services are seeded without abort traps so every saga commits.

    python -m baselines.temporal.tuning [--sagas 300] [--server-defaults]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from temporalio.client import Client

from accompanist_py import eventloop
from baselines.temporal.devserver import DevServer
from baselines.temporal.starter import run_saga
from baselines.temporal.testing import running_workers
from baselines.temporal.worker import (
    CONFIGS,
    Tuning,
    deployment,
    running_worker,
    task_queue,
)
from baselines.temporal.workflows import WORKFLOWS
from workloads.launch import running_services


def ladder() -> list[Tuning]:
    """Distributed, then one worker, then each tuned setting added in turn."""
    distributed, tuned = CONFIGS["distributed"], CONFIGS["tuned"]
    one_worker = dataclasses.replace(distributed, name="one worker", per_service_workers=False)
    unsandboxed = dataclasses.replace(one_worker, name="+ unsandboxed", sandboxed=False)
    eager_act = dataclasses.replace(unsandboxed, name="+ eager activities", eager_activities=True)
    eager_start = dataclasses.replace(eager_act, name="+ eager start", eager_start=True)
    # The last rung is the tuned configuration itself.
    assert tuned == dataclasses.replace(eager_start, name="tuned", local_activities=True)
    return [distributed, one_worker, unsandboxed, eager_act, eager_start, tuned]


async def measure(
    tuning: Tuning, server: DevServer, urls: dict[str, str], sagas: int, logdir: Path
) -> list[float]:
    """Latencies in ms of `sagas` sequential warehouse sagas under `tuning` (after a warm-up);
    worker processes, if any, log to `logdir/logs/`."""
    from workloads.warehouse.data import requests

    twin = WORKFLOWS["warehouse"]
    client = await Client.connect(server.target, namespace=server.namespace)
    warmup = 20
    batch = requests(seed=1, n=sagas + warmup, abort_rate=0)
    async with contextlib.AsyncExitStack() as stack:
        if tuning.per_service_workers:
            plan = deployment(tuning.name, twin.name, urls, server.target, server.namespace)
            workers = running_workers(plan.workers, logdir)
            await asyncio.to_thread(workers.__enter__)  # returns once every worker polls
            stack.push_async_callback(asyncio.to_thread, workers.__exit__, None, None, None)
        else:
            await stack.enter_async_context(
                running_worker(
                    client,
                    tuning,
                    twin,
                    urls,
                    host_workflows=True,
                    queue=task_queue(tuning, twin.name),
                )
            )
        latencies = []
        for i, request in enumerate(batch):
            saga_id = f"{request['saga_id']}-{tuning.name}"
            started = time.perf_counter()
            outcome = await run_saga(client, tuning, twin, saga_id, request)
            if outcome["outcome"] != "committed":
                raise RuntimeError(f"saga {saga_id} did not commit: {outcome}")
            if i >= warmup:
                latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def run(sagas: int, server_defaults: bool) -> None:
    """Measure every rung of the ladder and print the table."""
    with tempfile.TemporaryDirectory(prefix="temporal-tuning-") as tmp:
        workdir = Path(tmp)
        server = (
            DevServer(workdir / "temporal.db", dynamic_config={}, sqlite_pragmas={})
            if server_defaults
            else DevServer(workdir / "temporal.db")
        )
        services = running_services("warehouse", workdir, size=10 * (sagas + 50), abort_rate=0)
        async with server, services as urls:
            print(f"server: {server.dynamic_config} {server.sqlite_pragmas}")
            print("| configuration | median ms | p99 ms | mean ms |")
            print("| --- | ---: | ---: | ---: |")
            for tuning in ladder():
                latencies = await measure(tuning, server, urls, sagas, workdir)
                print(
                    f"| {tuning.name} | {statistics.median(latencies):.1f} "
                    f"| {percentile(latencies, 99):.1f} | {statistics.fmean(latencies):.1f} |",
                    flush=True,
                )


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Measure the Temporal tuning ladder")
    parser.add_argument("--sagas", type=int, default=300)
    parser.add_argument(
        "--server-defaults",
        action="store_true",
        help="the CLI's own dynamic config and SQLite pragmas",
    )
    args = parser.parse_args(argv)
    eventloop.run(run(args.sagas, args.server_defaults))


if __name__ == "__main__":
    main()
