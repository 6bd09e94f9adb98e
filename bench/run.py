"""`bench run`: deploy each cell of a plan, load it, check it, and analyse the run.

One cell = one workload on one system in one scenario. For each cell the driver places every
process in its zone (bench.topology), routes every cross-zone connection through the latency
proxy, starts the services, the system (sidecars, or the Temporal server and workers) and the
gateway under one supervisor, measures the links, plays the crash schedule while Locust drives
the gateway, waits for the services to settle, runs the workload's consistency checker, and
tears everything down. A plan (bench.matrix) is the cells of some matrices, then capacity
sweeps, whose next rate depends on the last (:func:`run_sweep`). After the last cell it writes
summary.csv, ratios.csv, capacity.csv, the charts and report.md; failed_cells.json lists the
cells that failed to deploy or load, capacity_stops.json where each system left each sweep.
Publishing (results/latest) is the CLI's, which refuses a run with failed cells unless told.

A scenario with ``tls`` gets a CA and a certificate per process in the cell's ``tls/`` folder
(bench.credentials): services serve HTTPS to the runtime next to them only, sidecars talk
mutual TLS to each other and to the gateway, Temporal workers call their services over HTTPS;
cell.json records what protects each link (Temporal's frontend links stay plaintext).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from accompanist_py.inspect import Credentials
from baselines.restate.server import RestateServer
from baselines.temporal.worker import CONFIGS as TEMPORAL_CONFIGS
from baselines.temporal.worker import deployment as temporal_deployment
from bench.analysis import (
    FAILED_CELLS_JSON,
    analyse,
    failure_text,
    machine_cores,
    step_of,
    summarise_cells,
)
from bench.capacity import stop_reasons
from bench.credentials import (
    GATEWAY,
    RESTATE_HANDLER,
    CellCredentials,
    files_args,
    link_security,
    service_callers,
    temporal_worker,
)
from bench.diagrams import draw_sagas
from bench.fairness import announced_loop, write_failure_detection
from bench.faults import FaultInjector, applicability, crash_schedule
from bench.load import LoadError, read_load_cpu, read_outcomes, run_locust, write_requests
from bench.matrix import SYSTEMS, Cell, Plan, Sweep, System
from bench.plots import plot_run
from bench.proxy import OWN_LIMIT_MS, PROXY_CSV, LinkProbe, LinkSpec, measure_links, proxy_added
from bench.report import collect_environment, write_report
from bench.results import RESULTS_DIR, CellDir, cell_dir, new_run_dir, write_json
from bench.systems.accompanist import Sidecars
from bench.topology import load_topology, network_floor, plan_links, write_links_file
from launch import (
    DeployError,
    ProcessSpec,
    Supervisor,
    free_port,
    free_ports,
    harness_cpu_s,
    machine_busy_s,
)
from workloads import Workload, discover
from workloads.consistency import fetch_states
from workloads.launch import service_command

PY = sys.executable
# The processes a kind deploys besides services, runtimes and gateway; a ``server`` crash slot
# hits the first. Their ports serve plaintext whatever the scenario (bench.credentials).
SERVER_PROCESSES = {"temporal": ("temporal-server",), "restate": ("restate-server",
                                                                   "restate-handler")}  # fmt: skip
PLAINTEXT_LISTENERS = ("gateway", "temporal-server", "restate-server", "restate-handler")
CAPACITY_STOPS_JSON = "capacity_stops.json"
SEED = 1
SIZE = 5000  # every entity absorbs this many sagas: more than any cell sends


class Network:
    """Where each process listens, and the address a caller in a zone must use to reach it."""

    def __init__(
        self,
        placement: Mapping[str, str],
        ports: Mapping[str, int],
        links: Mapping[tuple[str, str], LinkSpec],
        tls: bool = False,
    ) -> None:
        self.placement, self.ports, self.links = placement, ports, links
        self.tls = tls

    def address(self, caller: str, process: str) -> str:
        link = self.links.get((self.placement[caller], process))
        port = link.listen_port if link is not None else self.ports[process]
        return f"127.0.0.1:{port}"

    def url(self, caller: str, process: str) -> str:
        # With TLS everything but the gateway (the measuring boundary) is HTTPS.
        scheme = "https" if self.tls and process != "gateway" else "http"
        return f"{scheme}://{self.address(caller, process)}"


def settled_state(
    service_urls: Mapping[str, str],
    context: ssl.SSLContext | None = None,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """The services' state once it stops changing (compensations may still be running)."""
    deadline = time.monotonic() + timeout_s
    previous = None
    while True:
        state = fetch_states(service_urls, context=context)
        if state == previous or time.monotonic() > deadline:
            return state
        previous = state
        time.sleep(1.0)


