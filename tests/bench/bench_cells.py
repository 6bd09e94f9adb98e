"""Running one short cell of the harness in a test, with the checks every cell must pass."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import psutil

from bench.matrix import Cell, Scenario
from bench.results import CellDir, read_json
from bench.run import run_cell


def children() -> set[int]:
    """This test process's descendants, to see that a cell leaves none behind."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def run_checked_cell(
    run_dir: Path,
    system: str,
    scenario: Scenario,
    workload: str = "warehouse",
    backend: str = "process",
) -> CellDir:
    """Run one cell; it must leave no process behind, be consistent and answer every request
    with 200."""
    before = children()
    cell = Cell(workload, system, scenario, 1, backend=backend)
    cd = run_cell(run_dir, cell, progress=lambda _: None)
    assert children() <= before, "processes left behind"
    check = read_json(cd.check_json)
    assert check["consistent"], check["violations"]
    raw = pd.read_csv(cd.requests_csv)
    assert len(raw) > 0
    assert set(raw["status"]) == {200}, raw[raw["status"] != 200].head()
    return cd
