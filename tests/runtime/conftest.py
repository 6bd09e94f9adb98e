"""Fixtures for the runtime tests: clusters of real sidecar and service processes, and an HTTP
client. Every process a fixture starts is stopped when the fixture ends, pass or fail."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from runtime_cluster import Cluster


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start fresh clusters for one test; all of them are stopped when the test ends."""
    made: list[Cluster] = []

    def make(
        failpoints: dict[str, dict[str, int]] | None = None,
        *,
        receive_s: float = 60.0,
        transport: str | None = None,
        timeouts: dict[str, float] | None = None,
        role_timeouts: dict[str, dict[str, float]] | None = None,
        modes: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
        limits: dict[str, int] | None = None,
        events: dict[str, Any] | None = None,
    ) -> Cluster:
        cluster = Cluster(
            tmp_path / f"cluster{len(made)}",
            receive_s=receive_s,
            transport=transport,
            timeouts=timeouts,
            role_timeouts=role_timeouts,
            modes=modes,
            settings=settings,
            limits=limits,
            events=events,
        )
        made.append(cluster)
        cluster.start(failpoints)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for a module's tests; each test uses its own session ids."""
    cluster = Cluster(tmp_path_factory.mktemp("shared"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        yield client