def start_accompanist(
    sup: Supervisor, wl: Workload, net: Network, creds: CellCredentials | None, mode: str
) -> list[str]:
    """Sidecars in `mode`, one per service in its zone; returns the gateway's backend arguments."""
    module, _, function = wl.choreography.partition(":")
    roles = list(wl.services)
    cars = Sidecars(
        sup,
        roles,
        module,
        service_urls={r: net.url(f"runtime:{r}", f"service:{r}") for r in roles},
        ports={r: net.ports[f"runtime:{r}"] for r in roles},
        peer_urls={r: {p: net.url(f"runtime:{r}", f"runtime:{p}") for p in roles} for r in roles},
        credentials=creds,
        mode=mode,
    )
    for role in roles:
        cars.start(role)
    tls = files_args(creds.client(GATEWAY)) if creds is not None else []
    return [
        "--sidecar",
        net.url("gateway", f"runtime:{wl.initiator}"),
        "--choreography",
        function,
        *tls,
    ]


def start_temporal(
    sup: Supervisor,
    cd: CellDir,
    wl: Workload,
    net: Network,
    config: str,
    creds: CellCredentials | None,
) -> list[str]:
    """The dev server and the configuration's workers; returns the gateway's arguments.

    With `creds` the service calls are HTTPS with a client certificate; the frontend is
    plaintext whatever `creds` says (the dev server cannot serve TLS).
    """
    port = net.ports["temporal-server"]
    sup.start(
        ProcessSpec(
            "temporal-server",
            [
                PY,
                "-m",
                "baselines.temporal.devserver",
                "--db",
                str(cd.path / "temporal.db"),
                "--port",
                str(port),
            ],
            ports=[port],
            startup_timeout_s=90.0,
        )
    )
    if not TEMPORAL_CONFIGS[config].per_service_workers:
        # The gateway hosts the worker (eager start), so it calls every service from its zone.
        urls = {s: net.url("gateway", f"service:{s}") for s in wl.services}
    else:
        urls = {s: net.url(f"runtime:{s}", f"service:{s}") for s in wl.services}
    tls: dict[str, list[str]] = {}
    if creds is not None:
        tls = {s: files_args(creds.client(temporal_worker(s))) for s in wl.services}
        tls["gateway"] = files_args(creds.client(GATEWAY))
    plan = temporal_deployment(
        config, wl.name, urls, net.address("gateway", "temporal-server"), tls=tls
    )
    for worker in plan.workers:
        me = f"runtime:{worker.service}"
        argv = [*worker.argv]
        argv[argv.index("--temporal") + 1] = net.address(me, "temporal-server")
        sup.start(ProcessSpec(me, argv, ready_line=worker.ready_line, startup_timeout_s=60.0))
    return plan.gateway_args


