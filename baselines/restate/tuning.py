"""Measure what each Restate server setting buys: sequential warehouse sagas on loopback.

Each rung starts a fresh real server with its settings (and the handler process, and the three
warehouse services once for all), runs `--sagas` sagas one at a time through the ingress, and
prints a Markdown row of median / p99 / mean end-to-end latency (client post -> result).

    python -m baselines.restate.tuning [--sagas 200]
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from accompanist_py import eventloop
from baselines.restate.server import SETTINGS, RestateServer
from baselines.restate.testing import Handlers, post_saga
from baselines.sequential import TABLE_HEAD, sequential_latencies, table_row
from workloads.launch import running_services


def rungs() -> list[tuple[str, dict[str, Any]]]:
    """(name, settings): the server's own defaults, then each of ours added in turn."""
    quiet = {k: SETTINGS[k] for k in ("disable-telemetry", "log-filter", "log-disable-ansi-codes")}
    partitions = {**quiet, "default-num-partitions": SETTINGS["default-num-partitions"]}
    return [
        ("server defaults (24 partitions, fsync per append)", quiet),
        ("2 partitions", partitions),
        ("2 partitions, no fsync (the benchmark's)", SETTINGS),
    ]


async def run(sagas: int) -> None:
    """Measure every rung and print the table."""
    with tempfile.TemporaryDirectory(prefix="restate-tuning-") as tmp:
        workdir = Path(tmp)
        size = 10 * (sagas + 50) * len(rungs())
        async with (
            running_services("warehouse", workdir, size=size, abort_rate=0) as urls,
            aiohttp.ClientSession() as http,
        ):
            print(TABLE_HEAD)
            for i, (name, settings) in enumerate(rungs()):
                server = RestateServer(workdir / f"restate-{i}", settings=settings)
                handlers = Handlers(urls, workdir)
                try:
                    await server.start()
                    await handlers.start()
                    await server.register(handlers.url)
                    once = partial(post_saga, http, server, "warehouse")
                    print(table_row(name, await sequential_latencies(once, sagas, f"r{i}")),
                          flush=True)  # fmt: skip
                finally:
                    await handlers.stop()
                    await server.stop()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Measure the Restate server's settings")
    parser.add_argument("--sagas", type=int, default=200)
    args = parser.parse_args(argv)
    eventloop.run(run(args.sagas))


if __name__ == "__main__":
    main()
