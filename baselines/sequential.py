"""Sequential warehouse sagas against one runtime, timed: what the baselines' tuning scripts
measure each setting with (`baselines/restate/tuning.py`, `baselines/dbos/tuning.py`).

Every saga must commit (the services are seeded without abort traps); the first `warmup` are
not counted. A row of the printed table is the median, p99 and mean in milliseconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

TABLE_HEAD = "| configuration | median ms | p99 ms | mean ms |\n| --- | ---: | ---: | ---: |"


async def sequential_latencies(
    run: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    sagas: int,
    label: str,
    warmup: int = 20,
) -> list[float]:
    """Milliseconds of each of `sagas` warehouse sagas run one after another with `run`; the
    saga ids carry `label`, so that every configuration runs fresh sagas."""
    from workloads.warehouse.data import requests

    latencies = []
    for i, request in enumerate(requests(seed=1, n=sagas + warmup, abort_rate=0)):
        request = {**request, "saga_id": f"{request['saga_id']}-{label}"}
        started = time.perf_counter()
        outcome = await run(request)
        if outcome.get("outcome") != "committed":
            raise RuntimeError(f"saga {request['saga_id']} did not commit: {outcome}")
        if i >= warmup:
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def table_row(name: str, latencies: list[float]) -> str:
    """`| name | median | p99 | mean |`."""
    p99 = statistics.quantiles(latencies, n=100)[98]
    return (
        f"| {name} | {statistics.median(latencies):.1f} | {p99:.1f} "
        f"| {statistics.fmean(latencies):.1f} |"
    )


__all__ = ["TABLE_HEAD", "sequential_latencies", "table_row"]
