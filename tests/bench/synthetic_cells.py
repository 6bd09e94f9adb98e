"""Synthetic cells: the files run_cell would leave, for systems whose behaviour at each rate is
known in advance, so that the sweep, the analysis and the report can be checked exactly."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from bench.load import RAW_COLUMNS
from bench.matrix import Cell
from bench.results import CellDir, cell_dir, write_json

T0 = 1_900_000_000.0

# Per system: how a synthetic saga fares at a rate. Returns (service time in s, or None for a
# fixed latency; latency in ms; fraction of failures).
Model = Callable[[float], tuple[float | None, float, float]]
MODELS: dict[str, Model] = {
    # Fast until 80/s, where p99 goes past 1 s.
    "accompanist": lambda r: (None, 20.0 if r < 80 else 1500.0, 0.0),
    # Never stops within the sweep.
    "accompanist-default": lambda r: (None, 15.0, 0.0),
    # A single server doing 15 sagas/s: keeps up to 10/s, falls behind at 20/s (its queue,
    # and so its latency, grows for as long as the step lasts).
    "temporal-tuned": lambda r: (1 / 15, 40.0, 0.0),
    # Fine at 2/s, 5 % failures from 5/s.
    "temporal-distributed": lambda r: (None, 150.0, 0.0 if r < 5 else 0.05),
    # Fast until 40/s, where it falls behind a server doing 50 sagas/s.
    "restate": lambda r: (1 / 50, 25.0, 0.0),
    "dbos": lambda r: (None, 25.0, 0.0),
}


def write_synthetic_cell(
    run_dir: Path, cell: Cell, cpu_s: float = 1.0, model: Model | None = None
) -> CellDir:
    """The files run_cell would leave, for a system that behaves as `model` (default: its
    entry in MODELS) says."""
    rate = cell.scenario.load.rate_rps
    service_s, latency_ms, failing = (model or MODELS[cell.system])(rate)
    cd = cell_dir(run_dir, cell.workload, cell.system, cell.scenario.name, cell.rep)
    n = int(cell.scenario.duration_s * rate)
    free_at = 0.0
    with cd.requests_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RAW_COLUMNS)
        for i in range(n):
            intended = T0 + i / rate
            if service_s is None:
                end = intended + latency_ms / 1000
            else:  # one request at a time: a queue builds when the rate exceeds 1 / service_s
                free_at = max(free_at, intended) + service_s
                end = free_at
            bad = failing > 0 and i % round(1 / failing) == 0
            writer.writerow([
                f"{cell.system}-{i}", intended, intended, end, (end - intended) * 1000,
                0 if bad else 200, "" if bad else "committed", "", "timeout" if bad else "",
                int(intended < T0 + cell.scenario.warmup_s),
            ])  # fmt: skip
    meta = {
        "load": cell.scenario.load.__dict__,
        "sweep": cell.scenario.sweep,
        "duration_s": cell.scenario.duration_s,
        "cpu_window_s": cell.scenario.duration_s,
        "floor_ms": 0.0,
        "crashes": None,
        "crashes_applicable": None,  # what run_cell writes when no crash is planned
    }
    write_json(cd.meta_json, meta)
    write_json(cd.check_json, {"consistent": True})
    cd.cpu_csv.write_text(
        "process,cpu_user_s,cpu_system_s,cpu_s,starts\n"
        f"runtime:a,{cpu_s},0,{cpu_s},1\nloadgen,1,0,1,1\n"
    )
    return cd
