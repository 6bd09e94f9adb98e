"""End-to-end smoke run of the harness: every system, real processes, a few seconds each.

Each cell deploys the services, the system and the gateway, drives them with Locust, checks the
services' consistency and tears everything down; the analysis then finds one summary row per
cell with every request accounted for.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from bench_cells import run_checked_cell

from bench.analysis import analyse
from bench.faults import CrashPlan
from bench.load import LoadProfile
from bench.matrix import Scenario

SMOKE = Scenario("smoke", "local", LoadProfile(mode="open", rate_rps=4.0), 8, 2.0)
SMOKE_CRASH = Scenario(
    "smoke-crash",
    "three-zones",
    LoadProfile(mode="open", rate_rps=4.0),
    10,
    2.0,
    CrashPlan(every_s=8.0, downtime_s=1.0, targets=("runtime",), seed=3, first_s=4.0),
)


@pytest.mark.parametrize(
    ("system", "scenario"),
    [
        ("accompanist", SMOKE),
        ("temporal-distributed", SMOKE),
        ("temporal-tuned", SMOKE),
        ("accompanist", SMOKE_CRASH),
        ("restate", SMOKE_CRASH),  # kills the handler process
        ("dbos", SMOKE_CRASH),  # kills the gateway, which hosts DBOS
    ],
)
def test_a_short_cell_runs_checks_consistent_and_leaves_no_process(
    system: str, scenario: Scenario, tmp_path: Path
) -> None:
    cell = run_checked_cell(tmp_path, system, scenario)
    if scenario.crashes:
        faults = pd.read_csv(cell.faults_csv)
        assert len(faults) == 1 and faults["restart_time"].notna().all()
    if system == "accompanist":
        # Sagas drawn from the sidecars' events for the report (bench.diagrams).
        drawn = cell.meta()["diagrams"]
        assert "committed" in drawn, cell.meta()["diagrams_error"]
        assert (tmp_path / drawn["committed"]).read_text().count("sequenceDiagram") == 1

    summary = pd.read_csv(analyse(tmp_path)[0])
    row = summary[(summary.system == system) & (summary.scenario == scenario.name)].iloc[0]
    assert row["requests"] == row["ok"] + row["errors"]
    assert row["committed"] + row["compensated"] + row["rejected"] == row["ok"]
    assert bool(row["consistent"])


def test_accompanist_default_runs_in_memory_and_consistently(tmp_path: Path) -> None:
    cell = run_checked_cell(tmp_path, "accompanist-default", SMOKE)
    for role in ("warehouse", "payment", "loyalty"):
        assert 'mode = "default"' in (cell.path / f"sidecar-{role}.toml").read_text()
        assert not (cell.path / f"sidecar-{role}.db").exists()  # nothing was made durable
    assert cell.meta()["system_config"] == "default"
    cpu = pd.read_csv(cell.cpu_csv).set_index("process")
    assert cpu.loc["loadgen", "cpu_s"] > 0  # Locust's own CPU, kept apart from the system's
