"""Plots: the charts of a run, as PNGs in ``results/<run>/charts/``.

From the raw requests (if present): a latency CDF per (workload, scenario) with one line per
system; a percentile plot whose x axis is ``1/(1-p)`` on a log scale, so that p99 and p99.9 get
as much room as the median; latency over time per system with warm-up and fault windows shaded.
From summary.csv: bars of p50 and p99 per scenario and system, and for each capacity sweep its
curves: p50 and p99 against the offered rate, and the achieved rate against the offered one.
From cpu_by_kind.csv: CPU-seconds per saga by process kind, the harness's own (Locust, proxy)
hatched apart. A sweep's higher rates get only the sweep's charts, not one set per step.
Warm-up requests are left out of every chart except the timeline, where they are shaded; a
saturated cell (bench.capacity) is marked in every chart it appears in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here; must precede pyplot

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker

from bench import capacity
from bench.analysis import HARNESS_PROCESSES, load_faults, load_requests, read_table
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


def _latencies(
    requests: pd.DataFrame, workload: str, scenario: str, saturated: set[str]
) -> Iterator[tuple[np.ndarray, dict[str, str]]]:
    """Each system's measured latencies in a cell (warm-up excluded, failures included) and
    how to draw its line: a saturated system is labelled so and dashed."""
    data = requests[(requests.workload == workload) & (requests.scenario == scenario)]
    data = data[~data.warmup]
    colours = _colours(list(data.system.unique()))
    for system, group in data.groupby("system"):
        style = {
            "label": f"{system} (saturated)" if system in saturated else system,
            "color": colours[system],
            "linestyle": "--" if system in saturated else "-",
        }
        yield group.latency_ms.to_numpy(), style


def plot_cdf(
    requests: pd.DataFrame,
    workload: str,
    scenario: str,
    out: Path,
    saturated: set[str] = frozenset(),
) -> Path:
    """Latency CDF, one line per system (warm-up excluded, failures included); systems in
    `saturated` are labelled so and drawn dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for latency, style in _latencies(requests, workload, scenario, saturated):
        latency = np.sort(latency)
        ax.plot(latency, np.arange(1, latency.size + 1) / latency.size, **style)
    ax.set_xscale("log")
    _plain_log(ax.xaxis)
    ax.set_xlabel("end-to-end latency (ms, log)")
    ax.set_ylabel("fraction of sagas")
    ax.set_title(f"{workload} / {scenario}: latency CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, out)


def plot_percentiles(
    requests: pd.DataFrame,
    workload: str,
    scenario: str,
    out: Path,
    saturated: set[str] = frozenset(),
) -> Path:
    """Latency by percentile with a log tail axis (x = 1/(1-p)); `saturated` as in the CDF."""
    x = 1 / (1 - _PERCENTILES / 100)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    resolved = 2
    for latency, style in _latencies(requests, workload, scenario, saturated):
        # Percentiles beyond what the sample can resolve would just repeat the max.
        usable = x <= max(latency.size, 2)
        resolved = max(resolved, int(usable.sum()))
        ax.plot(x[usable], np.percentile(latency, _PERCENTILES[usable]), marker="o", **style)
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
    """p50 (solid) and p99 (light) per scenario, one bar group per system; a saturated cell's
    bars are hatched and labelled "sat."."""
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
        saturated = (
            mine["saturated"].fillna(False).astype(bool)
            if "saturated" in mine
            else pd.Series(False, index=mine.index)
        )
        hatch = ["//" if s else "" for s in saturated]
        ax.bar(pos, mine.p99_ms, width, color=colours[system], alpha=0.35, hatch=hatch)
        bars = ax.bar(pos, mine.p50_ms, width, color=colours[system], label=system, hatch=hatch)
        labels = [
            f"{v:.0f}{' sat.' if s else ''}" for v, s in zip(mine.p50_ms, saturated, strict=True)
        ]
        ax.bar_label(bars, labels=labels, fontsize="small")
    ax.set_xticks(xs, scenarios)
    ax.set_ylabel("latency (ms): solid p50 (labelled), light p99; hatched: saturated")
    ax.set_title(f"{workload}: p50 and p99 per scenario")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, out)


