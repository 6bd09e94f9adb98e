"""`bench run`: deploy each cell of a matrix, load it, check it, and analyse the run.

One cell = one workload on one system in one scenario. For each cell the driver places every
process in its zone (bench.topology), routes every cross-zone connection through the latency
proxy, starts the services, the system (sidecars, or the Temporal server and workers) and the
gateway under one supervisor, measures the links, plays the crash schedule while Locust drives
the gateway, waits for the services to settle, runs the workload's consistency checker, and
tears everything down. After the last cell it writes summary.csv, ratios.csv, the charts and
report.md, and refreshes results/latest.

A scenario with ``tls`` gets a CA and a certificate per process in the cell's ``tls/`` folder
(bench.credentials): services serve HTTPS to the runtime next to them only, sidecars talk
mutual TLS to each other and to the gateway, Temporal workers call their services over HTTPS;
cell.json records what protects each link (Temporal's frontend links stay plaintext).
"""

from __future__ import annotations

import asyncio
import csv
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from baselines.temporal.worker import deployment as temporal_deployment
from bench.analysis import analyse
from bench.credentials import (
    GATEWAY,
    CellCredentials,
    files_args,
    link_security,
    service_callers,
    temporal_worker,
)
from bench.deploy import ProcessSpec, Supervisor, free_ports
from bench.faults import FaultInjector, crash_schedule
from bench.load import read_outcomes, run_locust, write_requests
from bench.matrix import MATRICES, SYSTEMS, Cell
from bench.plots import plot_run
from bench.proxy import LinkSpec, measure_links
from bench.report import collect_environment, write_report
from bench.results import RESULTS_DIR, CellDir, cell_dir, new_run_id, refresh_latest, write_json
from bench.systems.accompanist import Sidecars
from bench.topology import load_topology, network_floor, plan_links, write_links_file
from workloads import Workload, discover
from workloads.consistency import fetch_states
from workloads.launch import free_port, service_command

PY = sys.executable
SEED = 1
SIZE = 5000  # every entity absorbs this many sagas: more than any cell sends
ABORT_RATE = 0.1


class _Network:
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