def start_restate(
    sup: Supervisor, cd: CellDir, wl: Workload, net: Network, creds: CellCredentials | None
) -> list[str]:
    """The Restate server and the handler process, registered; returns the gateway's arguments.

    With `creds` the handler calls its services over HTTPS with its own client certificate; the
    server's ingress and its calls to the handler stay plaintext (restate-server has no TLS
    setting for either: bench.credentials.RESTATE_PLAINTEXT).
    """
    server = RestateServer(
        cd.path / "restate", ingress_port=net.ports["restate-server"], admin_port=free_port()
    )
    server.prepare()
    sup.start(
        ProcessSpec(
            "restate-server",
            server.command(),
            health_url=f"{server.ingress_url}/restate/health",
            ports=[server.ingress_port, server.admin_port],
            startup_timeout_s=90.0,
        )
    )
    port = net.ports["restate-handler"]
    urls = [f"{s}={net.url('restate-handler', f'service:{s}')}" for s in wl.services]
    tls = files_args(creds.client(RESTATE_HANDLER)) if creds is not None else []
    sup.start(
        ProcessSpec(
            "restate-handler",
            [PY, "-m", "baselines.restate.handler", "--port", str(port),
             *(arg for url in urls for arg in ("--service-url", url)), *tls],
            health_url=f"http://127.0.0.1:{port}/health",
        )
    )  # fmt: skip
    handler = f"http://{net.address('restate-server', 'restate-handler')}"
    asyncio.run(server.register(handler))
    return ["--restate", f"http://{net.address('gateway', 'restate-server')}"]


def start_dbos(cd: CellDir, wl: Workload, net: Network, creds: CellCredentials | None) -> list[str]:
    """DBOS runs in the gateway: the gateway's arguments (its database, the services' URLs)."""
    urls = [f"{s}={net.url('gateway', f'service:{s}')}" for s in wl.services]
    tls = files_args(creds.client(GATEWAY)) if creds is not None else []
    return [
        "--dbos-db",
        str(cd.path / "dbos.sqlite"),
        *(arg for url in urls for arg in ("--service-url", url)),
        *tls,
    ]


def listening_processes(system: System, wl: Workload) -> list[str]:
    """Every process of a cell that listens: services, gateway, and the system's own."""
    listening = [f"service:{s}" for s in wl.services] + ["gateway"]
    listening += SERVER_PROCESSES.get(system.kind, ())
    if system.kind == "accompanist":
        listening += [f"runtime:{s}" for s in wl.services]
    return listening


def start_system(
    sup: Supervisor,
    cd: CellDir,
    wl: Workload,
    net: Network,
    system: System,
    creds: CellCredentials | None,
) -> list[str]:
    """Start what `system` runs besides services and gateway; returns the gateway's arguments."""
    if system.kind == "accompanist":
        return start_accompanist(sup, wl, net, creds, system.config)
    if system.kind == "temporal":
        return start_temporal(sup, cd, wl, net, system.config, creds)
    if system.kind == "restate":
        return start_restate(sup, cd, wl, net, creds)
    return start_dbos(cd, wl, net, creds)


