"""Fixtures for the inspector's tests: a real three-sidecar cluster (tests/runtime's) that has
run a committed, a compensated and a crash-recovered saga, and the inspector's CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

RUNTIME_TESTS = Path(__file__).resolve().parents[1] / "runtime"
if str(RUNTIME_TESTS) not in sys.path:
    sys.path.insert(0, str(RUNTIME_TESTS))

from runtime_cluster import REPO, Cluster, child_env  # noqa: E402

COMMITTED, COMPENSATED, RECOVERED = "inspect-committed", "inspect-compensated", "inspect-recovered"


@dataclass
class Sagas:
    cluster: Cluster
    config: Path  # sidecar a's TOML: its address and its peers'


async def _run_sagas(cluster: Cluster) -> None:
    async with cluster.http() as http:
        # b dies by kill -9 (failpoint) right after its first service call, and restarts.
        crashed = asyncio.create_task(cluster.run(http, "saga3", RECOVERED, [{"abort_at": None}]))
        assert await cluster.sidecars["b"].wait_exit(30) == -9
        await cluster.restart_sidecar("b")
        await crashed
        await cluster.run(http, "saga3", COMMITTED, [{"abort_at": None}])
        await cluster.run(http, "saga3", COMPENSATED, [{"abort_at": "c"}])
        await cluster.wait_terminal(http, [COMMITTED, COMPENSATED, RECOVERED])


@pytest.fixture(scope="module")
def sagas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sagas]:
    cluster = Cluster(tmp_path_factory.mktemp("inspect"))
    try:
        cluster.start({"b": {"after_call": 1}})
        asyncio.run(_run_sagas(cluster))
        yield Sagas(cluster, cluster.dir / "sidecar-a.toml")
    finally:
        cluster.stop()


def inspect_cli(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`python -m accompanist_py.inspect ARGS`, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "accompanist_py.inspect", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=child_env(),
        cwd=REPO,
    )
