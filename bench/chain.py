"""``python -m bench.chain``: the paper's chain microbenchmark, latency against injected latency.

A chain of N services (the ``chain1``, ``chain3`` and ``chain5`` workloads: one stamp per
stage, each a call at the next service) runs one saga at a time while the one-way latency of
every link, in both directions, is swept from 0 to 9 ms. Every service sits in its own zone and
the entry point (gateway, client, Temporal server) in another, so every hop crosses a link.
Each (N, system) is deployed once; between delay steps the running proxy is told the new delay
(its ``--control`` port), so no step pays for a redeployment. Per step: a few warm-up sagas,
then ``--sagas`` measured ones, sequentially, from a client next to the gateway. A failed or
timed-out saga counts, with the time it took.

Where the Temporal server sits: with the process that runs the workflows, the best place for
each configuration (the fairness rule gives the baseline its best honest shot). In
``temporal-tuned`` that is the gateway (entry zone), which hosts the worker; in
``temporal-distributed`` it is the first stage's worker, so its workflow tasks never cross a
link. Both then pay two crossings per step beyond the first service, against the
choreography's one per hop. The Restate server and its handler process sit in the entry zone
beside the gateway (each step's journal entry is a round trip between them), and DBOS runs in
the gateway: both call every stage from the entry zone, two crossings per stage.

Output, in ``results/<run-id>-chain/``: ``sagas.csv`` (every saga), ``chain.csv`` (median and
p99 per N, system and delay, with the network floor), ``fits.csv`` (least-squares slope of the
medians, in ms end to end per injected ms, against the floor's slope), ``crossovers.csv`` (the
injected latency from which the choreography's median is below each Temporal configuration's),
``chain.png`` and ``report.md``.

    python -m bench.chain [--n 1,3,5] [--delays 0:9] [--sagas 50] [--warmup 5]
        [--systems accompanist,temporal-tuned,temporal-distributed,restate,dbos]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd

from bench.analysis import percentile_ms
from bench.matrix import BASELINE_SYSTEM, SYSTEMS
from bench.proxy import set_delays
from bench.report import collect_environment, markdown_table
from bench.results import RESULTS_DIR, CellDir, cell_dir, new_run_dir, publish_run, write_json
from bench.run import Network, listening_processes, settled_state, start_system
from bench.topology import (
    SagaShape,
    Topology,
    critical_path,
    parse_topology,
    plan_links,
    write_links_file,
)
from launch import ProcessSpec, Supervisor, free_port, free_ports
from workloads import Workload, discover
from workloads.launch import service_command

PY = sys.executable
SEED = 1
SIZE = 5000
ABORT_RATE = 0.0  # the chain measures the happy path: every saga commits
# A published chain run is copied here, beside results/latest (the matrices and the sweep).
LATEST_CHAIN = "latest-chain"
REQUEST_TIMEOUT_S = 30.0
# Sagas run once per deployment before the first step, so that first-use costs (connections,
# imports, the Temporal worker's caches) fall on no step.
SETTLE_SAGAS = 20
# Links are planned with a nominal delay (a zero-delay pair gets no link) and set per step.
_NOMINAL_MS = 1.0
# Wall-time model of the printed estimate, fitted to a full run on this 2-core box (6.2 min).
_DEPLOY_S = {"accompanist": 5.0, "temporal": 8.0, "restate": 6.0, "dbos": 4.0}
_OVERHEAD_MS = {  # (fixed, per stage) ms of a saga on loopback
    "accompanist": (1.0, 2.5),
    "temporal-tuned": (15.0, 2.5),
    "temporal-distributed": (30.0, 13.0),
    "restate": (10.0, 3.0),
    "dbos": (8.0, 3.0),
}


@dataclass(frozen=True)
class Sweep:
    """What one ``bench.chain`` run measures."""

    lengths: tuple[int, ...] = (1, 3, 5)
    delays_ms: tuple[float, ...] = tuple(float(d) for d in range(10))
    sagas: int = 50
    warmup: int = 5
    systems: tuple[str, ...] = (
        BASELINE_SYSTEM,
        "temporal-tuned",
        "temporal-distributed",
        "restate",
        "dbos",
    )
    settle: int = SETTLE_SAGAS

    def estimated_s(self) -> float:
        """Rough wall time: a deployment per (N, system) plus every saga at its floor."""
        total = 0.0
        for n in self.lengths:
            wl = discover()[f"chain{n}"]
            for system in self.systems:
                fixed, per_stage = _OVERHEAD_MS.get(system, _OVERHEAD_MS["temporal-distributed"])
                slope = floor_ms(system, wl, 1.0)
                saga_ms = [fixed + per_stage * n + slope * d for d in self.delays_ms]
                total += _DEPLOY_S[SYSTEMS[system].kind] + self.settle * saga_ms[0] / 1000
                total += sum(saga_ms) * (self.sagas + self.warmup) / 1000
        return total


def chain_topology(n: int, one_way_ms: float = _NOMINAL_MS) -> Topology:
    """An entry zone (gateway, client, Temporal server) and one zone per stage, all
    ``one_way_ms`` apart; no jitter, and a new connection pays its handshake."""
    zones = {"entry": {"description": "gateway, load generator, Temporal or Restate server"}}
    zones |= {f"z{k}": {"description": f"stage{k}"} for k in range(1, n + 1)}
    data = {
        "name": f"chain{n}",
        "description": f"{n} stages, each in its own zone; {one_way_ms:g} ms one way",
        "zones": zones,
        "network": {"inter_zone_ms": one_way_ms, "jitter_ms": 0.0, "handshake": True},
        "placement": {
            "gateway": "entry",
            "loadgen": "entry",
            "temporal-server": "entry",
            "services": [f"z{k}" for k in range(1, n + 1)],
        },
    }
    return parse_topology(data, Path(f"<chain{n}>"))


def chain_placement(system: str, workload: Workload, topology: Topology) -> dict[str, str]:
    """Zone of every process; the Temporal server sits with whatever runs the workflows."""
    placement = topology.place(list(workload.services), workload.initiator)
    model = SYSTEMS[system].path_model
    if model == "orchestrator-local":
        placement["workflow-worker"] = placement["gateway"]
    elif model == "orchestrator":
        placement["temporal-server"] = placement["workflow-worker"]
    return placement


def floor_ms(system: str, workload: Workload, one_way_ms: float) -> float:
    """Injected milliseconds on the critical path of one saga at ``one_way_ms`` per link."""
    topology = chain_topology(len(workload.services), one_way_ms)
    placement = chain_placement(system, workload, topology)
    path = critical_path(SYSTEMS[system].path_model, SagaShape.of(workload))
    return sum(topology.hop_ms(placement, hop) for hop in path)


@dataclass(frozen=True)
class Deployment:
    """A deployed (N, system): where to send sagas and how to change the links' delay."""

    gateway: str
    control: tuple[str, int]
    services: dict[str, str]


