"""Run the Temporal baseline's pieces for a test or a tool: dev server, workers, gateway.

Synchronous context managers, so that pytest fixtures of any scope can use them; each runs its
processes under a `launch.Supervisor` and stops what it started on the way out, exception or
not (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from baselines.temporal.devserver import DevServer
from baselines.temporal.worker import WorkerCommand
from launch import ProcessSpec, Supervisor, free_port


@contextlib.contextmanager
def running_dev_server(dirpath: str | Path) -> Iterator[DevServer]:
    """A dev server with its SQLite file and log in `dirpath`."""
    server = DevServer(Path(dirpath) / "temporal.db")
    asyncio.run(server.start())
    try:
        yield server
    finally:
        asyncio.run(server.stop())


@contextlib.contextmanager
def running_workers(workers: Sequence[WorkerCommand], logdir: str | Path) -> Iterator[Supervisor]:
    """Run a deployment's worker processes (`worker-<service>`, logs in `logdir/logs/`) and
    yield their supervisor once every one polls its queues.

    On exit every worker gets SIGTERM and 10 s to end; `Supervisor.exit_code` tells afterwards
    how each ended.
    """
    specs = [
        ProcessSpec(f"worker-{w.service}", w.argv, ready_line=w.ready_line, stop_grace_s=10.0)
        for w in workers
    ]
    with Supervisor(Path(logdir)) as supervisor:
        supervisor.start_all(specs)
        yield supervisor


@contextlib.contextmanager
def running_gateway(
    args: Sequence[str], logdir: str | Path, startup_s: float = 30.0
) -> Iterator[tuple[str, Supervisor]]:
    """`python -m bench.gateway ARGS --port <free>` (log in `logdir/logs/gateway.log`); yields
    (base URL, its supervisor) once healthy. After the block, `exit_code("gateway")` says how
    it ended on SIGTERM."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spec = ProcessSpec(
        "gateway",
        [sys.executable, "-m", "bench.gateway", *args, "--port", str(port)],
        health_url=f"{url}/health",
        ports=[port],
        startup_timeout_s=startup_s,
        stop_grace_s=10.0,
    )
    with Supervisor(Path(logdir)) as supervisor:
        supervisor.start(spec)
        yield url, supervisor
