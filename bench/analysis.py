"""Analysis: raw per-request CSVs of a run -> summary.csv and ratios.csv.

Latency is ``end - intended_start``: for an open loop that includes any time a request waited to
be sent, so stalls are not hidden. Every request after warm-up counts, failed and timed-out ones
too (with the latency they had). Repetitions of a cell are pooled for the percentiles; their
spread gives bootstrap confidence intervals for p50 and p99 (over repetitions when there are at
least two, otherwise over requests; ``ci_basis`` says which).

summary.csv has one row per (workload, system, scenario) with :data:`SUMMARY_COLUMNS`;
ratios.csv has one row per (workload, scenario, other system) comparing each system with
:data:`bench.matrix.BASELINE_SYSTEM`: ``p50_ratio = p50(system) / p50(baseline)``, likewise p99,
and ``floor_ratio``, the same ratio of network floors, which bounds what any runtime can win.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench.matrix import BASELINE_SYSTEM
from bench.results import CellDir, cell_dirs, read_json

OUTCOMES = ("committed", "compensated", "rejected")
# Harness processes: they load and shape the network, they do not serve sagas.
HARNESS_PROCESSES = frozenset({"loadgen", "proxy"})
KEYS = ["workload", "system", "scenario"]
SUMMARY_COLUMNS = [
    *KEYS,
    "requests",
    "ok",
    "errors",
    "committed",
    "compensated",
    "rejected",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "throughput_rps",
    "consistent",
    "floor_ms",
    "p50_over_floor_ms",
    "p99_over_floor_ms",
    "cpu_s_per_saga",
    "reps",
    "p50_ci_low",
    "p50_ci_high",
    "p99_ci_low",
    "p99_ci_high",
    "ci_basis",
]
RATIO_COLUMNS = [
    "workload",
    "scenario",
    "system",
    "baseline",
    "p50_ratio",
    "p99_ratio",
    "floor_ratio",
    "throughput_ratio",
]
BOOTSTRAP_RESAMPLES = 2000


def percentile_ms(latencies_ms: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation); NaN for no data."""
    values = np.asarray(latencies_ms, dtype=float)
    return float(np.percentile(values, q)) if values.size else float("nan")