@contextlib.contextmanager
def deployed(cd: CellDir, workload: Workload, system: str) -> Iterator[Deployment]:
    """Deploy the services, the system, the gateway and the proxy of one (N, system) in their
    zones, with their files in ``cd``; tear everything down on exit, even on errors."""
    cell_path = cd.path
    topology = chain_topology(len(workload.services))
    placement = chain_placement(system, workload, topology)
    ports = {p: free_port() for p in listening_processes(SYSTEMS[system], workload)}
    zones = len(set(placement.values()))
    links = plan_links(topology, placement, ports, iter(free_ports(len(ports) * zones)))
    net = Network(placement, ports, links)
    control = ("127.0.0.1", free_port())
    with Supervisor(cell_path) as sup:
        links_file = write_links_file(list(links.values()), cell_path / "links.toml")
        argv = [PY, "-m", "bench.proxy", "--links", str(links_file), "--control"]
        sup.start(
            ProcessSpec(
                "proxy",
                [*argv, f"{control[0]}:{control[1]}"],
                ports=[*(link.listen_port for link in links.values()), control[1]],
                harness=True,
            )
        )
        direct = {s: f"http://127.0.0.1:{ports[f'service:{s}']}" for s in workload.services}
        for s in workload.services:
            argv = service_command(
                workload, s, ports[f"service:{s}"], cell_path / f"{s}.db", SEED, SIZE, ABORT_RATE
            )
            sup.start(ProcessSpec(f"service:{s}", argv, health_url=f"{direct[s]}/health"))
        backend = start_system(sup, cd, workload, net, SYSTEMS[system], None)
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        sup.start(
            ProcessSpec(
                "gateway",
                [PY, "-m", "bench.gateway", "--system", SYSTEMS[system].deployment,
                 "--workload", workload.name,
                 "--port", str(ports["gateway"]), *backend],
                health_url=f"{gateway}/health",
                startup_timeout_s=90.0,
            )
        )  # fmt: skip
        yield Deployment(gateway, control, direct)


