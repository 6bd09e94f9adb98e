"""Analysis: a run's raw cells -> summary.csv, ratios.csv, capacity.csv, cpu_by_kind.csv.

Latency is ``end - intended_start``: for an open loop that includes any time a request waited to
be sent, so stalls are not hidden. Every request after warm-up counts, failed and timed-out ones
too (with the latency they had). Repetitions of a cell are pooled for the percentiles; their
spread gives bootstrap confidence intervals for p50 and p99 (over repetitions when there are at
least two, otherwise over requests; ``ci_basis`` says which).

Rates: ``offered_rps`` is the open loop's fixed rate (none for a closed loop); ``arrival_rps``
is the rate of intended starts actually scheduled in the measured window (from the first
measured intended start, up to the last), which shows that the offered rate was offered;
``throughput_rps`` counts the sagas that *arrived* in that window and ended with an outcome
(the load generator waits for every one), per second of it. Counting by arrival rather than by
completion keeps one saga that ends either side of the window's edge from moving the figure (at
2 sagas/s and 8 s measured that is 6 %); a system that falls behind still falls short, since
its late sagas time out and count as failures.

summary.csv has one row per (workload, system, scenario) with :data:`SUMMARY_COLUMNS`, each
flagged ``saturated`` with its reasons (bench.capacity defines when); rows of a capacity sweep
carry the system's ``sustainable_rps``. A cell that failed to deploy or to load (recorded in
the run's failed_cells.json) gives no numbers: its row has ``status`` ``failed`` and the reason
in ``failure`` (the repetitions that did run still fill it), it gets no latency ratio, and in a
sweep it is where that system stopped. ratios.csv has one row per (workload, scenario, other
system) comparing each system with :data:`bench.matrix.BASELINE_SYSTEM`: ``p50_ratio =
p50(system) / p50(baseline)`` with a bootstrap interval, likewise p99, ``floor_ratio`` (the
same ratio of network floors, which bounds what any runtime can win), and ``comparable``, false
when either side is saturated (the ratio then measures contention), failed, or in a crash
scenario whose crashes do not apply to it (then there is no latency ratio at all). capacity.csv
has one row per (workload, sweep, system); cpu_by_kind.csv the CPU-seconds per saga of each
process kind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.capacity import Step, saturation_reasons, stop_reasons, sustainable_rps
from bench.load import RAW_COLUMNS
from bench.matrix import BASELINE_SYSTEM
from bench.proxy import PROXY_FIGURES, proxy_added
from bench.results import CellDir, cell_dirs, read_json
from workloads.outcomes import OUTCOMES

# Harness processes: they load and shape the network, they do not serve sagas.
HARNESS_PROCESSES = frozenset({"loadgen", "proxy"})
KEYS = ["workload", "system", "scenario"]
# A run's record of its cells that failed to deploy or to load (bench.run writes it).
FAILED_CELLS_JSON = "failed_cells.json"
SUMMARY_COLUMNS = [
    *KEYS,
    "status",
    "failure",
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
    "offered_rps",
    "arrival_rps",
    "throughput_rps",
    "count_slack_rps",
    "consistent",
    "floor_ms",
    "p50_over_floor_ms",
    "p99_over_floor_ms",
    "cpu_s_per_saga",
    "cpu_cores",
    "saturated",
    "saturation",
    "outside_cores",
    "contended",
    "proxy_added_p50_ms",
    "proxy_added_p99_ms",
    "proxy_own_p50_ms",
    "sweep",
    "sustainable_rps",
    "sustainable_is_lower_bound",
    "crashes",
    "crashes_applicable",
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
    "p50_ratio_ci_low",
    "p50_ratio_ci_high",
    "p99_ratio",
    "p99_ratio_ci_low",
    "p99_ratio_ci_high",
    "floor_ratio",
    "throughput_ratio",
    "sustainable_ratio",
    "sustainable_ratio_is",
    "comparable",
    "note",
    "ci_basis",
]
CAPACITY_COLUMNS = [
    "workload",
    "sweep",
    "system",
    "rates_run",
    "sustainable_rps",
    "sustainable_is_lower_bound",
    "stopped_at_rps",
    "stop_reason",
    "sustainable_ratio",
    "sustainable_ratio_is",
]
CPU_KIND_COLUMNS = [*KEYS, "sweep", "offered_rps", "kind", "harness", "cpu_s_per_saga"]
BOOTSTRAP_RESAMPLES = 2000
REQUEST_RESAMPLES = 500
# A cell beside which the rest of the machine kept more than this many cores busy (other
# processes than the cell's, the harness's and Locust's) measured its neighbours too: flagged.
CONTENDED_CORES = 0.25


def percentile_ms(latencies_ms: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation); NaN for no data."""
    values = np.asarray(latencies_ms, dtype=float)
    return float(np.percentile(values, q)) if values.size else float("nan")


