"""The harness on the docker backend: one short cell per system, a container per process, a
crash (SIGKILL of the container) and a pause (the cgroup freezer) in each, consistent.

Skipped, with one line saying why, where there is no Docker daemon or no image (`make image`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import docker
import pandas as pd
import psutil
import pytest
from bench_cells import run_checked_cell

from bench.faults import CrashPlan
from bench.load import LoadProfile
from bench.matrix import SYSTEMS, Scenario
from launch.container import LABEL_HARNESS, image_available

pytestmark = [pytest.mark.docker]
_missing = image_available()
if _missing is not None:
    pytest.skip(f"docker tests skipped: {_missing}", allow_module_level=True)

# A crash at 4 s, a pause at 9 s, each for 1.5 s, of the process that holds the runtime.
KILL_PAUSE = Scenario(
    "docker-kill-pause",
    "three-zones",
    LoadProfile(mode="open", rate_rps=4.0),
    14,
    2.0,
    CrashPlan(
        every_s=5.0, downtime_s=1.5, targets=("runtime",), seed=3, first_s=4.0,
        actions=("kill", "pause"),
    ),
)  # fmt: skip
assert KILL_PAUSE.crashes is not None
# The in-memory mode survives no crash by design: it gets the pause alone.
PAUSE_ONLY = dataclasses.replace(
    KILL_PAUSE,
    name="docker-pause",
    crashes=dataclasses.replace(KILL_PAUSE.crashes, actions=("pause",)),
)


def _containers_of_this_harness() -> list[str]:
    me = psutil.Process()
    label = f"{LABEL_HARNESS}={me.pid}:{me.create_time():.3f}"
    client = docker.from_env()
    return [c.name for c in client.containers.list(all=True, filters={"label": label})]


@pytest.mark.parametrize("system", list(SYSTEMS))
def test_a_cell_in_containers_survives_a_kill_and_a_pause(system: str, tmp_path: Path) -> None:
    scenario = KILL_PAUSE if SYSTEMS[system].crash_tolerant else PAUSE_ONLY
    cell = run_checked_cell(tmp_path, system, scenario, backend="docker")

    assert cell.meta()["backend"] == "docker"
    faults = pd.read_csv(cell.faults_csv)
    expected = ["kill", "pause"] if scenario is KILL_PAUSE else ["pause", "pause"]
    assert list(faults["action"]) == expected
    assert faults["healthy_time"].notna().all(), faults
    cpu = pd.read_csv(cell.cpu_csv).set_index("process")
    assert cpu.loc["gateway", "cpu_s"] > 0  # read from the host's view of the container
    assert _containers_of_this_harness() == [], "containers left behind"
