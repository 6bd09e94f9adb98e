"""Run the Restate baseline for a test or a tool: the server, the handler process, one saga.

    async with running_restate(service_urls, tmp_path) as (server, handlers):
        outcome = await post_saga(http, server, "warehouse", request)

Each piece stops what it started on the way out, exception or not; `Handlers.kill` and
`RestateServer.kill` are the crashes (SIGKILL), and `start` brings either back where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from baselines.restate.handler import HANDLER
from baselines.restate.server import RestateServer
from launch import free_port


class Handlers:
    """The handler process (`python -m baselines.restate.handler`) on a port chosen once, so
    that a restarted one is where the server looks for it."""

    def __init__(self, urls: Mapping[str, str], logdir: Path) -> None:
        self.port = free_port()
        self.urls = dict(urls)
        self.log = Path(logdir) / "restate-handler.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start the process and return once it listens."""
        self.process = self._spawn()
        for _ in range(int(timeout_s * 10)):
            if self.process.poll() is not None:
                raise RuntimeError(f"the handler exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            await asyncio.sleep(0.1)
        self.kill()
        raise TimeoutError(f"the handler did not listen: {self.log.read_text()[-2000:]}")

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "baselines.restate.handler", "--port", str(self.port)]
        argv += [arg for s, u in self.urls.items() for arg in ("--service-url", f"{s}={u}")]
        with self.log.open("ab") as log:
            return subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self) -> None:
        """SIGKILL, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.asynccontextmanager
async def running_restate(
    service_urls: Mapping[str, str], dirpath: Path
) -> AsyncIterator[tuple[RestateServer, Handlers]]:
    """A server (data and log in `dirpath`) with the handlers registered; both stop on exit."""
    server, handlers = RestateServer(Path(dirpath) / "restate"), Handlers(service_urls, dirpath)
    try:
        await server.start()
        await handlers.start()
        await server.register(handlers.url)
        yield server, handlers
    finally:
        handlers.stop()
        await server.stop()


async def post_saga(
    http: aiohttp.ClientSession, server: RestateServer, workload: str, request: dict[str, Any]
) -> dict[str, Any]:
    """Run one saga through the ingress, its saga id as the idempotency key; its outcome."""
    async with http.post(
        f"{server.ingress_url}/{workload}/{HANDLER}",
        json=request,
        headers={"idempotency-key": request["saga_id"]},
    ) as response:
        body = await response.json(content_type=None)
        if response.status != 200:
            raise AssertionError(f"restate answered {response.status}: {body}")
        return body


__all__ = ["Handlers", "post_saga", "running_restate"]