def _bootstrap(
    samples: Sequence[np.ndarray],
    estimate: Callable[..., float],
    confidence: float,
    resamples: int,
    seed: int,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``estimate(*samples)``, each sample resampled alone."""
    if any(s.size < 2 for s in samples):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.array(
        [
            estimate(*(rng.choice(s, s.size, replace=True) for s in samples))
            for _ in range(resamples)
        ]
    )
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


def bootstrap_ci(
    samples: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float],
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``statistic`` over ``samples``."""
    values = np.asarray(samples, dtype=float)
    return _bootstrap([values], statistic, confidence, resamples, seed)


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


def cell_requests(cells: Sequence[CellDir]) -> pd.DataFrame:
    """Every request of `cells`, with workload, system, scenario and rep columns."""
    frames = []
    for cell in cells:
        df = read_requests(cell.requests_csv)
        df["workload"], df["system"], df["scenario"], df["rep"] = (
            cell.workload,
            cell.system,
            cell.scenario,
            cell.rep,
        )
        frames.append(df)
    if not frames:
        raise FileNotFoundError("no requests.csv among the cells given")
    return pd.concat(frames, ignore_index=True)


def _no_requests() -> pd.DataFrame:
    """What :func:`cell_requests` gives for a run none of whose cells left requests."""
    columns = [*RAW_COLUMNS, "latency_ms", "ok", "workload", "system", "scenario", "rep"]
    frame = pd.DataFrame(columns=columns)
    return frame.astype({"warmup": bool, "ok": bool, "rep": int, "latency_ms": float})


def load_requests(run_dir: Path) -> pd.DataFrame:
    """Every request of a run, with workload, system, scenario and rep columns."""
    cells = list(cell_dirs(run_dir))
    if not cells:
        raise FileNotFoundError(f"{run_dir}: no raw/*/*/*/rep*/requests.csv")
    return cell_requests(cells)


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


# The text columns of the tables analyse() writes: read back as text, "" where empty.
TEXT_COLUMNS = ("sweep", "saturation", "note", "stop_reason", "rates_run", "ci_basis", "kind",
                "sustainable_ratio_is", "status", "failure")  # fmt: skip


def read_table(path: Path) -> pd.DataFrame:
    """A table that :func:`analyse` wrote (summary.csv, ratios.csv, ...), text columns as text;
    an empty frame when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame()
    table = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})
    for column in TEXT_COLUMNS:
        if column in table:
            table[column] = table[column].fillna("")
    return table


def process_kind(process: str) -> str:
    """``service:payment`` -> ``service``; ``runtime:x`` -> ``runtime``; others as named."""
    return process.partition(":")[0]


def _cell_cpu(cell: CellDir) -> pd.DataFrame:
    """cpu.csv of a cell (empty frame if it has none)."""
    if not cell.cpu_csv.exists():
        return pd.DataFrame(columns=["process", "cpu_s"])
    return pd.read_csv(cell.cpu_csv)


def _system_cpu_s(cpu: pd.DataFrame) -> float:
    if cpu.empty:
        return float("nan")
    return float(cpu.loc[~cpu["process"].isin(HARNESS_PROCESSES), "cpu_s"].sum())


def _outside_cores(meta: Mapping[str, Any], cpu: pd.DataFrame) -> float:
    """Cores the machine kept busy beside the cell over its load window (NaN if not recorded):
    all of it less the cell's processes (cpu.csv, Locust and the proxy included) and the
    harness."""
    window, machine = meta.get("cpu_window_s"), meta.get("machine_cpu_s")
    if not window or machine is None:
        return float("nan")
    mine = float(cpu["cpu_s"].sum()) + float(meta.get("harness_cpu_s") or 0.0)
    return max(0.0, float(machine) - mine) / float(window)


def _consistent(verdicts: list[bool | None]) -> bool | None:
    known = [v for v in verdicts if v is not None]
    if not known:
        return None
    return all(known)


def _offered_rps(meta: dict[str, Any]) -> float:
    load = meta.get("load") or {}
    return float(load.get("rate_rps", "nan")) if load.get("mode") == "open" else float("nan")


def _window(rep_requests: pd.DataFrame) -> tuple[int, int, float]:
    """(arrivals, completions, seconds) of one repetition's measured window.

    The window runs from the first measured intended start up to (not including) the last, so
    that n evenly spaced arrivals make n - 1 intervals. Arrivals are the sagas scheduled in it.
    Completions are the sagas, warm-up included, that ended with an outcome in the same window
    shifted by the median latency: a system that keeps up ends, in any stretch of time, as many
    sagas as arrived one median latency earlier, while one that falls behind (its queue drained
    only after the load stopped) ends fewer, at the rate it can serve. They are capped by the
    window's arrivals that succeeded, so that slow warm-up sagas cannot make a system look
    faster than its load. The count is exact to within one saga (`Step.count_slack_rps`).
    """
    measured = rep_requests[~rep_requests["warmup"]]
    if len(measured) < 2:
        return 0, 0, 0.0
    begin, end = measured["intended_start"].min(), measured["intended_start"].max()
    arrived = (measured["intended_start"] >= begin) & (measured["intended_start"] < end)
    succeeded = int((arrived & measured["ok"]).sum())
    ok = measured.loc[measured["ok"], "latency_ms"]
    shift = float(ok.median()) / 1000 if len(ok) else 0.0
    ended = pd.to_numeric(rep_requests["end"], errors="coerce")
    completed = rep_requests["ok"] & (ended >= begin + shift) & (ended < end + shift)
    return int(arrived.sum()), min(int(completed.sum()), succeeded), float(end - begin)


def _intervals(sides: Sequence[pd.DataFrame]) -> tuple[dict[str, tuple[float, float]], str]:
    """95 % bootstrap intervals of p50 and p99 of one side's measured requests (a summary row),
    or of the ratio first / second of two sides' (a ratio row), and their basis.

    Over repetitions (the mean of each repetition's percentile) when every side has two or
    more, otherwise over requests.
    """
    by_reps = all(side["rep"].nunique() >= 2 for side in sides)
    intervals = {}
    for q in (50, 99):
        if by_reps:
            samples = [s.groupby("rep")["latency_ms"].quantile(q / 100).to_numpy(float)
                       for s in sides]  # fmt: skip
            statistic, resamples = np.mean, BOOTSTRAP_RESAMPLES
        else:
            samples = [s["latency_ms"].to_numpy(float) for s in sides]
            statistic, resamples = partial(np.percentile, q=q), REQUEST_RESAMPLES
        estimate = statistic if len(samples) == 1 else _ratio_of(statistic)
        intervals[f"p{q}"] = _bootstrap(samples, estimate, 0.95, resamples, seed=0)
    return intervals, "repetitions" if by_reps else "requests"


def _ratio_of(statistic: Callable[[np.ndarray], float]) -> Callable[..., float]:
    """``statistic(a) / statistic(b)``: the two samples come from different systems, so
    :func:`_bootstrap` resamples each on its own."""
    return lambda a, b: float(statistic(a)) / float(statistic(b))


def summarise(
    requests: pd.DataFrame,
    cells: Sequence[CellDir] = (),
    machine_cores: int | None = None,
    failures: Sequence[Mapping[str, Any]] = (),
) -> pd.DataFrame:
    """The summary table from requests (as :func:`load_requests` returns) and cell folders.

    ``cells`` supply the offered rate, floor_ms, crash plan and sweep (cell.json), CPU (cpu.csv)
    and consistency (check.json); without them those columns are empty. ``machine_cores``
    (default: this machine's) is what the CPU criterion of saturation compares with.
    ``failures`` (:func:`read_failures`) are cells that failed to deploy or load: whatever they
    left is not counted, and their row says ``failed`` and why.
    """
    cores = machine_cores or os.cpu_count() or 1
    by_cell = {(c.workload, c.system, c.scenario, c.rep): c for c in cells}
    failed: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for failure in failures:
        failed.setdefault(tuple(failure[k] for k in KEYS), []).append(failure)
    if failed:
        cell_keys = pd.Series(list(zip(*(requests[k] for k in [*KEYS, "rep"]), strict=True)))
        dropped = {(*key, f["rep"]) for key, fs in failed.items() for f in fs}
        requests = requests[~cell_keys.isin(dropped).to_numpy()]
    rows = []
    for key, group in requests.groupby(KEYS, sort=True):
        measured = group[~group["warmup"]]
        latency = measured["latency_ms"].to_numpy(dtype=float)
        reps = sorted(group["rep"].unique())
        arrivals, completions, seconds = 0, 0, 0.0
        cpu_per_saga, cores_used, verdicts, floors, metas = [], [], [], [], []
        outside: list[float] = []
        proxies: list[dict[str, float]] = []
        for rep in reps:
            mine = group[group["rep"] == rep]
            a, c, s = _window(mine)
            arrivals, completions, seconds = arrivals + a, completions + c, seconds + s
            cell = by_cell.get((*key, rep))
            if cell is None:
                continue
            meta = cell.meta()
            metas.append(meta)
            cpu = _cell_cpu(cell)
            cpu_s = _system_cpu_s(cpu)
            outside.append(_outside_cores(meta, cpu))
            proxies.append(proxy_added(cell.path))
            # CPU was measured over the whole load, warm-up included, so divide by every saga.
            cpu_per_saga.append(cpu_s / len(mine))
            window = meta.get("cpu_window_s") or meta.get("duration_s")
            cores_used.append(cpu_s / float(window) if window else float("nan"))
            check = read_json(cell.check_json)
            verdicts.append(bool(check["consistent"]) if "consistent" in check else None)
            if meta.get("floor_ms") is not None:
                floors.append(float(meta["floor_ms"]))
        ok = int(measured["ok"].sum())
        outcomes = measured.loc[measured["ok"], "outcome"].value_counts()
        floor_ms = float(np.mean(floors)) if floors else float("nan")
        p50, p99 = percentile_ms(latency, 50), percentile_ms(latency, 99)
        intervals, basis = _intervals([measured])
        first = metas[0] if metas else {}
        step = Step(
            offered_rps=_offered_rps(first),
            requests=len(measured),
            errors=len(measured) - ok,
            p99_ms=p99,
            achieved_rps=completions / seconds if seconds > 0 else float("nan"),
            cpu_cores=_mean(cores_used),
            crashes=bool(first.get("crashes")),
            count_slack_rps=len(reps) / seconds if seconds > 0 else 0.0,
        )
        reasons = saturation_reasons(step, cores)
        beside = _worst(outside)
        rows.append(
            {
                **dict(zip(KEYS, key, strict=True)),
                **_status(failed.pop(key, [])),
                "requests": step.requests,
                "ok": ok,
                "errors": step.errors,
                "committed": int(outcomes.get("committed", 0)),
                "compensated": int(outcomes.get("compensated", 0)),
                "rejected": int(outcomes.get("rejected", 0)),
                "p50_ms": p50,
                "p90_ms": percentile_ms(latency, 90),
                "p99_ms": p99,
                "p999_ms": percentile_ms(latency, 99.9),
                "max_ms": float(latency.max()) if latency.size else float("nan"),
                "offered_rps": step.offered_rps,
                "arrival_rps": arrivals / seconds if seconds > 0 else float("nan"),
                "throughput_rps": step.achieved_rps,
                "count_slack_rps": step.count_slack_rps,
                "consistent": _consistent(verdicts),
                "floor_ms": floor_ms,
                "p50_over_floor_ms": p50 - floor_ms,
                "p99_over_floor_ms": p99 - floor_ms,
                "cpu_s_per_saga": _mean(cpu_per_saga),
                "cpu_cores": step.cpu_cores,
                "saturated": bool(reasons),
                "saturation": "; ".join(reasons),
                "outside_cores": beside,
                "contended": beside > CONTENDED_CORES,
                # The worst repetition's: what the proxy added per round trip under this load.
                **{c: _worst([p.get(c, float("nan")) for p in proxies]) for c in PROXY_FIGURES},
                "sweep": first.get("sweep") or "",
                "sustainable_rps": float("nan"),
                "sustainable_is_lower_bound": False,
                "crashes": step.crashes,
                # None (no crash planned) or absent: nothing failed to apply.
                "crashes_applicable": all(m.get("crashes_applicable") is not False for m in metas),
                "reps": len(reps),
                "p50_ci_low": intervals["p50"][0],
                "p50_ci_high": intervals["p50"][1],
                "p99_ci_low": intervals["p99"][0],
                "p99_ci_high": intervals["p99"][1],
                "ci_basis": basis,
            }
        )
    # Cells of which no repetition ran: a row that says so, and nothing to measure.
    for key, fs in failed.items():
        rows.append(
            {
                **dict(zip(KEYS, key, strict=True)),
                **_status(fs),
                "requests": 0,
                "ok": 0,
                "errors": 0,
                "offered_rps": float(fs[0].get("offered_rps") or "nan"),
                "saturated": False,
                "saturation": "",
                "contended": False,
                "sweep": fs[0].get("sweep") or "",
                "sustainable_is_lower_bound": False,
                "crashes": bool(fs[0].get("crashes")),
                "crashes_applicable": True,
                "reps": 0,
                "ci_basis": "",
            }
        )
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return summary.sort_values(KEYS, ignore_index=True) if failed else summary


def _status(failures: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """A summary row's ``status`` and ``failure``."""
    if not failures:
        return {"status": "ok", "failure": ""}
    return {"status": "failed", "failure": failure_text(failures)}


def failure_text(failures: Sequence[Mapping[str, Any]]) -> str:
    """Which repetitions of a cell failed, and why: ``rep2: gateway did not start``."""
    return "; ".join(f"rep{f['rep']}: {f['reason']}" for f in failures)


def read_failures(run_dir: Path) -> list[dict[str, Any]]:
    """The cells of a run that failed to deploy or load (bench.run records them): workload,
    system, scenario, rep, sweep, offered_rps, crashes, label and reason of each."""
    return list(read_json(Path(run_dir) / FAILED_CELLS_JSON).get("failed_cells", []))


def _worst(values: list[float]) -> float:
    """The largest of the known values (NaN if none is known)."""
    known = [v for v in values if not math.isnan(v)]
    return max(known) if known else float("nan")


def _mean(values: list[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return float(np.mean(known)) if known else float("nan")


def _rows(frame: pd.DataFrame) -> list[pd.Series]:
    return [row for _, row in frame.iterrows()]


def step_of(row: pd.Series) -> Step:
    """The capacity step a summary row describes."""
    return Step(
        offered_rps=float(row["offered_rps"]),
        requests=int(row["requests"]),
        errors=int(row["errors"]),
        p99_ms=float(row["p99_ms"]),
        achieved_rps=float(row["throughput_rps"]),
        cpu_cores=float(row["cpu_cores"]),
        crashes=False,
        count_slack_rps=float(row.get("count_slack_rps", 0.0) or 0.0),
    )


def summarise_cells(cells: Sequence[CellDir], machine_cores: int | None = None) -> pd.DataFrame:
    """The summary rows of just these cells (the sweep asks after every step)."""
    return summarise(cell_requests(cells), cells, machine_cores)


def ratios(
    summary: pd.DataFrame, requests: pd.DataFrame | None = None, baseline: str = BASELINE_SYSTEM
) -> pd.DataFrame:
    """Each other system relative to ``baseline`` in the same (workload, scenario).

    With ``requests`` the latency ratios get bootstrap intervals, over repetitions when both
    sides have two or more, else over requests.
    """
    rows = []
    for (workload, scenario), group in summary.groupby(["workload", "scenario"], sort=True):
        base = group[group["system"] == baseline]
        if base.empty:
            continue
        b = base.iloc[0]
        for _, other in group[group["system"] != baseline].iterrows():
            notes = [
                f"crashes do not apply to {row['system']}: no latency ratio"
                for row in (other, b)
                if not _truthy(row.get("crashes_applicable", True))
            ]
            notes += [
                f"failed: {row['system']} ({row['failure']}): no latency ratio"
                for row in (other, b)
                if row.get("status") == "failed"
            ]
            applicable = not notes
            notes += [
                f"saturated: {row['system']} ({row['saturation']})"
                for row in (other, b)
                if _truthy(row.get("saturated", False))
            ]
            sustainable, sustainable_is = sustainable_ratio(
                other.get("sustainable_rps", math.nan),
                _truthy(other.get("sustainable_is_lower_bound", False)),
                b.get("sustainable_rps", math.nan),
                _truthy(b.get("sustainable_is_lower_bound", False)),
            )
            row = {
                "workload": workload,
                "scenario": scenario,
                "system": other["system"],
                "baseline": baseline,
                "floor_ratio": _ratio(other["floor_ms"], b["floor_ms"]),
                "throughput_ratio": _ratio(other["throughput_rps"], b["throughput_rps"]),
                "sustainable_ratio": sustainable,
                "sustainable_ratio_is": sustainable_is,
                "comparable": not notes,
                "note": "; ".join(notes),
                "ci_basis": "",
            }
            if applicable:
                intervals, row["ci_basis"] = _ratio_intervals(
                    requests, workload, scenario, [other["system"], b["system"]]
                )
                for q in ("p50", "p99"):
                    row[f"{q}_ratio"] = _ratio(other[f"{q}_ms"], b[f"{q}_ms"])
                    row[f"{q}_ratio_ci_low"], row[f"{q}_ratio_ci_high"] = intervals[q]
            rows.append(row)
    return pd.DataFrame(rows, columns=RATIO_COLUMNS)


def _truthy(value: object) -> bool:
    # CSV round trips turn booleans into strings and missing values into NaN.
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value) and not (isinstance(value, float) and math.isnan(value))


def _ratio_intervals(
    requests: pd.DataFrame | None, workload: str, scenario: str, systems: Sequence[str]
) -> tuple[dict[str, tuple[float, float]], str]:
    """:func:`_intervals` of the ratio of two systems' latencies in one (workload, scenario)."""
    if requests is None:
        return {"p50": (math.nan, math.nan), "p99": (math.nan, math.nan)}, ""
    here = requests[
        (requests["workload"] == workload)
        & (requests["scenario"] == scenario)
        & ~requests["warmup"]
    ]
    return _intervals([here[here["system"] == system] for system in systems])


def _ratio(a: float, b: float) -> float:
    a, b = float(a), float(b)
    return a / b if b and not math.isnan(b) else float("nan")


def sustainable_ratio(
    rps: float, lower_bound: bool, base_rps: float, base_lower_bound: bool
) -> tuple[float, str]:
    """``rps / base_rps`` of two sustainable throughputs, and what the value is: exact (""),
    "at most" (only the base never stopped), "at least" (only the other), or NaN when neither
    stopped within the sweep (two lower bounds say nothing about their ratio)."""
    if math.isnan(float(rps)) or math.isnan(float(base_rps)):
        return float("nan"), ""
    if lower_bound and base_lower_bound:
        return float("nan"), "neither stopped within the sweep"
    value = _ratio(rps, base_rps)
    return value, "at most" if base_lower_bound else "at least" if lower_bound else ""


def capacity(summary: pd.DataFrame, baseline: str = BASELINE_SYSTEM) -> pd.DataFrame:
    """One row per (workload, sweep, system): the rates it ran, its sustainable throughput, and
    where and why it stopped: at the first step that tripped the stop rule or failed to deploy
    or load (``status`` failed). ``sustainable_is_lower_bound`` when it never stopped and every
    step was sustainable: it may sustain more than the sweep offered."""
    rows = []
    swept = summary[summary["sweep"] != ""]
    for (workload, sweep, system), group in swept.groupby(["workload", "sweep", "system"]):
        group = group.sort_values("offered_rps")
        steps = [step_of(row) for row in _rows(group)]
        why = [
            [f"cell failed: {row['failure']}"] if row["status"] == "failed" else stop_reasons(step)
            for row, step in zip(_rows(group), steps, strict=True)
        ]
        stop = next((i for i, reasons in enumerate(why) if reasons), None)
        # The failed step counts as unsustainable: it and what follows are cut off.
        sustainable = sustainable_rps(steps[:stop])
        rows.append(
            {
                "workload": workload,
                "sweep": sweep,
                "system": system,
                "rates_run": " ".join(f"{s.offered_rps:g}" for s in steps),
                "sustainable_rps": sustainable,
                "sustainable_is_lower_bound": stop is None and sustainable == steps[-1].offered_rps,
                "stopped_at_rps": steps[stop].offered_rps if stop is not None else math.nan,
                "stop_reason": "; ".join(why[stop]) if stop is not None else "",
            }
        )
    table = pd.DataFrame(rows, columns=CAPACITY_COLUMNS[:-2])
    base = {
        (r.workload, r.sweep): (r.sustainable_rps, r.sustainable_is_lower_bound)
        for r in table[table["system"] == baseline].itertuples()
    }
    pairs = [
        sustainable_ratio(
            r.sustainable_rps,
            r.sustainable_is_lower_bound,
            *base.get((r.workload, r.sweep), (math.nan, False)),
        )
        if r.system != baseline
        else (math.nan, "")
        for r in table.itertuples()
    ]
    table["sustainable_ratio"] = [value for value, _ in pairs]
    table["sustainable_ratio_is"] = [kind for _, kind in pairs]
    return table


def with_capacity(summary: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """`summary` with each sweep row's ``sustainable_rps`` and ``sustainable_is_lower_bound``
    taken from the :func:`capacity` table."""
    keys = ["workload", "sweep", "system"]
    columns = ["sustainable_rps", "sustainable_is_lower_bound"]
    merged = summary.drop(columns=columns).merge(table[keys + columns], on=keys, how="left")
    merged["sustainable_is_lower_bound"] = merged["sustainable_is_lower_bound"].eq(True)
    return merged[SUMMARY_COLUMNS]


def cpu_by_kind(cells: Sequence[CellDir]) -> pd.DataFrame:
    """CPU-seconds per saga of each process kind (service, runtime, temporal-server, gateway,
    and the harness's proxy and loadgen, marked ``harness``), repetitions pooled."""
    rows = []
    for cell in cells:
        cpu = _cell_cpu(cell)
        if cpu.empty:
            continue
        meta = cell.meta()
        with cell.requests_csv.open() as f:
            sagas = sum(1 for _ in f) - 1  # every saga of the cell, warm-up included
        for process, cpu_s in zip(cpu["process"], cpu["cpu_s"], strict=True):
            rows.append(
                {
                    "workload": cell.workload,
                    "system": cell.system,
                    "scenario": cell.scenario,
                    "sweep": meta.get("sweep") or "",
                    "offered_rps": _offered_rps(meta),
                    "kind": process_kind(str(process)),
                    "harness": process in HARNESS_PROCESSES,
                    "cpu_s": float(cpu_s),
                    "sagas": max(sagas, 0),
                    "rep": cell.rep,
                }
            )
    if not rows:
        return pd.DataFrame(columns=CPU_KIND_COLUMNS)
    frame = pd.DataFrame(rows)
    keys = [*KEYS, "sweep", "offered_rps", "kind", "harness"]
    # Sagas per repetition are counted once per cell, not once per process of the cell.
    sagas = frame.drop_duplicates([*KEYS, "rep"]).groupby(KEYS)["sagas"].sum()
    table = frame.groupby(keys, dropna=False, as_index=False)["cpu_s"].sum()
    table["cpu_s_per_saga"] = [
        cpu_s / sagas[(w, s, sc)] if sagas[(w, s, sc)] else float("nan")
        for w, s, sc, cpu_s in zip(
            table["workload"], table["system"], table["scenario"], table["cpu_s"], strict=True
        )
    ]
    return table[CPU_KIND_COLUMNS]


def machine_cores(run_dir: Path) -> int:
    """The cores of the machine the run ran on (environment.json), else of this one."""
    machine = read_json(Path(run_dir) / "environment.json").get("machine", {})
    return int(machine.get("nproc") or os.cpu_count() or 1)


def analyse(run_dir: Path) -> tuple[Path, ...]:
    """Write summary.csv, ratios.csv, capacity.csv and cpu_by_kind.csv into ``run_dir`` from its
    raw cells; return their paths."""
    run_dir = Path(run_dir)
    cells = list(cell_dirs(run_dir))
    failures = read_failures(run_dir)
    if not cells and not failures:
        raise FileNotFoundError(f"{run_dir}: no raw/*/*/*/rep*/requests.csv")
    requests = cell_requests(cells) if cells else _no_requests()
    summary = summarise(requests, cells, machine_cores(run_dir), failures)
    table = capacity(summary)
    summary = with_capacity(summary, table)
    tables = {
        "summary.csv": summary,
        "ratios.csv": ratios(summary, requests),
        "capacity.csv": table,
        "cpu_by_kind.csv": cpu_by_kind(cells),
    }
    paths = []
    for name, table in tables.items():
        table.to_csv(run_dir / name, index=False, float_format="%.3f")
        paths.append(run_dir / name)
    return tuple(paths)
