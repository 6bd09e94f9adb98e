"""Measure what the DBOS system database's settings buy: sequential warehouse sagas.

Each rung runs DBOS in this process on a fresh SQLite file with its pragmas, `--sagas` sagas
one at a time against the three warehouse services, and prints a Markdown row of median / p99 /
mean latency (workflow start -> result).

    python -m baselines.dbos.tuning [--sagas 200]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from accompanist_py import eventloop
from baselines.dbos import SQLITE_PRAGMAS
from baselines.dbos.saga import DbosHost
from baselines.sequential import TABLE_HEAD, sequential_latencies, table_row
from workloads.launch import running_services

_DBOS_OWN = ("busy_timeout=30000", "foreign_keys=ON")  # what DBOS's own SQLite engine sets


def rungs() -> list[tuple[str, tuple[str, ...]]]:
    """(name, pragmas): DBOS's own SQLite engine, then WAL, then WAL without an fsync per commit."""
    return [
        ("DBOS's default (rollback journal, synchronous=FULL)", _DBOS_OWN),
        ("WAL, synchronous=FULL", ("journal_mode=WAL", "synchronous=FULL", *_DBOS_OWN)),
        ("WAL, synchronous=NORMAL (the benchmark's)", SQLITE_PRAGMAS),
    ]


async def run(sagas: int) -> None:
    """Measure every rung and print the table."""
    with tempfile.TemporaryDirectory(prefix="dbos-tuning-") as tmp:
        workdir = Path(tmp)
        size = 10 * (sagas + 50) * len(rungs())
        async with running_services("warehouse", workdir, size=size, abort_rate=0) as urls:
            print(TABLE_HEAD)
            for i, (name, pragmas) in enumerate(rungs()):
                host = DbosHost(workdir / f"dbos-{i}.sqlite", urls, pragmas=pragmas)
                await host.start()
                try:

                    async def once(request: dict[str, Any]) -> dict[str, Any]:
                        return await host.run("warehouse", request["saga_id"], request)  # noqa: B023

                    print(table_row(name, await sequential_latencies(once, sagas, f"d{i}")),
                          flush=True)  # fmt: skip
                finally:
                    await host.stop()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Measure the DBOS system database's settings")
    parser.add_argument("--sagas", type=int, default=200)
    args = parser.parse_args(argv)
    eventloop.run(run(args.sagas))


if __name__ == "__main__":
    main()