def plot_capacity(summary: pd.DataFrame, workload: str, sweep: str, out: Path) -> Path:
    """A sweep's curves: p50 (solid) and p99 (dashed) against the offered rate, and the achieved
    rate against it; saturated steps drawn hollow, the stop rule's limits as grey lines."""
    data = summary[(summary.workload == workload) & (summary.sweep == sweep)]
    colours = _colours(list(data.system.unique()))
    fig, (lat, got) = plt.subplots(1, 2, figsize=(12, 4.5))
    for system, group in data.sort_values("offered_rps").groupby("system"):
        colour = colours[system]
        rate = group.offered_rps
        fill = [("none" if s else colour) for s in group.saturated.astype(bool)]
        for column, style in (("p50_ms", "-"), ("p99_ms", "--")):
            label = f"{system} {column.removesuffix('_ms')}"
            lat.plot(rate, group[column], style, color=colour, label=label)
            lat.scatter(rate, group[column], edgecolors=colour, facecolors=fill, s=25)
        got.plot(rate, group.throughput_rps, "-", color=colour, label=system)
        got.scatter(rate, group.throughput_rps, edgecolors=colour, facecolors=fill, s=25)
    top = float(data.offered_rps.max()) if len(data) else 1.0
    lat.axhline(capacity.P99_LIMIT_MS, color="grey", linewidth=0.8)
    got.plot([0, top], [0, top], color="grey", linewidth=0.8, label="achieved = offered")
    limit = f"{capacity.ACHIEVED_LIMIT:.0%} of offered"
    got.plot([0, top], [0, capacity.ACHIEVED_LIMIT * top], ":", color="grey", label=limit)
    for ax in (lat, got):
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
        ax.set_xlabel("offered rate (sagas/s, fixed-rate open loop, log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    _plain_log_y(lat)
    _plain_log_y(got)
    lat.set_ylabel("latency (ms, log); hollow: saturated")
    lat.set_title(f"{workload} / {sweep}: latency against offered rate")
    got.set_ylabel("achieved (sagas/s, log)")
    got.set_title(f"{workload} / {sweep}: achieved against offered")
    return _save(fig, out)


def plot_cpu(cpu: pd.DataFrame, workload: str, sweep: str, out: Path) -> Path:
    """CPU-seconds per saga by process kind, stacked, one panel per system: per offered rate
    for a sweep, per scenario otherwise (`sweep` = ""). The harness's kinds are hatched."""
    data = cpu[(cpu.workload == workload) & (cpu.sweep == sweep)]
    x_of = (lambda r: f"{r:g}") if sweep else str
    x_column = "offered_rps" if sweep else "scenario"
    systems = sorted(data.system.unique())
    kinds = sorted(data.kind.unique(), key=lambda k: (k in HARNESS_PROCESSES, k))
    colours = _colours(kinds)
    panels = max(len(systems), 1)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4.5), sharey=True, squeeze=False)
    for ax, system in zip(axes[0], systems, strict=False):
        mine = data[data.system == system]
        xs = sorted(mine[x_column].unique())
        bottom = np.zeros(len(xs))
        for kind in kinds:
            per_x = mine[mine.kind == kind].groupby(x_column)["cpu_s_per_saga"].sum()
            values = per_x.reindex(xs).fillna(0).to_numpy()
            harness = kind in HARNESS_PROCESSES
            ax.bar(
                [x_of(x) for x in xs],
                values,
                bottom=bottom,
                color=colours[kind],
                hatch="//" if harness else "",
                label=f"{kind} (harness)" if harness else kind,
            )
            bottom += values
        ax.set_title(system)
        ax.set_xlabel("offered rate (sagas/s)" if sweep else "scenario")
        ax.tick_params(axis="x", labelrotation=45 if not sweep else 0)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("CPU-seconds per saga")
    if systems:
        axes[0, -1].legend(fontsize="small")
    fig.suptitle(f"{workload}{' / ' + sweep if sweep else ''}: CPU per saga by process kind")
    return _save(fig, out)


def _shown_scenarios(summary: pd.DataFrame) -> set[tuple[str, str]]:
    """(workload, scenario) pairs that get per-scenario charts: all but a sweep's higher rates."""
    if summary.empty or "sweep" not in summary:
        return set(zip(summary.get("workload", []), summary.get("scenario", []), strict=True))
    sweep = summary.sweep
    lowest = summary.groupby([summary.workload, sweep]).offered_rps.transform("min")
    keep = (sweep == "") | (summary.offered_rps == lowest)
    return set(zip(summary.workload[keep], summary.scenario[keep], strict=True))


def plot_run(run_dir: Path) -> list[Path]:
    """Every chart of a run that its files allow; returns the PNG paths."""
    run_dir = Path(run_dir)
    charts = run_dir / "charts"
    charts.mkdir(exist_ok=True)
    written: list[Path] = []
    summary_csv = run_dir / "summary.csv"
    summary = read_table(summary_csv)
    shown = _shown_scenarios(summary)
    saturated: dict[tuple[str, str], set[str]] = {}
    if "saturated" in summary:
        for row in summary[summary.saturated.astype(bool)].itertuples():
            saturated.setdefault((row.workload, row.scenario), set()).add(row.system)
    if any(True for _ in cell_dirs(run_dir)):
        requests = load_requests(run_dir)
        faults = load_faults(run_dir)
        for (workload, scenario), _ in requests.groupby(["workload", "scenario"]):
            if summary_csv.exists() and (workload, scenario) not in shown:
                continue
            stem = f"{workload}_{scenario}"
            hot = saturated.get((workload, scenario), set())
            written.append(plot_cdf(requests, workload, scenario, charts / f"cdf_{stem}.png", hot))
            written.append(
                plot_percentiles(
                    requests, workload, scenario, charts / f"percentiles_{stem}.png", hot
                )
            )
            written.append(
                plot_timeline(requests, faults, workload, scenario, charts / f"timeline_{stem}.png")
            )
    if not summary.empty:
        pairs = zip(summary.workload, summary.scenario, strict=True)
        bars = summary[[pair in shown for pair in pairs]]
        for workload in sorted(bars.workload.unique()):
            written.append(plot_bars(bars, workload, charts / f"bars_{workload}.png"))
        if "sweep" in summary:
            swept = summary[summary.sweep != ""]
            for (workload, sweep), _ in swept.groupby(["workload", "sweep"]):
                out = charts / f"capacity_{workload}_{sweep}.png"
                written.append(plot_capacity(summary, workload, sweep, out))
    cpu_csv = run_dir / "cpu_by_kind.csv"
    if cpu_csv.exists():
        cpu = read_table(cpu_csv)
        for (workload, sweep), _ in cpu.groupby([cpu.workload, cpu.sweep]):
            name = f"cpu_{workload}_{sweep}.png" if sweep else f"cpu_{workload}.png"
            written.append(plot_cpu(cpu, workload, sweep, charts / name))
    return written