def run_cell(run_dir: Path, cell: Cell, progress: Callable[[str], None] = print) -> CellDir:
    """Deploy, load, check and tear down one cell; its files land in its cell folder."""
    wl = discover()[cell.workload]
    system = SYSTEMS[cell.system]
    scenario = cell.scenario
    topo = load_topology(scenario.topology)
    cd = cell_dir(run_dir, cell.workload, cell.system, scenario.name, cell.rep)
    cd.path.mkdir(parents=True, exist_ok=True)

    placement = topo.place(list(wl.services), wl.initiator)
    ports = {p: free_port() for p in listening_processes(system, wl)}
    free = iter(free_ports(len(ports) * 8 + 1))
    links = plan_links(topo, placement, ports, free)
    probe = LinkProbe(list(links.values()), free)  # what the proxy adds, during the load
    net = Network(placement, ports, links, tls=scenario.tls)
    creds = CellCredentials(cd.path / "tls") if scenario.tls else None
    harness_tls = creds.harness_context() if creds is not None else None

    # The proxy's control port: the probe asks it how late it released the cell's traffic.
    proxy_control = ("127.0.0.1", next(free)) if links else None
    with Supervisor(cd.path, backend=cell.backend, cpus=cell.cpus, image=cell.image) as sup:
        if links and proxy_control is not None:
            proxied = [*links.values(), *probe.twins]
            links_file = write_links_file(proxied, cd.path / "links.toml")
            control = f"{proxy_control[0]}:{proxy_control[1]}"
            sup.start(
                ProcessSpec(
                    "proxy",
                    [PY, "-m", "bench.proxy", "--links", str(links_file), "--control", control],
                    ports=[*(link.listen_port for link in proxied), proxy_control[1]],
                    harness=True,
                )
            )
        scheme = "https" if creds is not None else "http"
        direct = {s: f"{scheme}://127.0.0.1:{ports[f'service:{s}']}" for s in wl.services}
        for s in wl.services:
            argv = service_command(
                wl,
                s,
                ports[f"service:{s}"],
                cd.path / f"{s}.db",
                SEED,
                SIZE,
                scenario.abort_rate,
                tls=creds.service_tls(s, service_callers(system.deployment, s)) if creds else None,
            )
            sup.start(
                ProcessSpec(
                    f"service:{s}", argv, health_url=f"{direct[s]}/health", health_tls=harness_tls
                )
            )
        backend = start_system(sup, cd, wl, net, system, creds)
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        sup.start(
            ProcessSpec(
                "gateway",
                [
                    PY,
                    "-m",
                    "bench.gateway",
                    "--system",
                    system.deployment,
                    "--workload",
                    wl.name,
                    "--port",
                    str(ports["gateway"]),
                    *backend,
                ],
                health_url=f"{gateway}/health",
                startup_timeout_s=90.0,
            )
        )
        # With TLS every listener but the gateway and the servers' own ports is HTTPS.
        tls_targets = {
            ports[p]: harness_tls
            for p in ports
            if harness_tls is not None and p not in PLAINTEXT_LISTENERS
        }
        link_rows = (
            asyncio.run(measure_links(list(links.values()), tls=tls_targets)) if links else []
        )
        _write_rows(cd.links_csv, link_rows)

        requests = wl.requests(
            SEED + cell.rep, scenario.load.requests_needed(scenario.duration_s), scenario.abort_rate
        )
        requests_file = write_requests(cd.path / "requests.jsonl", requests)
        faults = (
            crash_schedule(scenario.crashes, list(wl.services), scenario.duration_s)
            if scenario.crashes
            else []
        )
        resolve = _crash_target(sup, system)
        crashes = applicability(faults, resolve)
        cpu_before, cpu_t0 = sup.cpu_seconds(), time.monotonic()
        machine_before, harness_before = machine_busy_s(), harness_cpu_s()
        t0 = time.time()
        progress(
            f"    load: {scenario.load.mode} loop, {scenario.duration_s} s, {crashes.describe()}"
        )
        injector = FaultInjector(faults, sup, cd.faults_csv, t0=t0, resolve=resolve)
        with (
            injector,
            probe.running(cd.path / PROXY_CSV, after_s=scenario.warmup_s, proxy=proxy_control),
        ):
            run_locust(
                net.url("loadgen", "gateway"),
                wl.name,
                requests_file,
                cd.requests_csv,
                scenario.load,
                scenario.duration_s,
                scenario.warmup_s,
                log_path=cd.path / "locust.log",
                seed=SEED + cell.rep,
            )
        load_cpu = read_load_cpu(cd.requests_csv)
        sup.write_cpu_csv(
            cd.cpu_csv, since=cpu_before, others={"loadgen": load_cpu} if load_cpu else None
        )
        cpu_window_s = time.monotonic() - cpu_t0
        machine_cpu_s, harness_cpu = (
            machine_busy_s() - machine_before,
            harness_cpu_s() - harness_before,
        )
        state = settled_state(direct, harness_tls)
        drawn, drawing_error = (
            _draw_sagas(run_dir, cell, cd, ports, wl, creds)
            if system.kind == "accompanist"
            else ({}, None)
        )
        report = wl.check(state, sent=read_outcomes(cd.requests_csv))
        write_json(
            cd.check_json,
            {
                "consistent": report.ok,
                "violations": [str(v) for v in report.violations][:100],
                "counts": {
                    "committed": report.committed,
                    "compensated": report.compensated,
                    "rejected": report.rejected,
                },
            },
        )
        write_json(
            cd.meta_json,
            {
                "workload": wl.name,
                "system": cell.system,
                "system_config": system.config,
                "scenario": scenario.name,
                "rep": cell.rep,
                "topology": topo.name,
                # Where the processes ran: backend (process or docker), and for containers
                # the image and its id, the Docker version and the CPU limit per process.
                **sup.backend_facts(),
                "floor_ms": network_floor(cell.system, wl, topo),
                "placement": placement,
                "load": scenario.load.__dict__,
                "duration_s": scenario.duration_s,
                "warmup_s": scenario.warmup_s,
                "crashes": scenario.crashes.__dict__ if scenario.crashes else None,
                # False: some planned crash hit no process of this system, so the cell is not
                # comparable with one that suffered them all (no ratio); None: no crash plan.
                "crashes_applicable": crashes.all_apply,
                "crashes_planned": crashes.planned,
                "crashes_not_applicable": list(crashes.not_applicable),
                "crash_errors": injector.errors,
                "event_loops": _event_loops(sup),
                "tls": scenario.tls,
                "link_security": link_security(system.deployment, scenario.tls),
                "abort_rate": scenario.abort_rate,
                "sweep": scenario.sweep,
                "cpu_window_s": round(cpu_window_s, 3),
                # Everything the machine ran over the same window, and the harness's own share:
                # the rest of it, less cpu.csv, ran beside the cell (bench.analysis: contended).
                "machine_cpu_s": round(machine_cpu_s, 3),
                "harness_cpu_s": round(harness_cpu, 3),
                # One committed, compensated and crash-recovered saga drawn from the sidecars'
                # events (bench.diagrams), paths relative to the run folder.
                "diagrams": drawn,
                "diagrams_error": drawing_error,
            },
        )
        progress(
            f"    consistent: {report.ok} (committed {report.committed}, compensated "
            f"{report.compensated}, rejected {report.rejected})"
        )
        added = proxy_added(cd.path)
        if added:
            own = added["proxy_own_p50_ms"]
            flag = f" OVER the {OWN_LIMIT_MS} ms bar" if own > OWN_LIMIT_MS else ""
            progress(
                f"    proxy added {added['proxy_added_p50_ms']:.2f} ms p50 per round trip on its"
                f" worst link, {own:.2f} ms of it its own{flag}"
            )
    return cd


