"""The Restate twin runs every saga path to the outcome the workload spec prescribes, and a saga
in flight survives a SIGKILL of the handler process and of the Restate server.

Real Restate server (the npm package's binary), a real handler process, real service processes.
Requests are drawn with a high abort rate so that every abort path and the hotel's early endings
occur; afterwards the workload's checker must find the services consistent with the outcomes the
client saw.
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
import pytest

from baselines.restate.handler import HANDLER
from baselines.restate.server import RestateServer
from workloads import discover
from workloads.consistency import fetch_states
from workloads.launch import free_port, running_services
from workloads.testing import BATCH_ABORT_RATE, assert_batch_as_specified, batch_requests


class Handlers:
    """The handler process on a fixed port, so that a restarted one is where the server looks."""

    def __init__(self, urls: Mapping[str, str], logdir: Path) -> None:
        self.port = free_port()
        self.urls = dict(urls)
        self.log = logdir / "restate-handler.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._spawn()
        assert self.process is not None
        for _ in range(300):
            if self.process.poll() is not None:
                raise RuntimeError(f"the handler exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"the handler did not listen: {self.log.read_text()[-2000:]}")

    def _spawn(self) -> None:
        argv = [sys.executable, "-m", "baselines.restate.handler", "--port", str(self.port)]
        argv += [arg for s, u in self.urls.items() for arg in ("--service-url", f"{s}={u}")]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.asynccontextmanager
async def restate(urls: Mapping[str, str], tmp_path: Path) -> AsyncIterator[tuple[Any, Any]]:
    """A server with the handlers registered; yields (server, handlers), both stopped on exit."""
    server, handlers = RestateServer(tmp_path / "restate"), Handlers(urls, tmp_path)
    try:
        await server.start()
        await handlers.start()
        await server.register(handlers.url)
        yield server, handlers
    finally:
        handlers.stop()
        await server.stop()


async def post(
    http: aiohttp.ClientSession, server: RestateServer, workload: str, request: dict[str, Any]
) -> dict[str, Any]:
    """Run one saga through the ingress, the saga id as the idempotency key."""
    async with http.post(
        f"{server.ingress_url}/{workload}/{HANDLER}",
        json=request,
        headers={"idempotency-key": request["saga_id"]},
    ) as response:
        body = await response.json(content_type=None)
        assert response.status == 200, body
        return body


@pytest.mark.parametrize("workload", ["warehouse", "hotel"])
async def test_every_saga_path_ends_as_specified_and_leaves_services_consistent(
    workload: str, tmp_path: Path
) -> None:
    requests = batch_requests(workload, 7)
    async with (
        running_services(workload, tmp_path, seed=7, size=50, abort_rate=BATCH_ABORT_RATE) as urls,
        restate(urls, tmp_path) as (server, _),
        aiohttp.ClientSession() as http,
    ):
        outcomes = await asyncio.gather(*(post(http, server, workload, r) for r in requests))
        # The same keys again: the recorded outcomes, and no step runs twice.
        again = await asyncio.gather(*(post(http, server, workload, r) for r in requests))
        states = await asyncio.to_thread(fetch_states, urls)

    assert again == outcomes
    assert_batch_as_specified(workload, requests, outcomes, states)


@pytest.mark.parametrize("victim", ["handler", "server"])
async def test_sagas_in_flight_survive_a_kill_of_the_handler_or_the_server(
    victim: str, tmp_path: Path
) -> None:
    """The services are down at first, so every saga's first step keeps retrying; the victim is
    killed with SIGKILL and started again, the services come up, and every saga commits."""
    descriptor = discover()["warehouse"]
    requests = descriptor.requests(11, 6, 0.0)
    ports = {service: free_port() for service in descriptor.services}
    urls = {service: f"http://127.0.0.1:{port}" for service, port in ports.items()}
    async with restate(urls, tmp_path) as (server, handlers), aiohttp.ClientSession() as http:
        waiting = [asyncio.ensure_future(post(http, server, "warehouse", r)) for r in requests]
        done, _ = await asyncio.wait(waiting, timeout=2)
        assert not done  # all of them are in flight, retrying their first step
        if victim == "handler":
            handlers.kill()
            await handlers.start()
        else:
            server.kill()
            for future in waiting:  # their connections died with the server
                future.cancel()
            await server.start()
            waiting = [asyncio.ensure_future(post(http, server, "warehouse", r)) for r in requests]
        async with running_services(
            "warehouse", tmp_path, seed=11, size=50, abort_rate=0.0, ports=ports
        ):
            outcomes = await asyncio.gather(*waiting)
            states = await asyncio.to_thread(fetch_states, urls)
    assert [o["outcome"] for o in outcomes] == ["committed"] * len(requests)
    report = descriptor.check(states, sent={o["saga_id"]: o["outcome"] for o in outcomes})
    assert report.ok, report.summary()
