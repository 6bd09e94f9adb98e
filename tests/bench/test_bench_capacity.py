"""Capacity: the stop rule, sustainable throughput, saturation flags, and the sweep driver run on
synthetic cells whose latency and throughput are known in advance."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from synthetic_cells import MODELS, write_synthetic_cell

from bench.analysis import analyse, read_table, sustainable_ratio
from bench.capacity import (
    Step,
    is_sustainable,
    saturation_reasons,
    stop_reasons,
    sustainable_rps,
)
from bench.load import LoadProfile
from bench.matrix import Cell, Plan, Scenario, Sweep
from bench.report import headline_markdown, write_report
from bench.results import CellDir, read_json, write_json
from bench.run import run_plan, run_sweep
from launch import DeployError


def step(**changes: float) -> Step:
    """A healthy step at 10 sagas/s, with `changes`."""
    fields = dict(offered_rps=10.0, requests=100, errors=0, p99_ms=200.0, achieved_rps=10.0)
    return Step(**(fields | changes))


def test_the_stop_rule_fires_on_p99_errors_and_falling_behind_and_not_before() -> None:
    assert stop_reasons(step(p99_ms=1000.0)) == []
    assert stop_reasons(step(errors=1)) == []  # 1 % is not more than 1 %
    assert stop_reasons(step(achieved_rps=9.5)) == []
    assert stop_reasons(step(p99_ms=1000.1)) == ["p99 1000 ms > 1000 ms"]
    assert stop_reasons(step(errors=2)) == ["errors 2.0% > 1%"]
    assert stop_reasons(step(achieved_rps=9.4)) == ["achieved 9.4/s of 10/s offered (94.0% < 95%)"]
    assert len(stop_reasons(step(p99_ms=5000.0, errors=50, achieved_rps=2.0))) == 3
    assert stop_reasons(step(requests=0)) == ["no requests measured"]
    assert stop_reasons(step(p99_ms=math.nan))  # nothing measured cannot pass


def test_sustainable_needs_no_error_at_all_and_is_the_highest_such_rate() -> None:
    assert is_sustainable(step())
    assert not is_sustainable(step(errors=1))  # below the stop rule's limit, still not clean
    assert not is_sustainable(step(p99_ms=1000.0))
    steps = [step(offered_rps=r, achieved_rps=r) for r in (2.0, 5.0, 10.0)]
    assert sustainable_rps([*steps, step(offered_rps=20.0, achieved_rps=12.0)]) == 10.0
    assert math.isnan(sustainable_rps([step(errors=3)]))


def test_sustainable_throughput_stops_at_the_first_unsustainable_rate() -> None:
    clean = [step(offered_rps=r, achieved_rps=r) for r in (2.0, 10.0, 20.0)]
    one_error_at_5 = step(offered_rps=5.0, achieved_rps=5.0, errors=1)
    # 10 and 20 passed after 5 did not: luck, not capacity. Order of the steps does not matter.
    assert sustainable_rps([clean[2], one_error_at_5, *clean[:2]]) == 2.0
    assert math.isnan(sustainable_rps([step(offered_rps=2.0, errors=1), *clean[1:]]))


def test_a_ratio_of_sustainable_throughputs_is_a_bound_where_one_never_stopped() -> None:
    assert sustainable_ratio(10.0, False, 40.0, False) == (0.25, "")
    assert sustainable_ratio(10.0, False, 40.0, True) == (0.25, "at most")
    assert sustainable_ratio(80.0, True, 40.0, False) == (2.0, "at least")
    value, kind = sustainable_ratio(160.0, True, 160.0, True)
    assert math.isnan(value) and kind == "neither stopped within the sweep"


def test_saturation_counts_cpu_and_in_crash_cells_only_cpu() -> None:
    assert saturation_reasons(step(cpu_cores=1.39), machine_cores=2) == []
    assert saturation_reasons(step(cpu_cores=1.4), machine_cores=2) == [
        "system CPU 1.40 of 2 cores (>= 70%)"
    ]
    crashed = step(p99_ms=2600.0, errors=5, crashes=True)
    assert saturation_reasons(crashed, machine_cores=2) == []
    assert saturation_reasons(step(p99_ms=2600.0), machine_cores=2) == ["p99 2600 ms > 1000 ms"]
    behind = step(achieved_rps=8.0, crashes=True)  # the last crash's backlog, not the load
    assert saturation_reasons(behind, machine_cores=2) == []
    assert saturation_reasons(step(cpu_cores=1.5, crashes=True), machine_cores=2)
    closed_loop = step(offered_rps=math.nan, achieved_rps=60.0)
    assert saturation_reasons(closed_loop, machine_cores=2) == []


SWEEP = Sweep(
    "capacity",
    "synthetic",
    ("warehouse",),
    tuple(MODELS),
    Scenario("capacity", "local", LoadProfile("open", rate_rps=1.0), 10, 2.0),
    (2.0, 5.0, 10.0, 20.0, 40.0, 80.0),
    repetitions=2,
)


@pytest.fixture
def swept(tmp_path: Path) -> tuple[Path, dict, list[Cell]]:
    ran: list[Cell] = []

    def fake_run(run_dir: Path, cell: Cell, progress: Callable[[str], None]) -> CellDir:
        ran.append(cell)
        return write_synthetic_cell(run_dir, cell)

    write_json(tmp_path / "environment.json", {"machine": {"nproc": 2}})
    stops = run_sweep(tmp_path, SWEEP, run=fake_run, progress=lambda _: None)
    stopped = {(s.workload, s.system): (s.stopped_at_rps, s.reasons) for s in stops}
    return tmp_path, stopped, ran


def test_the_sweep_stops_each_system_at_the_first_rate_past_its_capacity(swept) -> None:
    _, stopped, ran = swept
    rates = {s: [c.scenario.load.rate_rps for c in ran if c.system == s] for s in MODELS}
    assert rates["accompanist"] == [2, 2, 5, 10, 20, 40, 80]  # two repetitions at the lowest
    assert rates["accompanist-default"] == [2, 2, 5, 10, 20, 40, 80]
    assert rates["temporal-tuned"] == [2, 2, 5, 10, 20]
    assert rates["temporal-distributed"] == [2, 2, 5]
    assert stopped[("warehouse", "accompanist")] == (80, ["p99 1500 ms > 1000 ms"])
    assert stopped[("warehouse", "accompanist-default")] == (None, [])
    # Falling behind shows as a queue: its latency grows for as long as the step lasts.
    rate, reasons = stopped[("warehouse", "temporal-tuned")]
    assert rate == 20 and reasons[0].startswith("p99")
    rate, reasons = stopped[("warehouse", "temporal-distributed")]
    assert rate == 5 and reasons[0] == "errors 5.0% > 1%"
    # Repetitions outermost within a rate, systems interleaved: drift hits every system alike.
    assert [c.system for c in ran[:4]] == list(MODELS)[:4]


def test_sustainable_throughput_lands_in_summary_capacity_and_ratios(swept) -> None:
    run_dir, _, _ = swept
    analyse(run_dir)
    capacity = read_table(run_dir / "capacity.csv").set_index("system")
    assert capacity.loc["accompanist", "sustainable_rps"] == 40
    assert capacity.loc["accompanist", "stopped_at_rps"] == 80
    assert capacity.loc["temporal-tuned", "sustainable_rps"] == 10
    assert capacity.loc["temporal-distributed", "sustainable_rps"] == 2
    assert capacity.loc["temporal-distributed", "sustainable_ratio"] == pytest.approx(2 / 40)
    never = capacity.loc["accompanist-default"]
    assert never.sustainable_rps == 80 and math.isnan(never.stopped_at_rps)  # a lower bound
    assert (never.sustainable_ratio, never.sustainable_ratio_is) == (2.0, "at least")
    assert capacity.loc["temporal-tuned", "sustainable_ratio_is"] == ""  # both stopped: exact
    assert capacity.loc["accompanist", "sustainable_ratio_is"] == ""
    summary = read_table(run_dir / "summary.csv")
    tuned = summary[summary.system == "temporal-tuned"]
    assert set(tuned.sustainable_rps) == {10.0} and set(tuned.sweep) == {"capacity"}
    behind = tuned.set_index("offered_rps").loc[20.0]
    assert behind.saturated and behind.p99_ms > 1000
    assert tuned.set_index("offered_rps").loc[10.0, "arrival_rps"] == pytest.approx(10.0)
    ratios = read_table(run_dir / "ratios.csv")
    lowest = ratios[ratios.scenario == "capacity-2rps"].set_index("system")
    assert lowest.loc["temporal-tuned", "sustainable_ratio"] == pytest.approx(10 / 40)
    assert lowest.loc["temporal-tuned", "ci_basis"] == "repetitions"
    headline = headline_markdown(run_dir)
    assert "`capacity-2rps`: 2 sagas/s, 2 reps" in headline and ">= 80 sagas/s" in headline
    assert "capacity-5rps" not in headline.split("Sustainable throughput")[0]


def _saturation_run(run_dir: Path) -> None:
    """A sequential scenario where temporal-tuned burns 1.8 of 2 cores, and a crash scenario
    whose crashes do not apply to temporal-distributed."""
    write_json(run_dir / "environment.json", {"machine": {"nproc": 2}})
    seq = Scenario("local-sequential", "local", LoadProfile("closed"), 10, 1.0)
    for system, cpu_s in (("accompanist", 5.0), ("temporal-tuned", 18.0)):
        write_synthetic_cell(run_dir, Cell("warehouse", system, seq, 1), cpu_s=cpu_s)
    crash = Scenario("crash", "local", LoadProfile("open", rate_rps=2.0), 10, 1.0)
    for system in ("accompanist", "temporal-distributed"):
        cd = write_synthetic_cell(run_dir, Cell("warehouse", system, crash, 1))
        applicable = system != "temporal-distributed"
        write_json(cd.meta_json, cd.meta() | {"crashes": {"every_s": 5},
                                              "crashes_applicable": applicable})  # fmt: skip


def test_a_saturated_cell_is_flagged_everywhere_and_gives_no_bare_ratio(tmp_path: Path) -> None:
    _saturation_run(tmp_path)
    analyse(tmp_path)
    summary = read_table(tmp_path / "summary.csv").set_index(["system", "scenario"])
    hot = summary.loc[("temporal-tuned", "local-sequential")]
    assert hot.saturated and hot.cpu_cores == pytest.approx(1.8)
    assert hot.saturation == "system CPU 1.80 of 2 cores (>= 70%)"
    assert not summary.loc[("accompanist", "local-sequential")].saturated
    ratios = read_table(tmp_path / "ratios.csv").set_index(["system", "scenario"])
    flagged = ratios.loc[("temporal-tuned", "local-sequential")]
    assert not flagged.comparable and "saturated: temporal-tuned" in flagged.note
    not_applicable = ratios.loc[("temporal-distributed", "crash")]
    assert math.isnan(not_applicable.p50_ratio) and not not_applicable.comparable
    assert "crashes do not apply to temporal-distributed" in not_applicable.note
    report = write_report(tmp_path).read_text()
    headline = report.split("## Configuration")[0]
    assert "no ratio: saturated: temporal-tuned" in headline
    assert "x [" not in headline  # no ratio is shown for it, bare or otherwise
    ratio_rows = [line for line in report.splitlines() if "| local-sequential |" in line]
    assert any("(saturated)" in line for line in ratio_rows)


def test_a_cell_that_keeps_up_is_not_saturated(tmp_path: Path) -> None:
    cell = Cell("warehouse", "accompanist", SWEEP.step(10.0), 1)
    write_synthetic_cell(tmp_path, cell)
    analyse(tmp_path)
    row = pd.read_csv(tmp_path / "summary.csv").iloc[0]
    assert not row.saturated and row.throughput_rps == pytest.approx(10.0, rel=0.02)


@pytest.mark.parametrize("latency_ms", [5.0, 400.0, 900.0])
def test_achieved_counts_arrivals_so_no_saga_at_the_window_edge_moves_it(
    tmp_path: Path, latency_ms: float
) -> None:
    # At 2 sagas/s and 8 s measured one saga is 6 % of the window: counted by when it ended, a
    # latency that pushes one past the edge would look like falling behind.
    cell = Cell("warehouse", "accompanist", SWEEP.step(2.0), 1)
    write_synthetic_cell(tmp_path, cell, model=lambda r: (None, latency_ms, 0.0))
    analyse(tmp_path)
    row = read_table(tmp_path / "summary.csv").iloc[0]
    assert row.throughput_rps == pytest.approx(2.0) and not row.saturated


def _failing_at(system: str, rate: float) -> Callable[[Path, Cell, Callable], CellDir]:
    def run(run_dir: Path, cell: Cell, progress: Callable[[str], None]) -> CellDir:
        if cell.system == system and cell.scenario.load.rate_rps == rate:
            raise DeployError("gateway did not become healthy\nlog tail ...")
        return write_synthetic_cell(run_dir, cell)

    return run


def test_a_step_that_fails_to_deploy_is_where_the_system_stopped(tmp_path: Path) -> None:
    # accompanist-default would never stop; its top step fails to deploy. That is no pass: the
    # sweep must not report it as having reached the top rate with a lower-bound throughput.
    run_dir = run_plan(Plan("failing", (), (SWEEP,)), tmp_path,
                       run=_failing_at("accompanist-default", 80.0))  # fmt: skip
    stops = {(s["workload"], s["system"]): s
             for s in read_json(run_dir / "capacity_stops.json")["capacity"]}  # fmt: skip
    failed = stops[("warehouse", "accompanist-default")]
    reason = "cell failed: rep1: gateway did not become healthy"
    assert failed["stopped_at_rps"] == 80 and failed["reasons"] == [reason]
    assert stops[("warehouse", "accompanist")]["reasons"] == ["p99 1500 ms > 1000 ms"]
    capacity = read_table(run_dir / "capacity.csv").set_index("system")
    row = capacity.loc["accompanist-default"]
    assert row.stopped_at_rps == 80 and row.stop_reason == reason
    assert row.sustainable_rps == 40 and not row.sustainable_is_lower_bound
    assert (row.sustainable_ratio, row.sustainable_ratio_is) == (1.0, "")  # exact, not "at least"
    summary = read_table(run_dir / "summary.csv").set_index(["system", "offered_rps"])
    assert summary.loc[("accompanist-default", 80.0), "status"] == "failed"
    assert not summary.loc[("accompanist-default", 40.0), "sustainable_is_lower_bound"]
    headline = headline_markdown(run_dir)
    (row_line,) = [line for line in headline.splitlines()
                   if line.startswith("| warehouse | accompanist-default |")]  # fmt: skip
    assert "| 40 sagas/s |" in row_line and "(top rate)" not in row_line
    assert row_line.endswith(f"| 80 sagas/s | {reason} | 1.00x |")


def test_a_failed_lowest_step_leaves_no_sustainable_throughput(tmp_path: Path) -> None:
    run_dir = run_plan(Plan("failing", (), (SWEEP,)), tmp_path,
                       run=_failing_at("temporal-tuned", 2.0))  # fmt: skip
    row = read_table(run_dir / "capacity.csv").set_index("system").loc["temporal-tuned"]
    assert row.rates_run == "2" and row.stopped_at_rps == 2 and math.isnan(row.sustainable_rps)
    assert row.stop_reason.startswith("cell failed: rep1: gateway")
    assert "rep2: gateway" in row.stop_reason  # both repetitions of the lowest rate failed
