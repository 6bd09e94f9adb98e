"""Fixtures for the workload tests: real service processes on free loopback ports."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from workloads.launch import running_services_sync

Post = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]


@pytest.fixture(scope="module")
def warehouse_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Warehouse services shared by a module's tests (each test uses its own saga ids)."""
    with running_services_sync("warehouse", tmp_path_factory.mktemp("wh"), seed=1, size=50) as urls:
        yield urls


@pytest.fixture
def fresh_warehouse(tmp_path) -> Iterator[dict[str, str]]:
    """Warehouse services of this test alone: the checker sees only what the test did."""
    with running_services_sync("warehouse", tmp_path, seed=2, size=50) as urls:
        yield urls


@pytest.fixture
def fresh_hotel(tmp_path) -> Iterator[dict[str, str]]:
    with running_services_sync("hotel", tmp_path, seed=2, size=20) as urls:
        yield urls


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def post(session: aiohttp.ClientSession) -> Post:
    """POST /ops/{op}; `body` may be raw bytes to send malformed JSON."""

    async def call(url: str, op: str, body: Any, key: str | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with session.post(f"{url}/ops/{op}", data=data, headers=headers) as response:
            return response.status, await response.json()

    return call


@pytest.fixture
def state(session: aiohttp.ClientSession) -> Callable[[str], Awaitable[dict[str, Any]]]:
    async def get(url: str) -> dict[str, Any]:
        async with session.get(f"{url}/state") as response:
            return await response.json()

    return get
