"""Fault injection: a seeded schedule of kill -9s and pauses, the same for every system.

A :class:`CrashPlan` says how often to strike (every N seconds), for how long the victim stays
down, what a strike is (``kill``: SIGKILL, then a restart on the same data; ``pause``: the
victim frozen and then resumed, a gray failure: alive, its connections open, silent), and
which kinds of process may be hit (``runtime`` = a service's sidecar or Temporal
worker, ``service``, ``server`` = the orchestrator's server, Temporal's or Restate's); the
benchmark crashes each kind in a scenario of its own, so that every state holder is crashed and
each cost is seen apart. :func:`crash_schedule` turns a plan into concrete faults for a
workload's services: fixed times and *slots* (``runtime:payment``), chosen by a seeded RNG from
the slots of every target kind. The schedule depends only on (plan, services, duration), never
on the system, so both systems lose "the runtime of service payment" at the same second. A slot
that a system does not have (``server`` under accompanist_py or DBOS, which have none) is
recorded as not applicable rather than shifting the rest of the schedule; :func:`applicability`
counts, before the load, how many of a schedule's crashes a system can suffer at all. A cell in
which some do not apply did not suffer the crash schedule, and is not compared with one that
did.

:class:`FaultInjector` plays a schedule against a running deployment in a background thread and
records every fault window to ``faults.csv`` (slot, action, process, the times it was struck,
restarted or resumed, and healthy again). Both actions go through the supervisor, so that on the
docker backend a crash is a SIGKILL of the container and a pause is the container runtime's
freezer.
"""

from __future__ import annotations

import csv
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

TARGET_KINDS = ("runtime", "service", "server")
ACTIONS = ("kill", "pause")
FAULT_COLUMNS = (
    "slot",
    "action",
    "process",
    "planned_kill_s",
    "kill_time",
    "restart_time",
    "healthy_time",
    "note",
)


@dataclass(frozen=True)
class CrashPlan:
    """Strike one process every ``every_s`` seconds, for ``downtime_s`` seconds.

    ``actions`` are taken in turn (``("kill", "pause")``: a crash, then a pause, then a crash,
    ...). The first strike happens ``first_s`` seconds after load starts (default: ``every_s``);
    none is scheduled whose end would fall after the end of the load.
    """

    every_s: float
    downtime_s: float
    targets: tuple[str, ...] = ("runtime", "service")
    seed: int = 1
    first_s: float | None = None
    actions: tuple[str, ...] = ("kill",)

    @property
    def kills(self) -> bool:
        """Whether some strike is a crash (a pause loses no state: every system survives it)."""
        return "kill" in self.actions

    def __post_init__(self) -> None:
        unknown = set(self.targets) - set(TARGET_KINDS)
        if unknown or not self.targets:
            raise ValueError(f"crash targets must be among {TARGET_KINDS}, got {self.targets}")
        if self.every_s <= 0 or self.downtime_s < 0:
            raise ValueError("every_s must be > 0 and downtime_s >= 0")
        if self.downtime_s >= self.every_s:
            # Otherwise a victim could be chosen again while still down.
            raise ValueError(f"downtime_s ({self.downtime_s}) must be < every_s ({self.every_s})")
        if not self.actions or set(self.actions) - set(ACTIONS):
            raise ValueError(f"actions must be among {ACTIONS}, got {self.actions}")


@dataclass(frozen=True)
class Fault:
    """One planned strike: kill (or pause) ``slot`` at ``kill_at_s``, restart (or resume) it at
    ``restart_at_s``.

    Times are seconds after the start of the load.
    """

    slot: str
    kill_at_s: float
    restart_at_s: float
    action: str = "kill"


def crash_slots(plan: CrashPlan, services: Sequence[str]) -> list[str]:
    """The slots a plan may hit, in a fixed order (so the RNG draws are reproducible)."""
    slots = []
    for kind in plan.targets:
        if kind == "server":
            slots.append("server")
        else:
            slots += [f"{kind}:{service}" for service in sorted(services)]
    return slots


def crash_schedule(plan: CrashPlan, services: Sequence[str], duration_s: float) -> list[Fault]:
    """The faults of one run: same plan, services and duration give the same list."""
    rng = random.Random(plan.seed)
    slots = crash_slots(plan, services)
    faults = []
    t = plan.every_s if plan.first_s is None else plan.first_s
    while t + plan.downtime_s < duration_s:
        action = plan.actions[len(faults) % len(plan.actions)]
        faults.append(Fault(rng.choice(slots), t, t + plan.downtime_s, action))
        t += plan.every_s
    return faults


