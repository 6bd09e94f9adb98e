"""Analysis, plots, report and CLI over a synthetic run folder with known answers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import __main__ as cli
from bench.analysis import (
    SUMMARY_COLUMNS,
    analyse,
    bootstrap_ci,
    load_requests,
    percentile_ms,
    ratios,
    summarise,
)
from bench.load import RAW_COLUMNS
from bench.plots import plot_run
from bench.proxy import PROXY_CSV
from bench.report import markdown_table, write_report
from bench.results import cell_dir, cell_dirs, refresh_latest, write_json

CONTRACT_COLUMNS = [
    "workload",
    "system",
    "scenario",
    "requests",
    "ok",
    "errors",
    "committed",
    "compensated",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "throughput_rps",
    "consistent",
]
T0 = 1_800_000_000.0


def _write_requests(path: Path, latencies_ms: list[float], warmup: int = 0,
                    failed: int = 0) -> None:  # fmt: skip
    """One request per second of intended start; the first `warmup` are warm-up (10 s each)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RAW_COLUMNS)
        for i, latency in enumerate(latencies_ms):
            intended = T0 + i * 0.1
            end = intended + latency / 1000
            bad = i >= len(latencies_ms) - failed
            writer.writerow([
                f"s{i}", intended, intended, end, latency, 0 if bad else 200,
                "" if bad else ("committed" if i % 4 else "compensated"), "",
                "ConnectionRefusedError()" if bad else "", int(i < warmup),
            ])  # fmt: skip


def _cell(run: Path, system: str, latencies: list[float], floor: float, rep: int = 1,
          warmup: int = 0, failed: int = 0, consistent: bool = True) -> None:  # fmt: skip
    cell = cell_dir(run, "warehouse", system, "three-zones", rep)
    _write_requests(cell.requests_csv, latencies, warmup, failed)
    write_json(cell.meta_json, {"floor_ms": floor})
    write_json(cell.check_json, {"consistent": consistent})
    cell.cpu_csv.write_text(
        "process,cpu_user_s,cpu_system_s,cpu_s,starts\n"
        f"runtime:payment,1,1,{len(latencies) * 0.01},1\nloadgen,5,5,10,1\n"
    )
    cell.faults_csv.write_text(
        "slot,process,planned_kill_s,kill_time,restart_time,healthy_time,note\n"
        f"runtime:payment,runtime:payment,5,{T0 + 5},{T0 + 7},{T0 + 7.5},\n"
    )
    cell.links_csv.write_text(
        "link,listen,target,configured_one_way_ms,jitter_ms,handshake,connect_ms,first_byte_ms,"
        "error\na->runtime:payment,127.0.0.1:1,127.0.0.1:2,10,0.5,True,0.2,21.3,\n"
    )


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run = tmp_path / "results" / "20260101-000000-test"
    # accompanist: 1..1000 ms, plus 100 warm-up requests of 10 s that must not count.
    _cell(run, "accompanist", [10_000.0] * 100 + [float(x) for x in range(1, 1001)], 30.0,
          warmup=100)  # fmt: skip
    # temporal: twice as slow, 10 of its 1000 requests failed (and still count, slowly).
    _cell(run, "temporal-distributed", [2.0 * x for x in range(1, 1001)], 40.0, failed=10,
          consistent=False)  # fmt: skip
    write_json(run / "run.json", {"matrix": "test", "topologies": ["three-zones"]})
    return run


def test_percentiles_of_a_known_sample() -> None:
    latencies = np.arange(1, 1001, dtype=float)
    assert percentile_ms(latencies, 50) == pytest.approx(500.5)
    assert percentile_ms(latencies, 99) == pytest.approx(990.01)
    assert np.isnan(percentile_ms([], 50))


