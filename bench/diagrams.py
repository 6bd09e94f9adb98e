"""Sequence diagrams of a cell's sagas for the report: one committed, one compensated, and one
that a crash interrupted and the runtime recovered.

A decentralised saga has no central history: its story is spread over the sidecars' events
(`accompanist_py.events`). Before an accompanist_py cell is torn down, :func:`draw_sagas` asks
the live sidecars through the inspector (`accompanist_py.inspect`) for a few candidate sagas
of `requests.csv` and draws the first that shows each outcome: a committed and a compensated
one from after the warm-up, and, in a crash cell, one that was in flight while a runtime was
down and whose timeline holds a restart. Each becomes a Markdown file in the run's
``diagrams/`` folder (the text diagram and a Mermaid one), which the report links.
"""

from __future__ import annotations

import asyncio
import csv
import re
from collections.abc import Sequence
from pathlib import Path

from accompanist_py.inspect import (
    Credentials,
    Sidecars,
    Timeline,
    render_mermaid,
    render_text,
)

DIAGRAMS_DIR = "diagrams"
KINDS = ("committed", "compensated", "recovered")
CANDIDATES = 20  # sagas asked about per kind at most: a cell's teardown should not wait long


def draw_sagas(
    run_dir: Path,
    label: str,
    sidecar_urls: Sequence[str],
    requests_csv: Path,
    faults_csv: Path | None,
    credentials: Credentials | None = None,
) -> dict[str, str]:
    """Draw one saga of each kind the cell has; returns {kind: path relative to run_dir}."""
    candidates = _candidates(requests_csv, faults_csv)
    if not any(candidates.values()):
        return {}
    return asyncio.run(_draw(run_dir, label, list(sidecar_urls), candidates, credentials))


async def _draw(
    run_dir: Path,
    label: str,
    urls: list[str],
    candidates: dict[str, list[str]],
    credentials: Credentials | None,
) -> dict[str, str]:
    drawn: dict[str, str] = {}
    async with Sidecars(urls, credentials) as sidecars:
        for kind, saga_ids in candidates.items():
            fallback: Timeline | None = None
            for saga_id in saga_ids[:CANDIDATES]:
                timeline = await sidecars.timeline(saga_id)
                if not timeline.entries or not _finished(timeline):
                    continue
                if kind != "recovered" or _restarted(timeline):
                    fallback = None
                    drawn[kind] = _write(run_dir, label, kind, timeline)
                    break
                fallback = fallback or timeline
            if fallback is not None:
                # No saga was in flight at the crashed node itself: one that waited for it.
                drawn[kind] = _write(run_dir, label, kind, fallback)
    return drawn


def _finished(timeline: Timeline) -> bool:
    """Whether every role that took part has finished (one that never did is not waited for)."""
    return all(timeline.final_state(role) != "unfinished" for role in timeline.roles)


def _restarted(timeline: Timeline) -> bool:
    return any(e.kind == "restart" for e in timeline.entries)


def _candidates(requests_csv: Path, faults_csv: Path | None) -> dict[str, list[str]]:
    """Saga ids worth asking about, per kind, in the order they were sent."""
    with requests_csv.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("start") and r.get("end")]
    measured = [r for r in rows if r.get("warmup") != "1"]
    found: dict[str, list[str]] = {
        "committed": [r["saga_id"] for r in measured if r["outcome"] == "committed"],
        "compensated": [r["saga_id"] for r in measured if r["outcome"] == "compensated"],
        "recovered": [],
    }
    windows = _runtime_crashes(faults_csv)
    start_of = {r["saga_id"]: float(r["start"]) for r in rows}
    end_of = {r["saga_id"]: float(r["end"]) for r in rows}
    for r in rows:
        start, end = float(r["start"]), float(r["end"])
        # In flight when a runtime went down (its restart replays this saga's part), or
        # waiting for it while it was down.
        if r["outcome"] in ("committed", "compensated") and any(
            start < up and down < end for down, up in windows
        ):
            found["recovered"].append(r["saga_id"])
    # Those in flight at the crash itself first: the likeliest to show a restart.
    found["recovered"].sort(
        key=lambda sid: not any(start_of[sid] < down < end_of[sid] for down, _ in windows)
    )
    return found


def _runtime_crashes(faults_csv: Path | None) -> list[tuple[float, float]]:
    """(kill, healthy) times of every crash of a runtime in the cell."""
    if faults_csv is None or not faults_csv.exists():
        return []
    with faults_csv.open(newline="") as f:
        return [
            (float(r["kill_time"]), float(r["healthy_time"] or r["kill_time"]))
            for r in csv.DictReader(f)
            if r.get("action", "kill") == "kill"
            and r.get("process", "").startswith("runtime:")
            and r.get("kill_time")
        ]


def _write(run_dir: Path, label: str, kind: str, timeline: Timeline) -> str:
    folder = run_dir / DIAGRAMS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', label).strip('-')}-{kind}.md"
    how = ""
    if kind == "recovered":
        how = (
            "It was in flight at a sidecar that was killed: its restart and replay are marked.\n\n"
            if _restarted(timeline)
            else "No saga was in flight at the killed sidecar itself; this one waited for it while "
            "it was down, its messages kept in the senders' outboxes until it came back.\n\n"
        )
    (folder / name).write_text(
        f"# A {kind} saga: `{timeline.session}` ({label})\n\n"
        "Drawn by `python -m accompanist_py.inspect` from the events of every sidecar, before "
        "the cell was torn down.\n\n" + how + f"```\n{render_text(timeline)}\n```\n\n"
        f"```mermaid\n{render_mermaid(timeline)}\n```\n"
    )
    return f"{DIAGRAMS_DIR}/{name}"
