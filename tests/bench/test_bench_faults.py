"""Crash schedules: reproducible from the seed, identical across systems, recorded to CSV."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from bench.faults import FAULT_COLUMNS, CrashPlan, FaultInjector, crash_schedule

SERVICES = ["warehouse", "payment", "loyalty"]


def test_the_same_seed_gives_the_same_schedule() -> None:
    plan = CrashPlan(every_s=5, downtime_s=1, targets=("runtime", "service"), seed=42)
    first = crash_schedule(plan, SERVICES, 60)
    assert first == crash_schedule(plan, list(reversed(SERVICES)), 60)
    assert [f.kill_at_s for f in first] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55]
    assert all(f.restart_at_s == f.kill_at_s + 1 for f in first)
    other = crash_schedule(CrashPlan(5, 1, ("runtime", "service"), seed=43), SERVICES, 60)
    assert [f.slot for f in other] != [f.slot for f in first]


def test_slots_name_what_is_crashed_not_how_a_system_runs_it() -> None:
    plan = CrashPlan(every_s=2, downtime_s=1, targets=("runtime", "server"), seed=1)
    slots = {f.slot for f in crash_schedule(plan, SERVICES, 200)}
    assert slots == {"runtime:warehouse", "runtime:payment", "runtime:loyalty", "server"}


def test_no_restart_falls_after_the_end_of_the_load() -> None:
    plan = CrashPlan(every_s=10, downtime_s=3, seed=1, first_s=15)
    faults = crash_schedule(plan, SERVICES, 60)
    assert [f.kill_at_s for f in faults] == [15, 25, 35, 45, 55]
    assert max(f.restart_at_s for f in faults) < 60


def test_a_downtime_as_long_as_the_period_is_rejected() -> None:
    with pytest.raises(ValueError, match="downtime_s"):
        CrashPlan(every_s=2, downtime_s=2)
    with pytest.raises(ValueError, match="targets"):
        CrashPlan(every_s=2, downtime_s=1, targets=("database",))


class FakeSupervisor:
    def __init__(self, names: list[str]) -> None:
        self._names = names
        self.calls: list[tuple[str, str]] = []

    def names(self) -> list[str]:
        return self._names

    def kill(self, name: str) -> None:
        self.calls.append(("kill", name))

    def restart(self, name: str, wait: bool = True) -> None:
        self.calls.append(("restart", name))


def test_injector_kills_restarts_and_records_windows(tmp_path: Path) -> None:
    plan = CrashPlan(every_s=0.2, downtime_s=0.05, targets=("runtime", "server"), seed=3)
    faults = crash_schedule(plan, SERVICES, 1.3)
    supervisor = FakeSupervisor([f"runtime:{s}" for s in SERVICES])
    out = tmp_path / "faults.csv"
    with FaultInjector(faults, supervisor, out, t0=time.time()):
        time.sleep(1.5)
    rows = list(csv.DictReader(out.open()))
    assert tuple(rows[0].keys()) == FAULT_COLUMNS
    assert [r["slot"] for r in rows] == [f.slot for f in faults]
    for row in rows:
        if row["slot"] == "server":
            assert row["note"] == "not applicable to this system" and row["process"] == ""
        else:
            assert float(row["kill_time"]) <= float(row["restart_time"])
            assert ("kill", row["process"]) in supervisor.calls
    killed = [name for op, name in supervisor.calls if op == "kill"]
    restarted = [name for op, name in supervisor.calls if op == "restart"]
    assert killed == restarted
