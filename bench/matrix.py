"""The benchmark matrix as data: systems, scenarios, and named matrices and sweeps of them.

A *scenario* is everything about a run except the workload and the system: a topology, a crash
plan (or none), a load profile, a duration, a warm-up, an abort rate, and whether every link runs
TLS. A *matrix* is a cross product of workloads x systems x scenarios, repeated ``repetitions``
times; each element is a *cell*. A *sweep* runs one scenario at rising open-loop rates until
each system stops keeping up (bench.capacity). A *plan* is what one ``bench run`` puts into one
run folder: some matrices, then some sweeps. ``python -m bench list`` shows them all;
``python -m bench run --workload W --system S --scenario X ...`` names cells without a matrix.

Sizing on this 2-core box: a cell costs its duration plus about 8 s of deploy, health checks,
Locust start-up, consistency check and teardown (measured: 4-7 s). ``make bench`` runs the
sequential headline (24 cells of 12 s), three zones (8 of 30 s), the crash scenarios (15 of
45 s) and the capacity sweep (at most 72 steps of 10 s, fewer as systems stop): at most 48 min
by these figures, then the chain benchmark's 10; ``make bench-quick`` about 3 min.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from bench.faults import CrashPlan
from bench.load import LoadProfile

CELL_OVERHEAD_S = 8.0
BASELINE_SYSTEM = "accompanist"


@dataclass(frozen=True)
class System:
    """A system under test. ``path_model`` names its critical-path model (bench.topology).

    ``config`` is the configuration within its kind (the sidecars' ``mode``, or the Temporal
    configuration of baselines.temporal). ``deployment`` names the processes and links it
    deploys (what the gateway's ``--system`` and the TLS plan know): systems that differ only in
    configuration share one. A system that is not ``crash_tolerant`` runs no crash scenario.
    """

    name: str
    kind: str
    path_model: str
    description: str
    config: str
    deployment: str = ""
    crash_tolerant: bool = True

    def __post_init__(self) -> None:
        if not self.deployment:
            object.__setattr__(self, "deployment", self.name)


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System(
            "accompanist",
            "accompanist",
            "choreography",
            "accompanist_py: a sidecar per service in its zone, fault-tolerant mode (SQLite WAL)",
            "fault-tolerant",
        ),
        System(
            "accompanist-default",
            "accompanist",
            "choreography",
            "accompanist_py in the paper's default mode: the same sidecars with an in-memory "
            "store. What fault tolerance costs; it is not crash tolerant (a killed sidecar "
            "forgets its sessions), so it runs no crash scenario",
            "default",
            deployment="accompanist",
            crash_tolerant=False,
        ),
        System(
            "temporal-distributed",
            "temporal",
            "orchestrator",
            "Temporal dev server; a worker per service in its zone, per-service task queues, "
            "regular activities",
            "distributed",
        ),
        System(
            "temporal-tuned",
            "temporal",
            "orchestrator-local",
            "Temporal dev server; eager workflow start, unsandboxed runner, local activities; "
            "the worker lives in the gateway, so a runtime crash kills the gateway",
            "tuned",
        ),
        System(
            "restate",
            "restate",
            "journal",
            "Restate server (single node, in the gateway's zone); the sagas as handlers in one "
            "handler process beside it, every step a journaled ctx.run",
            "default",
        ),
        System(
            "dbos",
            "dbos",
            "embedded",
            "DBOS Transact in the gateway process (a library: no server), SQLite system "
            "database; a runtime crash kills the gateway",
            "sqlite",
        ),
    )
}


@dataclass(frozen=True)
class Scenario:
    """Topology, crashes, load and timing of a cell. ``duration_s`` includes ``warmup_s``.

    With ``tls`` every link a system lets us encrypt runs mutual TLS with certificates made for
    the cell (bench.credentials, which also lists the links that stay plaintext and why).
    ``abort_rate`` is the share of requests the services are seeded to refuse (so that sagas
    compensate); ``sweep`` names the capacity sweep a step belongs to ("" for other cells).
    """

    name: str
    topology: str
    load: LoadProfile
    duration_s: int
    warmup_s: float
    crashes: CrashPlan | None = None
    description: str = ""
    tls: bool = False
    abort_rate: float = 0.1
    sweep: str = ""

    def varied(
        self,
        rate_rps: float | None = None,
        duration_s: int | None = None,
        abort_rate: float | None = None,
    ) -> Scenario:
        """This scenario with another open-loop rate, duration or abort rate.

        The name says what changed (``local-40rps-30s-abort0.3``), so that two variants never
        share a cell folder. A rate turns a closed loop into an open one; a new duration keeps
        the warm-up, but at most a quarter of the duration.
        """
        changes: dict[str, object] = {}
        suffix = ""
        if rate_rps is not None:
            changes["load"] = dataclasses.replace(self.load, mode="open", rate_rps=rate_rps)
            suffix += f"-{rate_rps:g}rps"
        if duration_s is not None:
            changes |= {"duration_s": duration_s, "warmup_s": min(self.warmup_s, duration_s / 4)}
            suffix += f"-{duration_s}s"
        if abort_rate is not None:
            changes["abort_rate"] = abort_rate
            suffix += f"-abort{abort_rate:g}"
        return dataclasses.replace(self, name=self.name + suffix, **changes) if changes else self


@dataclass(frozen=True)
class Cell:
    """One run of one workload on one system in one scenario.

    ``backend`` says where its processes run (``process``: on the host; ``docker``: a container
    each of ``image``, capped at ``cpus`` cores if given); a plan sets it for all of its cells.
    """

    workload: str
    system: str
    scenario: Scenario
    rep: int
    backend: str = "process"
    cpus: float | None = None
    image: str | None = None

    @property
    def label(self) -> str:
        """A readable, file-name-safe identity."""
        return f"{self.workload}/{self.system}/{self.scenario.name}/rep{self.rep}"


@dataclass(frozen=True)
class Matrix:
    """A named cross product of workloads x systems x scenarios, with repetitions."""

    name: str
    description: str
    workloads: tuple[str, ...]
    systems: tuple[str, ...]
    scenarios: tuple[Scenario, ...]
    repetitions: int = 1

    def cells(self) -> list[Cell]:
        """Cells in run order: repetitions outermost, so a slow drift hits every system alike.

        A crash scenario on a system that is not crash tolerant is left out (:meth:`skipped`).
        """
        return [
            Cell(w, s, sc, rep)
            for rep, w, sc, s in itertools.product(
                range(1, self.repetitions + 1), self.workloads, self.scenarios, self.systems
            )
            if runs(s, sc)
        ]

    def skipped(self) -> list[tuple[str, str]]:
        """The (system, scenario) pairs of the cross product that :meth:`cells` leaves out."""
        return [(s, sc.name) for sc in self.scenarios for s in self.systems if not runs(s, sc)]

    def estimated_s(self) -> float:
        """Rough wall time of the whole matrix."""
        return sum(c.scenario.duration_s + CELL_OVERHEAD_S for c in self.cells())

    def varied(
        self,
        workloads: Sequence[str] = (),
        systems: Sequence[str] = (),
        scenarios: Sequence[Scenario] = (),
        rates_rps: Sequence[float] = (),
        durations_s: Sequence[int] = (),
        abort_rates: Sequence[float] = (),
        repetitions: int | None = None,
    ) -> Matrix:
        """This matrix with the axes given replaced; empty ones keep this matrix's.

        Every scenario is then varied by each rate x duration x abort rate given
        (:meth:`Scenario.varied`): this is how ``bench run --workload W --system S ...`` names
        exactly the cells it asks for.
        """
        _check_systems(systems)
        variants = [
            sc.varied(rate, duration, abort)
            for sc in scenarios or self.scenarios
            for rate in rates_rps or [None]
            for duration in durations_s or [None]
            for abort in abort_rates or [None]
        ]
        return Matrix(
            self.name,
            self.description,
            tuple(workloads) or self.workloads,
            tuple(systems) or self.systems,
            tuple(variants),
            repetitions or self.repetitions,
        )


def _check_systems(systems: Sequence[str]) -> None:
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; known: {', '.join(SYSTEMS)}")


def runs(system: str, scenario: Scenario) -> bool:
    """Whether a cell of `system` in `scenario` is run: crashes only where they are tolerated
    (a pause loses no state, so every system runs a scenario of pauses alone)."""
    return scenario.crashes is None or not scenario.crashes.kills or SYSTEMS[system].crash_tolerant


@dataclass(frozen=True)
class Sweep:
    """An open-loop capacity sweep: every system at rising rates until it stops keeping up.

    A step is a cell of ``scenario`` at one rate (:meth:`Scenario.varied`, marked with this
    sweep's name). The lowest rate runs ``repetitions`` times, because the headline below
    saturation reads its p50 there and needs confidence intervals; every higher rate runs once.
    The driver (bench.run) runs one rate for every system still in, then asks bench.capacity
    which of them stop.
    """

    name: str
    description: str
    workloads: tuple[str, ...]
    systems: tuple[str, ...]
    scenario: Scenario
    rates_rps: tuple[float, ...]
    repetitions: int = 3

    def __post_init__(self) -> None:
        rates = self.rates_rps
        if not rates or any(r <= 0 for r in rates) or list(rates) != sorted(set(rates)):
            raise ValueError(f"sweep {self.name}: rates must rise strictly from above 0: {rates}")

    def step(self, rate_rps: float) -> Scenario:
        """The scenario of the step at `rate_rps`."""
        return dataclasses.replace(self.scenario.varied(rate_rps=rate_rps), sweep=self.name)

    def cells(self, workload: str, rate_rps: float, systems: Sequence[str]) -> list[Cell]:
        """The cells of one step for the systems still in, repetitions outermost."""
        reps = self.repetitions if rate_rps == self.rates_rps[0] else 1
        step = self.step(rate_rps)
        return [Cell(workload, s, step, rep) for rep in range(1, reps + 1) for s in systems]

    def estimated_s(self) -> float:
        """Wall time if no system stops before the top rate: an upper bound."""
        cells = sum(
            len(self.cells(w, rate, self.systems))
            for w in self.workloads
            for rate in self.rates_rps
        )
        return cells * (self.scenario.duration_s + CELL_OVERHEAD_S)

    def varied(
        self,
        workloads: Sequence[str] = (),
        systems: Sequence[str] = (),
        rates_rps: Sequence[float] = (),
        duration_s: int | None = None,
        repetitions: int | None = None,
        abort_rate: float | None = None,
    ) -> Sweep:
        """This sweep with the axes given replaced; empty ones keep this sweep's."""
        _check_systems(systems)
        return Sweep(
            self.name,
            self.description,
            tuple(workloads) or self.workloads,
            tuple(systems) or self.systems,
            self.scenario.varied(duration_s=duration_s, abort_rate=abort_rate),
            tuple(sorted(rates_rps)) or self.rates_rps,
            repetitions or self.repetitions,
        )


@dataclass(frozen=True)
class Plan:
    """What one ``bench run`` puts into one run folder: the cells of its matrices, then sweeps,
    every one on ``backend`` (containers of ``image``, with ``cpus`` each, on the docker
    backend)."""

    name: str
    matrices: tuple[Matrix, ...] = ()
    sweeps: tuple[Sweep, ...] = ()
    backend: str = "process"
    cpus: float | None = None
    image: str | None = None

    def cells(self) -> list[Cell]:
        """Every matrix's cells in order; a cell that two matrices share runs once."""
        return list(dict.fromkeys(c for m in self.matrices for c in m.cells()))

    def skipped(self) -> list[tuple[str, str]]:
        """(system, scenario) pairs the matrices leave out (:func:`runs`)."""
        return list(dict.fromkeys(pair for m in self.matrices for pair in m.skipped()))

    def estimated_s(self) -> float:
        """Rough wall time: the cells, plus every sweep run to its top rate (an upper bound)."""
        cells = sum(c.scenario.duration_s + CELL_OVERHEAD_S for c in self.cells())
        return cells + sum(s.estimated_s() for s in self.sweeps)


# Open loop at a fixed rate: latency is what the paper compares, and an open loop keeps a stalled
# system from hiding its stall (coordinated omission). 5 sagas/s keeps every system below
# saturation on 2 cores: Temporal distributed spends about 0.15 CPU-seconds per saga, so at
# 10 sagas/s it used 1.4-1.8 cores and fell behind (its sustainable rate is in the sweep).
_LATENCY_LOAD = LoadProfile(mode="open", rate_rps=5.0, request_timeout_s=30.0)
_QUICK_LOAD = LoadProfile(mode="open", rate_rps=5.0, request_timeout_s=30.0)
_SEQUENTIAL_LOAD = LoadProfile(mode="closed", users=1, think_time_s=0.0, request_timeout_s=30.0)
# A sweep step's rate is set per step; a 10 s timeout is ten times the stop rule's p99 limit, and
# keeps a step that overloads its system from draining for 30 s.
_CAPACITY_LOAD = LoadProfile(mode="open", rate_rps=1.0, request_timeout_s=10.0)
# One crash every 10 s, down for 2 s: five crashes in a 60 s cell, the first after warm-up.
_CRASHES = CrashPlan(
    every_s=10.0, downtime_s=2.0, targets=("runtime", "service"), seed=7, first_s=15.0
)
_QUICK_CRASHES = CrashPlan(
    every_s=8.0, downtime_s=2.0, targets=("runtime", "service"), seed=7, first_s=8.0
)
# Every state holder crashed, one kind per scenario so that each cost is seen apart: five
# crashes in 45 s, the first after warm-up. A kind a system does not have (accompanist_py has no
# server) is reported as not applicable, and that cell gets no ratio.
_CRASH_EVERY = CrashPlan(every_s=8.0, downtime_s=2.0, seed=7, first_s=10.0)
# A gray failure: frozen for 2 s every 8 s, five in 45 s; one kind of victim per scenario, as for
# crashes, so that each cost is seen apart and a system without a server still gets ratios.
_PAUSES = dataclasses.replace(_CRASH_EVERY, actions=("pause",))
_CRASH_KINDS = {"runtime": ("runtime",), "server": ("server",), "service": ("service",)}
_CRASH_WHAT = {
    "runtime": "a runtime (a sidecar; a Temporal worker; the Restate handler process; the "
    "gateway where it hosts the runtime: temporal-tuned's worker, DBOS)",
    "server": "the orchestrator's server (Temporal's dev server, the Restate server; their "
    "data kept; accompanist_py and DBOS have none)",
    "service": "a workload service",
}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("local", "local", _LATENCY_LOAD, 30, 5.0,
                 description="loopback, no injected latency, no crashes"),
        Scenario("three-zones", "three-zones", _LATENCY_LOAD, 30, 5.0,
                 description="three zones 10 ms apart (one way), no crashes"),
        Scenario("three-zones-crashes", "three-zones", _LATENCY_LOAD, 60, 10.0, _CRASHES,
                 description="three zones; kill -9 a runtime or service every 10 s, down 2 s"),
        Scenario("local-sequential", "local", _SEQUENTIAL_LOAD, 12, 2.0,
                 description="loopback, one saga at a time (closed loop, one user, no think "
                 "time): the latency of a saga alone"),
        Scenario("capacity", "local", _CAPACITY_LOAD, 10, 2.0,
                 description="a capacity sweep step: loopback, open loop at the step's rate "
                 "(in the scenario's name), 8 s measured"),
        Scenario("local-quick", "local", _QUICK_LOAD, 20, 5.0,
                 description="smoke: loopback, 20 s"),
        Scenario("three-zones-crashes-quick", "three-zones", _QUICK_LOAD, 20, 5.0,
                 _QUICK_CRASHES, description="smoke: three zones, one crash every 8 s"),
        *(Scenario(f"three-zones-{kind}-crashes", "three-zones", _LATENCY_LOAD, 45, 5.0,
                   dataclasses.replace(_CRASH_EVERY, targets=targets),
                   description=f"three zones; kill -9 {_CRASH_WHAT[kind]} every 8 s, down 2 s")
          for kind, targets in _CRASH_KINDS.items()),
        *(Scenario(f"three-zones-{kind}-crashes-quick", "three-zones", _QUICK_LOAD, 20, 5.0,
                   dataclasses.replace(_QUICK_CRASHES, targets=targets),
                   description=f"smoke: three zones, kill -9 {_CRASH_WHAT[kind]} every 8 s")
          for kind, targets in _CRASH_KINDS.items()),
        *(Scenario(f"three-zones-{kind}-pauses", "three-zones", _LATENCY_LOAD, 45, 5.0,
                   dataclasses.replace(_PAUSES, targets=targets),
                   description=f"three zones; pause (freeze, then resume) {_CRASH_WHAT[kind]} "
                   "every 8 s for 2 s: alive but silent")
          for kind, targets in _CRASH_KINDS.items()),
        *(Scenario(f"three-zones-{kind}-pauses-quick", "three-zones", _QUICK_LOAD, 20, 5.0,
                   dataclasses.replace(_PAUSES, targets=targets, every_s=6.0, first_s=6.0),
                   description=f"smoke: three zones, pause {_CRASH_WHAT[kind]} every 6 s")
          for kind, targets in _CRASH_KINDS.items()),
        Scenario("three-zones-tls", "three-zones", _LATENCY_LOAD, 60, 10.0, tls=True,
                 description="three zones, no crashes, mutual TLS on every link a system "
                 "can encrypt (Temporal's dev-server frontend cannot: it stays plaintext)"),
    )
}  # fmt: skip

