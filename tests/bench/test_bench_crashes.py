"""Every state holder crashed: which process a crash slot kills on each system, and short cells
in which temporal-tuned's gateway (hosting its worker) and the Temporal server are killed -9,
restarted and recovered from, with every request answered and the services consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from bench_cells import run_checked_cell

from bench.faults import Fault, applicability, crash_schedule
from bench.matrix import SCENARIOS, SYSTEMS, Scenario
from bench.results import CellDir, read_json
from bench.run import _crash_target

SERVICES = ("warehouse", "payment", "loyalty")


class _Names:
    def __init__(self, names: list[str]) -> None:
        self._names = names

    def names(self) -> list[str]:
        return self._names


def _deployed(system: str) -> _Names:
    names = ["proxy", "gateway", *(f"service:{s}" for s in SERVICES)]
    if system.startswith("temporal-"):
        names.append("temporal-server")
    if system == "restate":
        names += ["restate-server", "restate-handler"]
    if system in ("accompanist", "temporal-distributed"):
        names += [f"runtime:{s}" for s in SERVICES]
    return _Names(names)


def _resolve(system: str, slot: str) -> str | None:
    return _crash_target(_deployed(system), SYSTEMS[system])(slot)  # type: ignore[arg-type]


def test_a_runtime_crash_of_temporal_tuned_kills_the_gateway_that_hosts_its_worker() -> None:
    assert {_resolve("temporal-tuned", f"runtime:{s}") for s in SERVICES} == {"gateway"}
    assert _resolve("temporal-distributed", "runtime:payment") == "runtime:payment"
    assert _resolve("accompanist", "runtime:payment") == "runtime:payment"


def test_restate_and_dbos_crash_what_holds_their_state() -> None:
    assert {_resolve("restate", f"runtime:{s}") for s in SERVICES} == {"restate-handler"}
    assert _resolve("restate", "server") == "restate-server"
    assert {_resolve("dbos", f"runtime:{s}") for s in SERVICES} == {"gateway"}
    assert _resolve("dbos", "server") is None
    assert _resolve("temporal-distributed", "server") == "temporal-server"


def test_a_server_crash_does_not_apply_to_accompanist_and_says_so() -> None:
    faults = [Fault("server", 8.0, 10.0), Fault("server", 16.0, 18.0)]
    none = applicability(faults, lambda slot: _resolve("accompanist", slot))
    assert none.all_apply is False and none.applicable == 0
    assert "no server" in none.describe()
    every = applicability(faults, lambda slot: _resolve("temporal-tuned", slot))
    assert every.all_apply is True and every.describe() == "2 crashes"
    assert applicability([], lambda slot: None).all_apply is None


def _planned(scenario: Scenario) -> int:
    assert scenario.crashes is not None
    return len(crash_schedule(scenario.crashes, SERVICES, scenario.duration_s))


def _check_crashes_recovered(cd: CellDir, process: str, crashes: int) -> pd.DataFrame:
    """Every crash hit `process` and was restarted; every saga has one row, ended as the
    services say; returns the requests."""
    faults = pd.read_csv(cd.faults_csv)
    assert len(faults) == crashes and set(faults["process"]) == {process}
    assert faults["healthy_time"].notna().all() and (faults["note"].isna()).all()
    meta = json.loads(cd.meta_json.read_text())
    assert meta["crashes_applicable"] is True and meta["crash_errors"] == []
    starts = pd.read_csv(cd.cpu_csv).set_index("process")["starts"]
    assert starts[process] == 1 + crashes
    requests = pd.read_csv(cd.requests_csv)
    assert requests["saga_id"].is_unique
    counts = read_json(cd.check_json)["counts"]
    assert sum(counts.values()) == len(requests)
    return requests


def test_temporal_tuned_survives_kill_9_of_its_gateway_worker(tmp_path: Path) -> None:
    scenario = SCENARIOS["three-zones-runtime-crashes-quick"]
    cd = run_checked_cell(tmp_path, "temporal-tuned", scenario)
    requests = _check_crashes_recovered(cd, "gateway", _planned(scenario))
    # Sagas that arrived while the gateway was down were posted again, under their own ids.
    assert (requests["attempts"] > 1).any()


def test_a_temporal_server_killed_9_restarts_on_its_sqlite_file_and_sagas_finish(
    tmp_path: Path,
) -> None:
    scenario = SCENARIOS["three-zones-server-crashes-quick"]
    cd = run_checked_cell(tmp_path, "temporal-distributed", scenario)
    _check_crashes_recovered(cd, "temporal-server", _planned(scenario))
    loops = json.loads(cd.meta_json.read_text())["event_loops"]
    assert {loops[p] for p in loops if p.startswith(("runtime:", "service:", "gateway"))} == {
        "uvloop"
    }


def test_a_restate_server_killed_9_restarts_on_its_data_and_sagas_finish(tmp_path: Path) -> None:
    scenario = SCENARIOS["three-zones-server-crashes-quick"]
    cd = run_checked_cell(tmp_path, "restate", scenario)
    _check_crashes_recovered(cd, "restate-server", _planned(scenario))