def _settled_state(
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


def _start_accompanist(
    sup: Supervisor, wl: Workload, net: _Network, creds: CellCredentials | None
) -> list[str]:
    """Sidecars, one per service in its zone; returns the gateway's backend arguments."""
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


def _start_temporal(
    sup: Supervisor,
    cd: CellDir,
    wl: Workload,
    net: _Network,
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
    if config == "tuned":
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
        sup.start(ProcessSpec(me, argv, startup_timeout_s=60.0))
    return plan.gateway_args


def run_cell(run_dir: Path, cell: Cell, progress: Callable[[str], None] = print) -> CellDir:
    """Deploy, load, check and tear down one cell; its files land in its cell folder."""
    wl = discover()[cell.workload]
    system = SYSTEMS[cell.system]
    scenario = cell.scenario
    topo = load_topology(scenario.topology)
    cd = cell_dir(run_dir, cell.workload, cell.system, scenario.name, cell.rep)
    cd.path.mkdir(parents=True, exist_ok=True)

    placement = topo.place(list(wl.services), wl.initiator)
    listening = [f"service:{s}" for s in wl.services] + ["gateway"]
    if system.kind == "accompanist":
        listening += [f"runtime:{s}" for s in wl.services]
    else:
        listening.append("temporal-server")
    ports = {p: free_port() for p in listening}
    links = plan_links(topo, placement, ports, iter(free_ports(len(ports) * 4)))
    net = _Network(placement, ports, links, tls=scenario.tls)
    creds = CellCredentials(cd.path / "tls") if scenario.tls else None
    harness_tls = creds.harness_context() if creds is not None else None

    with Supervisor(cd.path) as sup:
        if links:
            links_file = write_links_file(list(links.values()), cd.path / "links.toml")
            sup.start(
                ProcessSpec(
                    "proxy",
                    [PY, "-m", "bench.proxy", "--links", str(links_file)],
                    ports=[link.listen_port for link in links.values()],
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
                ABORT_RATE,
                tls=creds.service_tls(s, service_callers(cell.system, s)) if creds else None,
            )
            sup.start(
                ProcessSpec(
                    f"service:{s}", argv, health_url=f"{direct[s]}/health", health_tls=harness_tls
                )
            )
        if system.kind == "accompanist":
            backend = _start_accompanist(sup, wl, net, creds)
        else:
            config = cell.system.removeprefix("temporal-")
            backend = _start_temporal(sup, cd, wl, net, config, creds)
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        sup.start(
            ProcessSpec(
                "gateway",
                [
                    PY,
                    "-m",
                    "bench.gateway",
                    "--system",
                    cell.system,
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
        # With TLS every listener but the gateway and the Temporal frontend is HTTPS.
        tls_targets = {
            ports[p]: harness_tls
            for p in ports
            if harness_tls is not None and p not in ("gateway", "temporal-server")
        }
        link_rows = (
            asyncio.run(measure_links(list(links.values()), tls=tls_targets)) if links else []
        )
        _write_rows(cd.links_csv, link_rows)

        requests = wl.requests(
            SEED + cell.rep, scenario.load.requests_needed(scenario.duration_s), ABORT_RATE
        )
        requests_file = write_requests(cd.path / "requests.jsonl", requests)
        faults = (
            crash_schedule(scenario.crashes, list(wl.services), scenario.duration_s)
            if scenario.crashes
            else []
        )
        resolve = _crash_target(sup, cell.system)
        cpu_before = sup.cpu_seconds()
        t0 = time.time()
        progress(
            f"    load: {scenario.load.mode} loop, {scenario.duration_s} s, {len(faults)} crashes"
        )
        with FaultInjector(faults, sup, cd.faults_csv, t0=t0, resolve=resolve):
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
        sup.write_cpu_csv(cd.cpu_csv, since=cpu_before)
        state = _settled_state(direct, harness_tls)
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
                "scenario": scenario.name,
                "rep": cell.rep,
                "topology": topo.name,
                "floor_ms": network_floor(cell.system, wl, topo),
                "placement": placement,
                "load": scenario.load.__dict__,
                "duration_s": scenario.duration_s,
                "warmup_s": scenario.warmup_s,
                "crashes": scenario.crashes.__dict__ if scenario.crashes else None,
                "tls": scenario.tls,
                "link_security": link_security(cell.system, scenario.tls),
            },
        )
        progress(
            f"    consistent: {report.ok} (committed {report.committed}, compensated "
            f"{report.compensated}, rejected {report.rejected})"
        )
    return cd


def _crash_target(sup: Supervisor, system: str) -> Callable[[str], str | None]:
    """Which process a crash slot hits on this system.

    In temporal-tuned the only worker lives in the gateway process (eager workflow start needs
    the starting client and the worker in one process). Killing it would kill the entry point
    too, so runtime crashes do not apply there: the baseline is spared them (faults.csv says so),
    which can only flatter it.
    """

    def resolve(slot: str) -> str | None:
        if system == "temporal-tuned" and slot.startswith("runtime:"):
            return None
        return slot if slot in sup.names() else None

    return resolve


def _write_rows(path: Path, rows: list[dict[str, object]]) -> None:
    columns = sorted({k for r in rows for k in r}) or ["link"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def run_matrix(name: str, results_dir: Path = RESULTS_DIR) -> Path:
    """Run every cell of matrix `name`; returns the run folder."""
    matrix = MATRICES[name]
    run_dir = results_dir / new_run_id(name)
    run_dir.mkdir(parents=True)
    cells = matrix.cells()
    write_json(
        run_dir / "run.json",
        {
            "matrix": name,
            "description": matrix.description,
            "cells": len(cells),
            "seed": SEED,
            "size": SIZE,
            "abort_rate": ABORT_RATE,
            "retry_policy": "initial 50 ms, x2, max 1 s, attempt timeout 5 s (both systems)",
            "sqlite_synchronous": "NORMAL (survives kill -9, the fault model)",
        },
    )
    write_json(run_dir / "environment.json", collect_environment())
    print(
        f"bench run {name}: {len(cells)} cells, about {matrix.estimated_s() / 60:.0f} min "
        f"-> {run_dir}"
    )
    started = time.monotonic()
    for i, cell in enumerate(cells, 1):
        print(
            f"[{i}/{len(cells)}] {cell.label} (elapsed {time.monotonic() - started:.0f} s)",
            flush=True,
        )
        run_cell(run_dir, cell, progress=lambda m: print(m, flush=True))
    analyse(run_dir)
    plot_run(run_dir)
    write_report(run_dir)
    refresh_latest(run_dir, results_dir)
    print(f"done in {time.monotonic() - started:.0f} s: {run_dir / 'report.md'}")
    return run_dir