def test_summary_excludes_warmup_and_counts_failures(run: Path) -> None:
    table = summarise(load_requests(run), list(cell_dirs(run)))
    assert list(table.columns) == SUMMARY_COLUMNS
    summary = table.set_index("system")
    acc = summary.loc["accompanist"]
    assert acc.requests == 1000 and acc.ok == 1000 and acc.errors == 0
    assert acc.committed + acc.compensated == 1000 and acc.compensated == 250
    assert acc.p50_ms == pytest.approx(500.5)
    assert acc.p90_ms == pytest.approx(900.1)
    assert acc.p99_ms == pytest.approx(990.01)
    assert acc.p999_ms == pytest.approx(999.001)
    assert acc.max_ms == pytest.approx(1000)
    assert acc.p50_over_floor_ms == pytest.approx(470.5)
    assert acc.consistent == True  # noqa: E712  (numpy and Python booleans alike)
    # 1100 requests ran (warm-up included) and the loadgen's CPU is not the system's.
    assert acc.cpu_s_per_saga == pytest.approx(11.0 / 1100)
    assert acc.p50_ci_low <= acc.p50_ms <= acc.p50_ci_high
    # Sagas that ended with an outcome in the measured window (from the first measured intended
    # start up to the last, 99.9 s): the 100 slow warm-up sagas end in it too, but completions
    # are capped by the 999 arrivals in the window that succeeded.
    assert acc.throughput_rps == pytest.approx(999 / 99.9, rel=1e-6)
    assert acc.arrival_rps == pytest.approx(10.0)
    tmp = summary.loc["temporal-distributed"]
    assert tmp.requests == 1000 and tmp.errors == 10 and tmp.ok == 990
    # Completions are counted in the window shifted by the median latency (1 s): its first 10
    # sagas end before that (no warm-up makes up for them), and its last 10 failed.
    assert tmp.throughput_rps == pytest.approx(980 / 99.9, rel=1e-6)
    assert (tmp.status, tmp.failure) == ("ok", "")
    assert tmp.max_ms == pytest.approx(2000)
    assert tmp.consistent == False  # noqa: E712


def test_a_system_that_falls_behind_achieves_what_it_completes_not_what_it_drains(
    tmp_path: Path,
) -> None:
    """Offered 10/s, served 5/s one at a time: every saga succeeds once the load has stopped
    and the queue drains, but only half of them end inside the window."""
    run = tmp_path / "results" / "20260101-000000-behind"
    cell = cell_dir(run, "warehouse", "temporal-distributed", "three-zones", 1)
    with cell.requests_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RAW_COLUMNS)
        free_at = T0
        for i in range(300):
            intended = T0 + i * 0.1
            free_at = max(free_at, intended) + 0.2
            writer.writerow([f"s{i}", intended, intended, free_at, (free_at - intended) * 1000,
                             200, "committed", "", "", int(i < 50)])  # fmt: skip
    write_json(cell.meta_json, {"floor_ms": 0.0})
    behind = summarise(load_requests(run), list(cell_dirs(run))).iloc[0]
    assert behind.ok == 250 and behind.arrival_rps == pytest.approx(10.0)
    # The server is busy with the queue from the first saga on: it ends 5 a second.
    assert behind.throughput_rps == pytest.approx(5.0, abs=0.1)


def test_ratios_compare_every_system_with_accompanist(run: Path) -> None:
    table = ratios(summarise(load_requests(run), list(cell_dirs(run))))
    row = table.set_index("system").loc["temporal-distributed"]
    assert row.p50_ratio == pytest.approx(2.0)
    assert row.p99_ratio == pytest.approx(2.0)
    assert row.floor_ratio == pytest.approx(40 / 30)


def test_repetitions_give_a_bootstrap_interval_over_runs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for rep, scale in enumerate((1.0, 1.1, 0.9, 1.05), start=1):
        _cell(run, "accompanist", [scale * x for x in range(1, 201)], 30.0, rep=rep)
    row = summarise(load_requests(run), list(cell_dirs(run))).iloc[0]
    assert row.reps == 4 and row.ci_basis == "repetitions"
    assert 0.9 * 100.5 <= row.p50_ci_low <= row.p50_ci_high <= 1.1 * 100.5


def test_bootstrap_interval_is_reproducible_and_brackets_the_statistic() -> None:
    sample = np.random.default_rng(1).exponential(50, 500)
    low, high = bootstrap_ci(sample, np.median)
    assert (low, high) == bootstrap_ci(sample, np.median)
    assert low < np.median(sample) < high


