"""Run the Temporal baseline's pieces for a test or a tool: dev server, workers, gateway.

Synchronous context managers, so that pytest fixtures of any scope can use them; each stops
what it started on the way out, exception or not (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from baselines.temporal.devserver import DevServer
from launch import free_port


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
def running_processes(
    commands: Sequence[tuple[str, list[str]]], logdir: str | Path, grace_s: float = 10.0
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Run each (name, argv) with its output in `logdir/<name>.log`; yields name -> process.

    On exit every process gets SIGTERM and `grace_s` seconds to end; callers can read the
    exit codes from the yielded processes afterwards.
    """
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, argv in commands:
            with (Path(logdir) / f"{name}.log").open("ab") as log:
                processes[name] = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
        yield processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace_s
        for process in processes.values():
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def running_gateway(
    args: Sequence[str], logdir: str | Path, startup_s: float = 30.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m bench.gateway ARGS --port <free>`; yields (base URL, process) once healthy."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.gateway", *args, "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with running_processes([("gateway", argv)], logdir) as processes:
        process = processes["gateway"]
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                log = (Path(logdir) / "gateway.log").read_text(errors="replace")
                raise RuntimeError(f"gateway exited with {process.returncode}:\n{log[-2000:]}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/health", timeout=2),
            ):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not healthy after {startup_s}s")
            time.sleep(0.05)
        yield url, process