async def run_sequentially(
    gateway: str, workload: str, requests: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Post each saga once the previous one has answered; one row per saga, failures
    included (``status`` 0 for no answer) with the time they took."""
    rows = []
    url = f"{gateway}/sagas/{workload}"
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for request in requests:
            body = {"saga_id": request["saga_id"], "request": dict(request)}
            outcome, error = "", ""
            start = time.perf_counter()
            try:
                async with http.post(url, json=body) as response:
                    status, answer = response.status, await response.json(content_type=None)
                if status == 200 and isinstance(answer, dict):
                    outcome = str(answer.get("outcome", ""))
                else:
                    error = str(answer)[:300]
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                status, error = 0, repr(exc)
            rows.append(
                {
                    "saga_id": request["saga_id"],
                    "status": status,
                    "outcome": outcome,
                    "error": error,
                    "latency_ms": (time.perf_counter() - start) * 1000,
                }
            )
    return rows


def sweep_one(
    cd: CellDir,
    workload: Workload,
    system: str,
    sweep: Sweep,
    progress: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], bool]:
    """Deploy one (N, system), run every delay step; (rows of sagas.csv, consistent)."""
    per_step = sweep.warmup + sweep.sagas
    requests = workload.requests(SEED, sweep.settle + per_step * len(sweep.delays_ms), ABORT_RATE)
    rows: list[dict[str, Any]] = []
    with deployed(cd, workload, system) as deployment:
        asyncio.run(set_delays(deployment.control, sweep.delays_ms[0]))
        settle = asyncio.run(
            run_sequentially(deployment.gateway, workload.name, requests[: sweep.settle])
        )
        for i, delay in enumerate(sweep.delays_ms):
            asyncio.run(set_delays(deployment.control, delay))
            batch = requests[sweep.settle + i * per_step :][:per_step]
            done = asyncio.run(run_sequentially(deployment.gateway, workload.name, batch))
            for j, row in enumerate(done):
                row |= {"n": len(workload.services), "system": system, "delay_ms": delay}
                rows.append(row | {"warmup": j < sweep.warmup})
            measured = [r["latency_ms"] for r in done[sweep.warmup :]]
            failed = sum(1 for r in done if r["status"] != 200)
            progress(
                f"    {delay:g} ms: p50 {percentile_ms(measured, 50):.1f} ms, "
                f"p99 {percentile_ms(measured, 99):.1f} ms, {failed} failed"
            )
        sent = {r["saga_id"]: r["outcome"] or None for r in [*settle, *rows]}
        report = workload.check(settled_state(deployment.services), sent=sent)
    if not report.ok:
        progress("    INCONSISTENT: " + report.summary())
    return rows, report.ok


def summarise(sagas: pd.DataFrame) -> pd.DataFrame:
    """chain.csv: median and p99 per (n, system, delay_ms), every measured saga counted."""
    rows = []
    measured = sagas[~sagas["warmup"].astype(bool)]
    for (n, system, delay), group in measured.groupby(["n", "system", "delay_ms"], sort=True):
        latency = group["latency_ms"].to_numpy(dtype=float)
        ok = int(((group["status"] == 200) & (group["outcome"] != "")).sum())
        wl = discover()[f"chain{n}"]
        rows.append(
            {
                "n": n,
                "system": system,
                "delay_ms": delay,
                "sagas": len(group),
                "ok": ok,
                "errors": len(group) - ok,
                "p50_ms": percentile_ms(latency, 50),
                "p99_ms": percentile_ms(latency, 99),
                "floor_ms": floor_ms(system, wl, delay),
            }
        )
    return pd.DataFrame(rows)


def slope(delays_ms: Sequence[float], latencies_ms: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through the points; NaN with < 2 delays."""
    x, y = np.asarray(delays_ms, dtype=float), np.asarray(latencies_ms, dtype=float)
    if len(set(x.tolist())) < 2:
        return float("nan"), float("nan")
    fitted_slope, intercept = np.polyfit(x, y, 1)
    return float(fitted_slope), float(intercept)


@dataclass(frozen=True)
class Crossover:
    """Where the choreography starts to win: ``always`` (at every delay measured), ``never``
    (not at the largest), or ``at`` ``delay_ms`` (interpolated, winning at every delay above)."""

    kind: str
    delay_ms: float = float("nan")

    def __str__(self) -> str:
        return f"{self.delay_ms:.1f} ms" if self.kind == "at" else self.kind


def crossover(
    delays_ms: Sequence[float], choreography_ms: Sequence[float], other_ms: Sequence[float]
) -> Crossover:
    """The injected latency from which ``choreography_ms`` stays strictly below ``other_ms``.

    The points are medians at ``delays_ms`` (ascending). Between the last delay where the
    choreography does not win and the next one, the crossing of the two lines is interpolated.
    """
    gaps = [o - c for c, o in zip(choreography_ms, other_ms, strict=True)]
    if all(g > 0 for g in gaps):
        return Crossover("always")
    if not gaps or gaps[-1] <= 0:
        return Crossover("never")
    k = max(i for i, g in enumerate(gaps) if g <= 0)
    x0, x1, g0, g1 = delays_ms[k], delays_ms[k + 1], gaps[k], gaps[k + 1]
    return Crossover("at", x0 + (x1 - x0) * (-g0) / (g1 - g0))


def fits(chain: pd.DataFrame) -> pd.DataFrame:
    """fits.csv: per (n, system) the slope of the medians and of the network floor."""
    rows = []
    for (n, system), group in chain.groupby(["n", "system"], sort=True):
        measured, intercept = slope(group["delay_ms"], group["p50_ms"])
        p99_slope, _ = slope(group["delay_ms"], group["p99_ms"])
        rows.append(
            {
                "n": n,
                "system": system,
                "slope": measured,
                "intercept_ms": intercept,
                "p99_slope": p99_slope,
                "floor_slope": floor_ms(system, discover()[f"chain{n}"], 1.0),
                "errors": int(group["errors"].sum()),
            }
        )
    return pd.DataFrame(rows)


def crossovers(chain: pd.DataFrame, baseline: str = BASELINE_SYSTEM) -> pd.DataFrame:
    """crossovers.csv: per (n, other system) where ``baseline`` starts to win on the median."""
    rows = []
    for n, group in chain.groupby("n", sort=True):
        base = group[group["system"] == baseline].set_index("delay_ms")["p50_ms"]
        for system, other in group[group["system"] != baseline].groupby("system", sort=True):
            other = other.set_index("delay_ms")["p50_ms"]
            delays = sorted(set(base.index) & set(other.index))
            found = crossover(delays, base[delays].tolist(), other[delays].tolist())
            rows.append(
                {
                    "n": n,
                    "system": system,
                    "baseline": baseline,
                    "crossover": str(found),
                    "crossover_ms": found.delay_ms,
                }
            )
    return pd.DataFrame(rows, columns=["n", "system", "baseline", "crossover", "crossover_ms"])


def plot(chain: pd.DataFrame, path: Path) -> Path:
    """End-to-end median (line) with its p99 band, against injected one-way latency; a line
    per system, a panel per chain length; the network floor dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted(chain["n"].unique())
    systems = sorted(chain["system"].unique())
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {s: cycle[i % len(cycle)] for i, s in enumerate(systems)}
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.6 * len(lengths), 4.2), squeeze=False)
    for ax, n in zip(axes[0], lengths, strict=True):
        for system in systems:
            data = chain[(chain["n"] == n) & (chain["system"] == system)].sort_values("delay_ms")
            if data.empty:
                continue
            colour = colours[system]
            ax.plot(data["delay_ms"], data["p50_ms"], "o-", color=colour, label=f"{system} p50")
            ax.fill_between(
                data["delay_ms"], data["p50_ms"], data["p99_ms"], color=colour, alpha=0.18
            )
            ax.plot(data["delay_ms"], data["floor_ms"], ":", color=colour, linewidth=1)
        ax.set_title(f"chain of {n} service{'s' if n > 1 else ''}")
        ax.set_xlabel("injected one-way latency per link (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("end-to-end latency (ms): median, band to p99")
    axes[0][0].plot([], [], ":", color="grey", label="network floor (dotted)")
    axes[0][0].legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    run_dir: Path, sweep: Sweep, chain: pd.DataFrame, consistent: Mapping[str, bool]
) -> Path:
    """report.md: the settings, the slopes, the crossovers and the table behind the chart."""
    fit, cross = fits(chain), crossovers(chain)
    wide = chain.pivot_table(index=["n", "delay_ms"], columns="system", values=["p50_ms", "p99_ms"])
    wide.columns = [f"{system} {stat.removesuffix('_ms')}" for stat, system in wide.columns]
    env = collect_environment()
    errors = int(chain["errors"].sum())
    lines = [
        "# The chain microbenchmark",
        "",
        f"A chain of N services (N = {', '.join(map(str, sweep.lengths))}), each step a stamp "
        "at the next service; one saga at a time from a client next to the gateway; the "
        "one-way latency of every link, both directions, set to each of "
        f"{', '.join(f'{d:g}' for d in sweep.delays_ms)} ms in turn on the running proxy. "
        f"Per step {sweep.warmup} warm-up sagas, then {sweep.sagas} measured; "
        f"{sweep.settle} sagas settle each deployment first. Every service in its own zone, "
        "the gateway in another; the Temporal server with whatever runs the workflows "
        "(the gateway for temporal-tuned, the first stage's worker for "
        "temporal-distributed). Failed or timed-out sagas count, with the time they took: "
        f"{errors} of {int(chain['sagas'].sum())} measured sagas failed.",
        "",
        "![chain](chain.png)",
        "",
        "## Slope: end-to-end ms per injected ms (least squares over the medians)",
        "",
        "`floor_slope` counts the link crossings on the critical path: the slope a runtime "
        "with no cost of its own would have.",
        "",
        markdown_table(fit),
        "## Where the choreography starts to win (median)",
        "",
        markdown_table(cross.drop(columns=["crossover_ms"])),
        "## Consistency",
        "",
        *(f"- {key}: {'consistent' if ok else 'INCONSISTENT'}" for key, ok in consistent.items()),
        "",
        "## Median and p99 per step (ms)",
        "",
        markdown_table(wide.reset_index()),
        "## Environment",
        "",
        *(f"- {k}: {v}" for k, v in {**env["versions"], **env["machine"]}.items()),
        "",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def run_sweep(
    sweep: Sweep, results_dir: Path = RESULTS_DIR, progress: Callable[[str], None] = print
) -> tuple[Path, dict[str, bool]]:
    """Run the whole sweep into ``results/<run-id>-chain/``; returns the run folder and, per
    deployment, whether the checker found its services consistent."""
    run_dir = new_run_dir("chain", results_dir)  # out of git until published
    write_json(run_dir / "run.json", {"sweep": asdict(sweep), "seed": SEED, "abort_rate": 0.0})
    write_json(run_dir / "environment.json", collect_environment())
    started = time.monotonic()
    progress(f"bench chain: about {sweep.estimated_s() / 60:.1f} min -> {run_dir}")
    rows: list[dict[str, Any]] = []
    consistent: dict[str, bool] = {}
    for n in sweep.lengths:
        workload = discover()[f"chain{n}"]
        for system in sweep.systems:
            progress(f"[{time.monotonic() - started:.0f} s] chain{n} on {system}")
            cd = cell_dir(run_dir, workload.name, system, "chain", 1)
            done, ok = sweep_one(cd, workload, system, sweep, progress)
            rows += done
            consistent[f"chain{n} on {system}"] = ok
    sagas = pd.DataFrame(rows)
    sagas.to_csv(run_dir / "sagas.csv", index=False, float_format="%.3f")
    chain = summarise(sagas)
    chain.to_csv(run_dir / "chain.csv", index=False, float_format="%.3f")
    fits(chain).to_csv(run_dir / "fits.csv", index=False, float_format="%.3f")
    crossovers(chain).to_csv(run_dir / "crossovers.csv", index=False, float_format="%.3f")
    plot(chain, run_dir / "chain.png")
    write_report(run_dir, sweep, chain, consistent)
    progress(f"done in {time.monotonic() - started:.0f} s: {run_dir / 'report.md'}")
    return run_dir, consistent


def _delays(text: str) -> tuple[float, ...]:
    """``0:9`` (every whole ms, both ends included) or ``0,2,5``."""
    if ":" in text:
        low, _, high = text.partition(":")
        return tuple(float(d) for d in range(int(low), int(high) + 1))
    return tuple(sorted(float(d) for d in text.split(",")))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (1 if a deployment ended inconsistent)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.chain", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n", default="1,3,5", help="chain lengths (of 1, 3, 5)")
    parser.add_argument("--delays", default="0:9", help="one-way ms: LOW:HIGH or a list")
    parser.add_argument("--sagas", type=int, default=50, help="measured sagas per step")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up sagas per step")
    parser.add_argument("--systems", default=",".join(Sweep().systems))
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--publish",
        action="store_true",
        help=f"make the run a reference run, copied to results/{LATEST_CHAIN} (if consistent)",
    )
    args = parser.parse_args(argv)
    sweep = Sweep(
        lengths=tuple(int(n) for n in args.n.split(",")),
        delays_ms=_delays(args.delays),
        sagas=args.sagas,
        warmup=args.warmup,
        systems=tuple(args.systems.split(",")),
    )
    unknown = [s for s in sweep.systems if s not in SYSTEMS] + [
        f"chain{n}" for n in sweep.lengths if f"chain{n}" not in discover()
    ]
    if unknown:
        parser.error(f"unknown systems or chain lengths: {unknown}")
    run_dir, consistent = run_sweep(sweep, args.results_dir)
    if not all(consistent.values()):
        bad = ", ".join(k for k, ok in consistent.items() if not ok)
        print(f"inconsistent: {bad}; not published", file=sys.stderr)
        return 1
    if args.publish:
        print(f"published: {publish_run(run_dir, args.results_dir, LATEST_CHAIN)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
