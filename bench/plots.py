"""Plots: the charts of a run, as PNGs in ``results/<run>/charts/``.

From the raw requests (if present): a latency CDF per (workload, scenario) with one line per
system; a percentile plot whose x axis is ``1/(1-p)`` on a log scale, so that p99 and p99.9 get
as much room as the median; latency over time per system with warm-up and fault windows shaded.
From summary.csv: bars of p50 and p99 per scenario and system. Warm-up requests are left out of
every chart except the timeline, where they are shaded.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here; must precede pyplot

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker

from bench.analysis import load_faults, load_requests
from bench.results import cell_dirs

_PERCENTILES = np.array([50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99])
_DPI = 110


def _colours(systems: list[str]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {s: cycle[i % len(cycle)] for i, s in enumerate(sorted(systems))}


def _plain_log(axis: matplotlib.axis.Axis) -> None:
    """Label a log axis 20, 50, 100, 200 ... rather than 2x10^1."""
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
    axis.set_minor_formatter(plain)


def _plain_log_y(ax: plt.Axes) -> None:
    ax.set_yscale("log")
    _plain_log(ax.yaxis)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def plot_cdf(requests: pd.DataFrame, workload: str, scenario: str, out: Path) -> Path:
    """Latency CDF, one line per system (warm-up excluded, failures included)."""
    data = requests[(requests.workload == workload) & (requests.scenario == scenario)]
    data = data[~data.warmup]
    colours = _colours(list(data.system.unique()))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, group in data.groupby("system"):
        latency = np.sort(group.latency_ms.to_numpy())
        ax.plot(
            latency,
            np.arange(1, latency.size + 1) / latency.size,
            label=system,
            color=colours[system],
        )
    ax.set_xscale("log")
    _plain_log(ax.xaxis)
    ax.set_xlabel("end-to-end latency (ms, log)")
    ax.set_ylabel("fraction of sagas")
    ax.set_title(f"{workload} / {scenario}: latency CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, out)


def plot_percentiles(requests: pd.DataFrame, workload: str, scenario: str, out: Path) -> Path:
    """Latency by percentile with a log tail axis (x = 1/(1-p))."""
    data = requests[(requests.workload == workload) & (requests.scenario == scenario)]
    data = data[~data.warmup]
    colours = _colours(list(data.system.unique()))
    x = 1 / (1 - _PERCENTILES / 100)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    resolved = 2
    for system, group in data.groupby("system"):
        latency = group.latency_ms.to_numpy()
        # Percentiles beyond what the sample can resolve would just repeat the max.
        usable = x <= max(latency.size, 2)
        resolved = max(resolved, int(usable.sum()))
        ax.plot(
            x[usable],
            np.percentile(latency, _PERCENTILES[usable]),
            marker="o",
            label=system,
            color=colours[system],
        )
    ax.set_xscale("log")
    _plain_log_y(ax)
    ax.set_xticks(x[:resolved], [f"p{p:g}" for p in _PERCENTILES[:resolved]])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlabel("percentile (log tail axis)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title(f"{workload} / {scenario}: latency by percentile")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, out)


def plot_timeline(
    requests: pd.DataFrame, faults: pd.DataFrame, workload: str, scenario: str, out: Path
) -> Path:
    """Latency over time per system (first repetition), fault windows shaded red."""
    data = requests[(requests.workload == workload) & (requests.scenario == scenario)]
    data = data[data.rep == data.rep.min()]
    systems = sorted(data.system.unique())
    fig, axes = plt.subplots(
        len(systems), 1, figsize=(9, 2.4 * len(systems)), sharex=True, squeeze=False
    )
    for ax, system in zip(axes[:, 0], systems, strict=True):
        mine = data[data.system == system]
        t0 = mine.intended_start.min()
        ok, failed = mine[mine.ok], mine[~mine.ok]
        ax.scatter(ok.intended_start - t0, ok.latency_ms, s=4, label="ok")
        ax.scatter(
            failed.intended_start - t0,
            failed.latency_ms,
            s=8,
            color="black",
            marker="x",
            label="failed",
        )
        warm = mine[mine.warmup]
        if len(warm):
            ax.axvspan(0, warm.intended_start.max() - t0, color="grey", alpha=0.15, label="warm-up")
        if not faults.empty:
            windows = faults[
                (faults.workload == workload)
                & (faults.scenario == scenario)
                & (faults.system == system)
                & (faults.rep == mine.rep.min())
            ]
            for i, (_, w) in enumerate(windows.dropna(subset=["kill_time"]).iterrows()):
                end = w.healthy_time if not np.isnan(w.healthy_time) else w.restart_time
                ax.axvspan(
                    w.kill_time - t0,
                    end - t0,
                    color="red",
                    alpha=0.2,
                    label="process down" if i == 0 else None,
                )
        _plain_log_y(ax)
        ax.set_ylabel(f"{system}\nms (log)")
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_title(f"{workload} / {scenario}: latency over time")
    axes[0, 0].legend(loc="upper right", fontsize="small")
    axes[-1, 0].set_xlabel("intended start (s since load start)")
    return _save(fig, out)


def plot_bars(summary: pd.DataFrame, workload: str, out: Path) -> Path:
    """p50 (solid) and p99 (light) per scenario, one bar group per system."""
    data = summary[summary.workload == workload]
    scenarios = list(dict.fromkeys(data.scenario))
    systems = sorted(data.system.unique())
    colours = _colours(systems)
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(max(6, 2.5 * len(scenarios)), 4.5))
    xs = np.arange(len(scenarios))
    for i, system in enumerate(systems):
        mine = data[data.system == system].set_index("scenario").reindex(scenarios)
        pos = xs - 0.4 + width * (i + 0.5)
        ax.bar(pos, mine.p99_ms, width, color=colours[system], alpha=0.35)
        bars = ax.bar(pos, mine.p50_ms, width, color=colours[system], label=system)
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in mine.p50_ms], fontsize="small")
    ax.set_xticks(xs, scenarios)
    ax.set_ylabel("latency (ms): solid p50 (labelled), light p99")
    ax.set_title(f"{workload}: p50 and p99 per scenario")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, out)


def plot_run(run_dir: Path) -> list[Path]:
    """Every chart of a run that its files allow; returns the PNG paths."""
    run_dir = Path(run_dir)
    charts = run_dir / "charts"
    charts.mkdir(exist_ok=True)
    written: list[Path] = []
    if any(True for _ in cell_dirs(run_dir)):
        requests = load_requests(run_dir)
        faults = load_faults(run_dir)
        for (workload, scenario), _ in requests.groupby(["workload", "scenario"]):
            stem = f"{workload}_{scenario}"
            written.append(plot_cdf(requests, workload, scenario, charts / f"cdf_{stem}.png"))
            written.append(
                plot_percentiles(requests, workload, scenario, charts / f"percentiles_{stem}.png")
            )
            written.append(
                plot_timeline(requests, faults, workload, scenario, charts / f"timeline_{stem}.png")
            )
    summary_csv = run_dir / "summary.csv"
    if summary_csv.exists():
        summary = pd.read_csv(summary_csv)
        for workload in sorted(summary.workload.unique()):
            written.append(plot_bars(summary, workload, charts / f"bars_{workload}.png"))
    return written