def bootstrap_ci(
    samples: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float],
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``statistic`` over ``samples``."""
    values = np.asarray(samples, dtype=float)
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.array(
        [statistic(rng.choice(values, values.size, replace=True)) for _ in range(resamples)]
    )
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


def read_requests(path: Path) -> pd.DataFrame:
    """One raw requests.csv with typed columns and ``latency_ms`` from the intended start."""
    df = pd.read_csv(
        path,
        dtype={"saga_id": str, "outcome": str, "reason": str, "error": str},
        keep_default_na=False,
    )
    for column in ("intended_start", "start", "end"):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    df["status"] = pd.to_numeric(df["status"], errors="coerce").fillna(0).astype(int)
    df["warmup"] = pd.to_numeric(df["warmup"], errors="coerce").fillna(0).astype(bool)
    df["latency_ms"] = (df["end"] - df["intended_start"]) * 1000.0
    df["ok"] = (df["status"] == 200) & df["outcome"].isin(OUTCOMES) & (df["error"] == "")
    return df


def load_requests(run_dir: Path) -> pd.DataFrame:
    """Every request of a run, with workload, system, scenario and rep columns."""
    frames = []
    for cell in cell_dirs(run_dir):
        df = read_requests(cell.requests_csv)
        df["workload"], df["system"], df["scenario"], df["rep"] = (
            cell.workload,
            cell.system,
            cell.scenario,
            cell.rep,
        )
        frames.append(df)
    if not frames:
        raise FileNotFoundError(f"{run_dir}: no raw/*/*/*/rep*/requests.csv")
    return pd.concat(frames, ignore_index=True)


def load_faults(run_dir: Path) -> pd.DataFrame:
    """Every recorded fault window of a run (possibly empty)."""
    frames = []
    for cell in cell_dirs(run_dir):
        if cell.faults_csv.exists():
            df = pd.read_csv(cell.faults_csv, keep_default_na=False, dtype={"note": str})
            for column in ("kill_time", "restart_time", "healthy_time"):
                df[column] = pd.to_numeric(df[column], errors="coerce")
            df["workload"], df["system"], df["scenario"], df["rep"] = (
                cell.workload,
                cell.system,
                cell.scenario,
                cell.rep,
            )
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _cell_cpu_s(cell: CellDir) -> float:
    if not cell.cpu_csv.exists():
        return float("nan")
    cpu = pd.read_csv(cell.cpu_csv)
    return float(cpu.loc[~cpu["process"].isin(HARNESS_PROCESSES), "cpu_s"].sum())


def _consistent(verdicts: list[bool | None]) -> bool | None:
    known = [v for v in verdicts if v is not None]
    if not known:
        return None
    return all(known)


def summarise(requests: pd.DataFrame, cells: Sequence[CellDir] = ()) -> pd.DataFrame:
    """The summary table from requests (as :func:`load_requests` returns) and cell folders.

    ``cells`` supply floor_ms (cell.json), CPU (cpu.csv) and consistency (check.json); without
    them those columns are empty.
    """
    by_cell = {(c.workload, c.system, c.scenario, c.rep): c for c in cells}
    rows = []
    for key, group in requests.groupby(KEYS, sort=True):
        measured = group[~group["warmup"]]
        latency = measured["latency_ms"].to_numpy(dtype=float)
        reps = sorted(group["rep"].unique())
        windows, cpu_per_saga, verdicts, floors = 0.0, [], [], []
        for rep in reps:
            mine = measured[measured["rep"] == rep]
            if len(mine):
                windows += float(mine["end"].max() - mine["intended_start"].min())
            cell = by_cell.get((*key, rep))
            if cell is None:
                continue
            # CPU was measured over the whole load, warm-up included, so divide by every saga.
            cpu_per_saga.append(_cell_cpu_s(cell) / int((group["rep"] == rep).sum()))
            check = read_json(cell.check_json)
            verdicts.append(bool(check["consistent"]) if "consistent" in check else None)
            floor = cell.meta().get("floor_ms")
            if floor is not None:
                floors.append(float(floor))
        ok = int(measured["ok"].sum())
        outcomes = measured.loc[measured["ok"], "outcome"].value_counts()
        floor_ms = float(np.mean(floors)) if floors else float("nan")
        p50, p99 = percentile_ms(latency, 50), percentile_ms(latency, 99)
        if len(reps) >= 2:
            per_rep = measured.groupby("rep")["latency_ms"]
            ci50 = bootstrap_ci(per_rep.quantile(0.50).to_numpy() * 1.0, np.mean)
            ci99 = bootstrap_ci(per_rep.quantile(0.99).to_numpy() * 1.0, np.mean)
            basis = "repetitions"
        else:
            ci50 = bootstrap_ci(latency, lambda a: float(np.percentile(a, 50)), resamples=500)
            ci99 = bootstrap_ci(latency, lambda a: float(np.percentile(a, 99)), resamples=500)
            basis = "requests"
        cpu_known = [c for c in cpu_per_saga if not np.isnan(c)]
        cpu_s_per_saga = float(np.mean(cpu_known)) if cpu_known else float("nan")
        rows.append(
            {
                **dict(zip(KEYS, key, strict=True)),
                "requests": len(measured),
                "ok": ok,
                "errors": len(measured) - ok,
                "committed": int(outcomes.get("committed", 0)),
                "compensated": int(outcomes.get("compensated", 0)),
                "rejected": int(outcomes.get("rejected", 0)),
                "p50_ms": p50,
                "p90_ms": percentile_ms(latency, 90),
                "p99_ms": p99,
                "p999_ms": percentile_ms(latency, 99.9),
                "max_ms": float(latency.max()) if latency.size else float("nan"),
                "throughput_rps": ok / windows if windows > 0 else float("nan"),
                "consistent": _consistent(verdicts),
                "floor_ms": floor_ms,
                "p50_over_floor_ms": p50 - floor_ms,
                "p99_over_floor_ms": p99 - floor_ms,
                "cpu_s_per_saga": cpu_s_per_saga,
                "reps": len(reps),
                "p50_ci_low": ci50[0],
                "p50_ci_high": ci50[1],
                "p99_ci_low": ci99[0],
                "p99_ci_high": ci99[1],
                "ci_basis": basis,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def ratios(summary: pd.DataFrame, baseline: str = BASELINE_SYSTEM) -> pd.DataFrame:
    """Each other system relative to ``baseline`` in the same (workload, scenario)."""
    rows = []
    for (workload, scenario), group in summary.groupby(["workload", "scenario"], sort=True):
        base = group[group["system"] == baseline]
        if base.empty:
            continue
        b = base.iloc[0]
        for _, other in group[group["system"] != baseline].iterrows():
            rows.append(
                {
                    "workload": workload,
                    "scenario": scenario,
                    "system": other["system"],
                    "baseline": baseline,
                    "p50_ratio": _ratio(other["p50_ms"], b["p50_ms"]),
                    "p99_ratio": _ratio(other["p99_ms"], b["p99_ms"]),
                    "floor_ratio": _ratio(other["floor_ms"], b["floor_ms"]),
                    "throughput_ratio": _ratio(other["throughput_rps"], b["throughput_rps"]),
                }
            )
    return pd.DataFrame(rows, columns=RATIO_COLUMNS)


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b and not np.isnan(b) else float("nan")


def analyse(run_dir: Path) -> tuple[Path, Path]:
    """Write summary.csv and ratios.csv into ``run_dir`` from its raw cells; return their paths."""
    run_dir = Path(run_dir)
    summary = summarise(load_requests(run_dir), list(cell_dirs(run_dir)))
    summary_path, ratios_path = run_dir / "summary.csv", run_dir / "ratios.csv"
    summary.to_csv(summary_path, index=False, float_format="%.3f")
    ratios(summary).to_csv(ratios_path, index=False, float_format="%.3f")
    return summary_path, ratios_path
