"""The benchmark matrix as data: systems, scenarios, and named matrices of them.

A *scenario* is everything about a run except the workload and the system: a topology, a crash
plan (or none), a load profile, a duration, a warm-up, and whether every link runs TLS. A
*matrix* is a cross product of workloads x systems x scenarios, repeated ``repetitions`` times;
each element is a *cell*.
``python -m bench run --matrix NAME`` runs one; ``python -m bench list`` shows them all.

Sizing on this 2-core box: a cell costs its duration plus about 30 s of deploy, health checks,
consistency check and teardown. ``quick`` is a smoke test of every system (a few minutes);
``default`` is 2 workloads x 3 systems x 3 scenarios of 60 s, under half an hour; ``tls`` runs
three zones with and without TLS side by side (under 20 minutes).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from bench.faults import CrashPlan
from bench.load import LoadProfile

CELL_OVERHEAD_S = 30.0
BASELINE_SYSTEM = "accompanist"


@dataclass(frozen=True)
class System:
    """A system under test. ``path_model`` names its critical-path model (bench.topology)."""

    name: str
    kind: str
    path_model: str
    description: str


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System(
            "accompanist",
            "accompanist",
            "choreography",
            "accompanist_py: a sidecar per service in its zone, fault-tolerant mode (SQLite WAL)",
        ),
        System(
            "temporal-distributed",
            "temporal",
            "orchestrator",
            "Temporal dev server; a worker per service in its zone, per-service task queues, "
            "regular activities",
        ),
        System(
            "temporal-tuned",
            "temporal",
            "orchestrator-local",
            "Temporal dev server; eager workflow start, unsandboxed runner, local activities; "
            "the worker lives in the gateway, so runtime crashes do not apply to it",
        ),
    )
}


@dataclass(frozen=True)
class Scenario:
    """Topology, crashes, load and timing of a cell. ``duration_s`` includes ``warmup_s``.

    With ``tls`` every link a system lets us encrypt runs mutual TLS with certificates made for
    the cell (bench.credentials, which also lists the links that stay plaintext and why).
    """

    name: str
    topology: str
    load: LoadProfile
    duration_s: int
    warmup_s: float
    crashes: CrashPlan | None = None
    description: str = ""
    tls: bool = False


@dataclass(frozen=True)
class Cell:
    """One run of one workload on one system in one scenario."""

    workload: str
    system: str
    scenario: Scenario
    rep: int

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
        """Cells in run order: repetitions outermost, so a slow drift hits every system alike."""
        return [
            Cell(w, s, sc, rep)
            for rep, w, sc, s in itertools.product(
                range(1, self.repetitions + 1), self.workloads, self.scenarios, self.systems
            )
        ]

    def estimated_s(self) -> float:
        """Rough wall time of the whole matrix."""
        return sum(c.scenario.duration_s + CELL_OVERHEAD_S for c in self.cells())


# Open loop at a fixed rate: latency is what the paper compares, and an open loop keeps a stalled
# system from hiding its stall (coordinated omission). 10 sagas/s leaves head room on 2 cores for
# the slowest configuration (about 200 ms per saga with Temporal's regular activities).
_LATENCY_LOAD = LoadProfile(mode="open", rate_rps=10.0, request_timeout_s=30.0)
_QUICK_LOAD = LoadProfile(mode="open", rate_rps=5.0, request_timeout_s=30.0)
_SEQUENTIAL_LOAD = LoadProfile(mode="closed", users=1, think_time_s=0.0, request_timeout_s=30.0)
# One crash every 10 s, down for 2 s: five crashes in a 60 s cell, the first after warm-up.
_CRASHES = CrashPlan(
    every_s=10.0, downtime_s=2.0, targets=("runtime", "service"), seed=7, first_s=15.0
)
_QUICK_CRASHES = CrashPlan(
    every_s=8.0, downtime_s=2.0, targets=("runtime", "service"), seed=7, first_s=8.0
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("local", "local", _LATENCY_LOAD, 60, 10.0,
                 description="loopback, no injected latency, no crashes"),
        Scenario("three-zones", "three-zones", _LATENCY_LOAD, 60, 10.0,
                 description="three zones 10 ms apart (one way), no crashes"),
        Scenario("three-zones-crashes", "three-zones", _LATENCY_LOAD, 60, 10.0, _CRASHES,
                 description="three zones; kill -9 a runtime or service every 10 s, down 2 s"),
        Scenario("local-sequential", "local", _SEQUENTIAL_LOAD, 45, 5.0,
                 description="loopback, one saga at a time (closed loop, one user, no think "
                 "time): the latency of a saga alone"),
        Scenario("local-quick", "local", _QUICK_LOAD, 20, 5.0,
                 description="smoke: loopback, 20 s"),
        Scenario("three-zones-crashes-quick", "three-zones", _QUICK_LOAD, 20, 5.0,
                 _QUICK_CRASHES, description="smoke: three zones, one crash every 8 s"),
        Scenario("three-zones-tls", "three-zones", _LATENCY_LOAD, 60, 10.0, tls=True,
                 description="three zones, no crashes, mutual TLS on every link a system "
                 "can encrypt (Temporal's dev-server frontend cannot: it stays plaintext)"),
    )
}  # fmt: skip

_ALL_SYSTEMS = tuple(SYSTEMS)

MATRICES: dict[str, Matrix] = {
    m.name: m
    for m in (
        Matrix(
            "quick",
            "smoke test: warehouse on every system, loopback and three zones with crashes",
            ("warehouse",),
            _ALL_SYSTEMS,
            (SCENARIOS["local-quick"], SCENARIOS["three-zones-crashes-quick"]),
        ),
        Matrix(
            "default",
            "the reported comparison: {warehouse, hotel} x every system x "
            "{local, three-zones, three-zones-crashes}",
            ("warehouse", "hotel"),
            _ALL_SYSTEMS,
            (SCENARIOS["local"], SCENARIOS["three-zones"], SCENARIOS["three-zones-crashes"]),
        ),
        Matrix(
            "sequential",
            "one saga at a time on loopback: {warehouse, hotel} x every system",
            ("warehouse", "hotel"),
            _ALL_SYSTEMS,
            (SCENARIOS["local-sequential"],),
        ),
        Matrix(
            "tls",
            "what TLS costs: {warehouse, hotel} x every system x {three-zones, "
            "three-zones-tls}, side by side in one run",
            ("warehouse", "hotel"),
            _ALL_SYSTEMS,
            (SCENARIOS["three-zones"], SCENARIOS["three-zones-tls"]),
        ),
    )
}