def _draw_sagas(
    run_dir: Path,
    cell: Cell,
    cd: CellDir,
    ports: Mapping[str, int],
    wl: Workload,
    creds: CellCredentials | None,
) -> tuple[dict[str, str], str | None]:
    """Sequence diagrams of a few of the cell's sagas, asked of its live sidecars as the
    gateway (which started every session, so owns them); an error is recorded, not raised: a
    diagram is for reading, not a figure."""
    scheme = "https" if creds is not None else "http"
    urls = [f"{scheme}://127.0.0.1:{ports[f'runtime:{r}']}" for r in wl.services]
    who = None
    if creds is not None:
        files = creds.client(GATEWAY)
        who = Credentials(ca=files.ca, cert=files.cert, key=files.key)
    try:
        return draw_sagas(run_dir, cell.label, urls, cd.requests_csv, cd.faults_csv, who), None
    except Exception as exc:
        return {}, f"{type(exc).__name__}: {exc}"


def _crash_target(sup: Supervisor, system: System) -> Callable[[str], str | None]:
    """Which process a crash slot hits on this system; None when it has no such process.

    In temporal-tuned the only worker lives in the gateway process (eager workflow start needs
    the starting client and the worker in one process), and DBOS is a library in the gateway
    process, so there the gateway *is* the runtime of every service: a runtime crash kills it,
    entry point and all, and the load generator retries through its restart. Restate's runtime
    is its handler process, one for every service. accompanist_py and DBOS have no server to
    crash (their state lives beside their runtime), so a ``server`` slot does not apply to them.
    """
    runtime = None
    if system.kind == "dbos" or (
        system.kind == "temporal" and not TEMPORAL_CONFIGS[system.config].per_service_workers
    ):
        runtime = "gateway"
    elif system.kind == "restate":
        runtime = "restate-handler"
    servers = SERVER_PROCESSES.get(system.kind, ())

    def resolve(slot: str) -> str | None:
        if runtime is not None and slot.startswith("runtime:"):
            slot = runtime
        elif slot == "server":
            slot = servers[0] if servers else ""
        return slot if slot in sup.names() else None

    return resolve


