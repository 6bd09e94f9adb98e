"""What a cell's Temporal server recorded: how often a task timed out or failed, and why.

A short workflow-task timeout (`worker.WORKFLOW_TASKS`) turns a worker that is slow to answer
into replays, so whether a setting costs throughput is a count, not a guess: every workflow
history a cell's dev server kept is read back and its timeouts and failures are counted by
kind. The cell's SQLite file is copied first, so that the evidence stays as the run left it.

    python -m baselines.temporal.audit results/<run>/raw/<workload>/<system>/<scenario>/rep1 ...

prints one JSON object per cell folder (README.md, *Do the short timeouts cost throughput?*).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from accompanist_py import eventloop
from baselines.temporal.devserver import DevServer

# At most this many histories are fetched at once, so that the audit does not queue up a
# server that shares the machine with whatever else runs.
_FETCHING = 16


def count_events(events: Iterable[HistoryEvent]) -> Counter[str]:
    """Completed workflow tasks, and every timeout and failure by kind, e.g.
    `workflow_task_timed_out:schedule_to_start` (a sticky queue nobody polled) or
    `activity_task_failed` (which includes the services' business refusals)."""
    counts: Counter[str] = Counter()
    for event in events:
        kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_").lower()
        if kind == "workflow_task_completed":
            counts[kind] += 1
        elif kind == "workflow_task_timed_out":
            timeout = event.workflow_task_timed_out_event_attributes.timeout_type
            counts[f"{kind}:{_timeout_name(timeout)}"] += 1
        elif kind == "activity_task_timed_out":
            failure = event.activity_task_timed_out_event_attributes.failure
            counts[f"{kind}:{_timeout_name(failure.timeout_failure_info.timeout_type)}"] += 1
        elif kind.endswith("_failed") or kind.endswith("_timed_out"):
            counts[kind] += 1
    return counts


def _timeout_name(timeout: TimeoutType.ValueType) -> str:
    return TimeoutType.Name(timeout).removeprefix("TIMEOUT_TYPE_").lower()


async def audit(client: Client) -> dict[str, int]:
    """`count_events` over every workflow of the client's namespace, plus `workflows`."""
    ids = [execution.id async for execution in client.list_workflows()]
    fetching = asyncio.Semaphore(_FETCHING)
    totals: Counter[str] = Counter(workflows=len(ids))

    async def one(workflow_id: str) -> None:
        async with fetching:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
        totals.update(count_events(history.events))

    await asyncio.gather(*(one(workflow_id) for workflow_id in ids))
    return dict(sorted(totals.items()))


async def audit_cell(cell: Path) -> dict[str, int]:
    """`audit` of a finished cell's `temporal.db`, served from a copy by a dev server of its own."""
    with tempfile.TemporaryDirectory(prefix="temporal-audit-") as tmp:
        copy = Path(tmp) / "temporal.db"
        for suffix in ("", "-wal", "-shm"):
            if (cell / f"temporal.db{suffix}").exists():
                shutil.copy(cell / f"temporal.db{suffix}", f"{copy}{suffix}")
        if not copy.exists():
            raise FileNotFoundError(f"{cell} has no temporal.db: not a Temporal cell")
        async with DevServer(copy) as server:
            client = await Client.connect(server.target, namespace=server.namespace)
            return await audit(client)


async def _main(cells: list[Path]) -> None:
    for cell in cells:
        print(json.dumps({"cell": str(cell), **await audit_cell(cell)}), flush=True)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", nargs="+", type=Path, help="cell folders with a temporal.db")
    eventloop.run(_main(parser.parse_args(argv).cells))


if __name__ == "__main__":
    main()
