"""Run the Restate baseline for a test or a tool: the server, the handler process, one saga.

    async with running_restate(service_urls, tmp_path) as (server, handlers):
        outcome = await post_saga(http, server, "warehouse", request)

Each piece stops what it started on the way out, exception or not. Both the server and the
handler process are `baselines.server_process.ServerProcess`es: `kill` is the crash (SIGKILL),
and `start` brings either back where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from baselines.restate.handler import HANDLER
from baselines.restate.server import RestateServer
from baselines.server_process import ServerProcess
from launch import free_port


class Handlers(ServerProcess):
    """The handler process (`python -m baselines.restate.handler`) on a port chosen once, so
    that a restarted one is where the server looks for it; its log is
    `logdir/restate-handler.log`."""

    def __init__(
        self, urls: Mapping[str, str], logdir: Path, *, ready_timeout_s: float = 30.0
    ) -> None:
        super().__init__(Path(logdir) / "restate-handler.log")
        self.port = free_port()
        self.urls = dict(urls)
        self.ready_timeout_s = ready_timeout_s

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "baselines.restate.handler", "--port", str(self.port)]
        return argv + [arg for s, u in self.urls.items() for arg in ("--service-url", f"{s}={u}")]

    async def wait_ready(self) -> None:
        """Return once the process listens."""
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if (why := self.exited()) is not None:
                raise RuntimeError(f"the handler {why}:\n{self._tail()}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            await asyncio.sleep(0.1)
        self.kill()
        raise TimeoutError(f"the handler did not listen:\n{self._tail()}")

    def _tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-2000:]


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
        await handlers.stop()
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