# The load generator is no system under test; it runs Locust on gevent for every system alike.
LOADGEN_LOOP = "gevent (Locust, the load generator)"


def _event_loops(sup: Supervisor) -> dict[str, str]:
    """The event loop each process announced in its log (accompanist_py.eventloop)."""
    loops = {"loadgen": LOADGEN_LOOP}
    for name in sup.names():
        text = sup.log_path(name).read_text(errors="replace")
        loops[name] = announced_loop(text) or "not announced"
    return loops


def _write_rows(path: Path, rows: list[dict[str, object]]) -> None:
    columns = sorted({k for r in rows for k in r}) or ["link"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


CellRunner = Callable[[Path, Cell, Callable[[str], None]], CellDir]
# How a cell fails without taking the run down: a process that would not start, or a load that
# did not finish. Anything else is a bug in the harness and stops the run.
CELL_FAILURES = (DeployError, LoadError)


def cell_failure(cell: Cell, exc: Exception) -> dict[str, Any]:
    """The record of a cell that failed to deploy or load (bench.analysis.read_failures)."""
    load = cell.scenario.load
    return {
        "label": cell.label,
        "workload": cell.workload,
        "system": cell.system,
        "scenario": cell.scenario.name,
        "rep": cell.rep,
        "sweep": cell.scenario.sweep,
        "offered_rps": load.rate_rps if load.mode == "open" else None,
        "crashes": cell.scenario.crashes is not None,
        "reason": str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
    }


@dataclass(frozen=True)
class SweepStop:
    """Where one system left a sweep of one workload, and why (None, []: it ran every rate)."""

    workload: str
    system: str
    stopped_at_rps: float | None
    reasons: list[str]


def run_sweep(
    run_dir: Path,
    sweep: Sweep,
    run: CellRunner = run_cell,
    progress: Callable[[str], None] = print,
) -> list[SweepStop]:
    """Run a capacity sweep into `run_dir`; returns where and why each (workload, system)
    stopped.

    For each workload the rates rise from the lowest; at each rate every system still in runs
    its step, then leaves the sweep if bench.capacity's stop rule fires on that step, or if a
    cell of the step failed to deploy or load (that is a stop too, not a pass).
    """
    cores = machine_cores(run_dir)
    stops: list[SweepStop] = []
    for workload in sweep.workloads:
        running = list(sweep.systems)
        for rate in sweep.rates_rps:
            if not running:
                break
            progress(f"sweep {sweep.name}, {workload} at {rate:g} sagas/s: {', '.join(running)}")
            steps: dict[str, list[CellDir]] = {system: [] for system in running}
            failed: dict[str, list[dict[str, Any]]] = {}
            for cell in sweep.cells(workload, rate, running):
                try:
                    steps[cell.system].append(run(run_dir, cell, progress))
                except CELL_FAILURES as exc:
                    failed.setdefault(cell.system, []).append(cell_failure(cell, exc))
            for system, cells in steps.items():
                if system in failed:
                    reasons = [f"cell failed: {failure_text(failed[system])}"]
                else:
                    reasons = stop_reasons(step_of(summarise_cells(cells, cores).iloc[0]))
                if reasons:
                    progress(f"    {system} stops at {rate:g} sagas/s: {'; '.join(reasons)}")
                    stops.append(SweepStop(workload, system, rate, reasons))
                    running.remove(system)
        stops += [SweepStop(workload, system, None, []) for system in running]
    return stops


def run_plan(
    plan: Plan,
    results_dir: Path = RESULTS_DIR,
    run: CellRunner = run_cell,
) -> Path:
    """Run a plan's cells, then its sweeps, into a new results/<run-id>/; returns the folder.

    The folder stays out of git until it is published (bench.results.publish_run). A cell that
    fails to deploy or load does not stop the run: it is recorded in failed_cells.json (the
    analysis and the report show it), and the others still run. Where each system left each
    sweep, and why, goes to capacity_stops.json.
    """
    run_dir = new_run_dir(plan.name, results_dir)
    cells = plan.cells()
    config = {
        "plan": plan.name,
        "matrices": {m.name: m.description for m in plan.matrices},
        "sweeps": {
            s.name: f"{s.description} (rates {', '.join(f'{r:g}' for r in s.rates_rps)})"
            for s in plan.sweeps
        },
        "cells": len(cells),
        # Where the processes ran: host processes, or a container each (the load generator
        # stays on the host either way).
        "backend": plan.backend,
        "cpus_per_process": plan.cpus,
        "image": plan.image,
        "seed": SEED,
        "size": SIZE,
        "abort_rate": "per scenario, in each cell.json",
        "sqlite_synchronous": "NORMAL (survives kill -9, the fault model)",
        "skipped": [f"{scenario} on {system}: not crash tolerant" for system, scenario in
                    plan.skipped()],
    }  # fmt: skip
    write_json(run_dir / "run.json", config)
    write_json(run_dir / "environment.json", collect_environment())
    sweeps = f" + sweep {', '.join(s.name for s in plan.sweeps)}" if plan.sweeps else ""
    print(
        f"bench run {plan.name}: {len(cells)} cells{sweeps}, about "
        f"{plan.estimated_s() / 60:.0f} min at most -> {run_dir}"
    )
    for line in config["skipped"]:
        print(f"  skipped: {line}")
    started = time.monotonic()
    failures: list[dict[str, Any]] = []

    def run_one(run_dir: Path, cell: Cell, progress: Callable[[str], None]) -> CellDir:
        print(f"[{cell.label}] (elapsed {time.monotonic() - started:.0f} s)", flush=True)
        cell = replace(cell, backend=plan.backend, cpus=plan.cpus, image=plan.image)
        try:
            return run(run_dir, cell, progress)
        except CELL_FAILURES as exc:
            failures.append(cell_failure(cell, exc))
            write_json(run_dir / FAILED_CELLS_JSON, {"failed_cells": failures})
            print(f"    FAILED: {exc}", flush=True)
            raise

    def say(message: str) -> None:
        print(message, flush=True)

    for cell in cells:
        with contextlib.suppress(*CELL_FAILURES):
            run_one(run_dir, cell, say)
    stops = {sweep.name: [asdict(stop) for stop in run_sweep(run_dir, sweep, run_one, say)]
             for sweep in plan.sweeps}  # fmt: skip
    if stops:
        write_json(run_dir / CAPACITY_STOPS_JSON, stops)
    write_failure_detection(run_dir)
    analyse(run_dir)
    plot_run(run_dir)
    write_report(run_dir)
    if failures:
        print(f"{len(failures)} cell(s) FAILED: listed in {run_dir / FAILED_CELLS_JSON}")
    print(f"done in {time.monotonic() - started:.0f} s: {run_dir / 'report.md'}")
    return run_dir