_ALL_SYSTEMS = tuple(SYSTEMS)

_BOTH = ("warehouse", "hotel")
MATRICES: dict[str, Matrix] = {
    m.name: m
    for m in (
        Matrix(
            "quick",
            "smoke test: warehouse on every system, three zones with crashes",
            ("warehouse",),
            _ALL_SYSTEMS,
            (SCENARIOS["three-zones-crashes-quick"],),
        ),
        Matrix(
            "sequential",
            "the headline: one saga at a time on loopback, {warehouse, hotel} x every system, "
            "three repetitions",
            _BOTH,
            _ALL_SYSTEMS,
            (SCENARIOS["local-sequential"],),
            repetitions=3,
        ),
        Matrix(
            "three-zones",
            "three zones 10 ms apart at 5 sagas/s: {warehouse, hotel} x every system",
            _BOTH,
            _ALL_SYSTEMS,
            (SCENARIOS["three-zones"],),
        ),
        Matrix(
            "crashes",
            "three zones, runtimes or services killed: {warehouse, hotel} x every "
            "crash-tolerant system",
            _BOTH,
            _ALL_SYSTEMS,
            (SCENARIOS["three-zones-runtime-crashes"], SCENARIOS["three-zones-service-crashes"]),
        ),
        # A server does not depend on the workload: one workload shows what its crashes cost,
        # and that accompanist_py and DBOS have no server to crash.
        Matrix(
            "server-crashes",
            "three zones, the orchestrator's server (Temporal's, Restate's) killed: warehouse x "
            "every crash-tolerant system",
            ("warehouse",),
            _ALL_SYSTEMS,
            (SCENARIOS["three-zones-server-crashes"],),
        ),
        Matrix(
            "pauses",
            "three zones, a runtime or a service paused for 2 s every 8 s (a gray failure): "
            "{warehouse, hotel} x every system",
            _BOTH,
            _ALL_SYSTEMS,
            (SCENARIOS["three-zones-runtime-pauses"], SCENARIOS["three-zones-service-pauses"]),
        ),
        Matrix(
            "server-pauses",
            "three zones, the orchestrator's server paused for 2 s every 8 s: warehouse x every "
            "system",
            ("warehouse",),
            _ALL_SYSTEMS,
            (SCENARIOS["three-zones-server-pauses"],),
        ),
        Matrix(
            "default",
            "{warehouse, hotel} x every system x {local, three-zones, three-zones-crashes}",
            _BOTH,
            _ALL_SYSTEMS,
            (SCENARIOS["local"], SCENARIOS["three-zones"], SCENARIOS["three-zones-crashes"]),
        ),
        Matrix(
            "tls",
            "what TLS costs: {warehouse, hotel} x every system but the in-memory mode (whose "
            "links are the fault-tolerant one's) x {three-zones, three-zones-tls}, side by side",
            _BOTH,
            tuple(s for s in _ALL_SYSTEMS if s != "accompanist-default"),
            (SCENARIOS["three-zones"], SCENARIOS["three-zones-tls"]),
        ),
    )
}

SWEEPS: dict[str, Sweep] = {
    s.name: s
    for s in (
        Sweep(
            "capacity",
            "capacity curves: {warehouse, hotel} x every system on loopback at 2, 5, 10, 20, 40, "
            "80, 160 sagas/s, three repetitions at 2",
            _BOTH,
            _ALL_SYSTEMS,
            SCENARIOS["capacity"],
            (2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0),
            repetitions=3,
        ),
        Sweep(
            "quick",
            "smoke test of the sweep: warehouse x every system at 5 and 20 sagas/s",
            ("warehouse",),
            _ALL_SYSTEMS,
            SCENARIOS["capacity"].varied(duration_s=8),
            (5.0, 20.0),
            repetitions=1,
        ),
    )
}