def test_analyse_plot_report_and_latest_from_a_run_folder(run: Path) -> None:
    summary_path, ratios_path, capacity_path, cpu_path = analyse(run)
    summary = pd.read_csv(summary_path)
    assert set(CONTRACT_COLUMNS) <= set(summary.columns)
    assert len(summary) == 2 and len(pd.read_csv(ratios_path)) == 1
    assert pd.read_csv(capacity_path).empty  # no sweep in this run
    cpu = pd.read_csv(cpu_path).set_index(["system", "kind"])
    assert cpu.loc[("accompanist", "loadgen"), "harness"]
    assert cpu.loc[("accompanist", "runtime"), "cpu_s_per_saga"] == pytest.approx(11.0 / 1100)
    charts = plot_run(run)
    names = {c.name for c in charts}
    assert {"cdf_warehouse_three-zones.png", "percentiles_warehouse_three-zones.png",
            "timeline_warehouse_three-zones.png", "bars_warehouse.png"} <= names  # fmt: skip
    assert all(c.stat().st_size > 1000 for c in charts)
    text = write_report(run).read_text()
    for needed in (
        "## Versions",
        "temporalio",
        "## Machine",
        "nproc",
        "three-zones",
        "a->runtime:payment",
        "| warehouse | accompanist |",
        "charts/bars_warehouse.png",
    ):
        assert needed in text  # fmt: skip
    latest = refresh_latest(run, run.parent)
    assert (latest / "summary.csv").exists() and not (latest / "raw").exists()


def test_the_proxy_over_its_bar_and_a_contended_cell_are_flagged(run: Path) -> None:
    cells = {c.system: c for c in cell_dirs(run)}
    # accompanist's probe: 0.90 ms through the worst link, 0.25 ms straight to the echo.
    (cells["accompanist"].path / PROXY_CSV).write_text(
        "link,configured_one_way_ms,samples,errors,added_p50_ms,added_p99_ms,added_max_ms\n"
        "(direct),0,100,0,0.25,0.4,0.5\na->b,10,100,0,0.9,1.5,2.0\nb->a,10,100,0,0.5,0.8,1.0\n"
    )
    # temporal's window of 100 s: the machine was busy 91 s more than its processes (20 s in
    # cpu.csv, Locust's 10 included) and the harness (5 s) account for: 0.91 cores beside it.
    meta = cells["temporal-distributed"].meta()
    write_json(
        cells["temporal-distributed"].meta_json,
        {**meta, "cpu_window_s": 100.0, "machine_cpu_s": 116.0, "harness_cpu_s": 5.0},
    )
    summary = summarise(load_requests(run), list(cells.values())).set_index("system")
    acc, tmp = summary.loc["accompanist"], summary.loc["temporal-distributed"]
    assert acc.proxy_added_p50_ms == pytest.approx(0.9)
    assert acc.proxy_own_p50_ms == pytest.approx(0.65)
    assert np.isnan(tmp.proxy_own_p50_ms) and np.isnan(acc.outside_cores)
    assert tmp.outside_cores == pytest.approx(0.91) and tmp.contended and not acc.contended
    analyse(run)
    text = write_report(run).read_text()
    assert "**1 cells are over 0.5 ms**: warehouse/accompanist/three-zones" in text
    assert "**1 cells were contended**" in text


def test_markdown_table_leaves_missing_values_blank() -> None:
    table = markdown_table(pd.DataFrame({"a": [1.5, float("nan"), 0.01234], "b": ["x", None, "y"]}))
    assert table.splitlines()[2:] == ["| 1.5 | x |", "|  |  |", "| 0.0123 | y |"]


def test_cli_report_and_plot_work_on_a_run_folder(run: Path, capsys) -> None:
    assert cli.main(["report", str(run)]) == 0
    assert (run / "report.md").exists() and (run / "summary.csv").exists()
    assert cli.main(["plot", str(run)]) == 0


def test_cli_list_shows_topologies_systems_and_matrices(capsys) -> None:
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for needed in ("three-zones", "temporal-tuned", "quick", "default"):
        assert needed in out