@dataclass(frozen=True)
class Applicability:
    """How much of a crash schedule applies to one system: what a cell's report must say."""

    planned: int
    applicable: int
    not_applicable: tuple[str, ...]  # the slots of the crashes that do not apply, in order
    noun: str = "crashes"  # what the strikes are: crashes, pauses, or crashes and pauses

    @property
    def all_apply(self) -> bool | None:
        """True if every planned crash hits a process, False if one does not, None if none is
        planned (a cell without crashes is comparable as it is)."""
        return None if self.planned == 0 else self.applicable == self.planned

    def describe(self) -> str:
        """One line for the console: ``5 crashes`` or why some do not apply."""
        if self.all_apply is not False:
            return f"{self.planned} {self.noun}"
        missing = ", ".join(sorted(set(self.not_applicable)))
        return (
            f"{self.planned} {self.noun} planned, {self.applicable} applicable "
            f"(this system has no {missing})"
        )


def applicability(faults: Sequence[Fault], resolve: Callable[[str], str | None]) -> Applicability:
    """Count which of `faults` hit a process of the system that `resolve` describes."""
    missing = tuple(f.slot for f in faults if resolve(f.slot) is None)
    actions = {f.action for f in faults}
    noun = {frozenset({"pause"}): "pauses", frozenset(ACTIONS): "crashes and pauses"}
    return Applicability(
        len(faults), len(faults) - len(missing), missing, noun.get(frozenset(actions), "crashes")
    )


class Crashable(Protocol):
    """What the injector needs from a supervisor (see :class:`launch.Supervisor`)."""

    def names(self) -> list[str]: ...

    def kill(self, name: str) -> None: ...

    def restart(self, name: str, wait: bool = True) -> None: ...

    def pause(self, name: str) -> None: ...

    def resume(self, name: str) -> None: ...


class FaultInjector:
    """Plays a crash schedule against a supervisor in a background thread.

    ``resolve`` maps a slot to the supervisor's process name for this system, or ``None`` when
    the system has no such process; by default a slot resolves to the process of the same name
    if the supervisor runs one. Use as a context manager around the load; ``t0`` (epoch seconds)
    is when the load starts.
    """

    def __init__(
        self,
        faults: Sequence[Fault],
        supervisor: Crashable,
        csv_path: Path,
        t0: float | None = None,
        resolve: Callable[[str], str | None] | None = None,
    ) -> None:
        self.faults = list(faults)
        self._supervisor = supervisor
        self._csv_path = Path(csv_path)
        self._t0 = t0
        self._resolve = resolve or self._same_name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def _same_name(self, slot: str) -> str | None:
        return slot if slot in self._supervisor.names() else None

    def __enter__(self) -> FaultInjector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start playing the schedule (from ``t0``, or now)."""
        t0 = self._t0 if self._t0 is not None else time.time()
        self._csv_path.parent.mkdir(parents=True, exist_ok=True)
        with self._csv_path.open("w", newline="") as f:
            csv.writer(f).writerow(FAULT_COLUMNS)
        self._thread = threading.Thread(target=self._run, args=(t0,), name="faults", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling; a victim that is down is restarted before this returns."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, t0: float) -> None:
        for fault in self.faults:
            if self._stop.wait(max(0.0, t0 + fault.kill_at_s - time.time())):
                return
            self._play(t0, fault)

    def _play(self, t0: float, fault: Fault) -> None:
        process = self._resolve(fault.slot)
        row = {
            "slot": fault.slot,
            "action": fault.action,
            "process": process or "",
            "planned_kill_s": fault.kill_at_s,
        }
        if process is None:
            self._record({**row, "note": "not applicable to this system"})
            return
        pause = fault.action == "pause"
        try:
            # When the strike was ordered: on the docker backend the call itself takes a few
            # tens of milliseconds, and the victim is gone or frozen from its start.
            row["kill_time"] = time.time()
            (self._supervisor.pause if pause else self._supervisor.kill)(process)
            # Restart (resume) even when asked to stop, so that teardown finds the system whole.
            self._stop.wait(max(0.0, t0 + fault.restart_at_s - time.time()))
            row["restart_time"] = time.time()
            if pause:
                self._supervisor.resume(process)  # healthy as soon as it runs again
            else:
                self._supervisor.restart(process, wait=True)
            row["healthy_time"] = time.time()
        except Exception as exc:  # recorded in faults.csv, reported by the harness
            self.errors.append(f"{fault.slot} ({process}): {exc}")
            row["note"] = f"error: {exc}"
        self._record(row)

    def _record(self, row: dict[str, object]) -> None:
        with self._csv_path.open("a", newline="") as f:
            csv.DictWriter(f, FAULT_COLUMNS).writerow(row)
