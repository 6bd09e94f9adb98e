"""The settings table says what ran: each scenario's load-generator deadline and the event loop
every process announced, read from the cells' cell.json; the report prints it as a table."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from bench.analysis import analyse
from bench.fairness import (
    announced_loop,
    failure_detection,
    write_failure_detection,
)
from bench.load import RAW_COLUMNS, LoadProfile
from bench.report import write_report
from bench.results import cell_dir, write_json

UVLOOP_SIDECARS = {"loadgen": "gevent", "gateway": "uvloop", "runtime:a": "uvloop",
                   "service:a": "uvloop", "proxy": "uvloop"}  # fmt: skip
TEMPORAL = {"loadgen": "gevent", "gateway": "uvloop", "runtime:a": "uvloop",
            "service:a": "uvloop", "temporal-server": "not announced"}  # fmt: skip


def _meta(system: str, scenario: str, timeout_s: float, loops: dict[str, str], sweep: str = ""):
    load = LoadProfile("open", rate_rps=5, request_timeout_s=timeout_s).__dict__
    return {"system": system, "scenario": scenario, "sweep": sweep, "load": load,
            "event_loops": loops}  # fmt: skip


CELLS = [
    _meta("accompanist", "sequential", 30, UVLOOP_SIDECARS),
    _meta("temporal-tuned", "sequential", 30, TEMPORAL),
    _meta("accompanist", "capacity-local-5rps", 10, UVLOOP_SIDECARS, sweep="capacity-local"),
    _meta("accompanist", "capacity-local-10rps", 10, UVLOOP_SIDECARS, sweep="capacity-local"),
]


def _row(rows: list[dict[str, str]], setting: str) -> dict[str, str]:
    return next(row for row in rows if row["setting"].startswith(setting))


def test_the_load_generator_row_gives_each_scenario_its_own_deadline() -> None:
    client = _row(failure_detection(CELLS), "load generator")["accompanist_py"]
    assert "within 30 s of the intended start (sequential)" in client
    assert "within 10 s of the intended start (sweep capacity-local)" in client
    assert "never after a 500" in client
    # temporal-tuned ran the sequential scenario only.
    assert "10 s" not in _row(failure_detection(CELLS), "load generator")["temporal"]


def test_the_event_loop_row_is_what_each_kind_of_process_announced() -> None:
    loops = _row(failure_detection(CELLS), "event loop")
    assert loops["accompanist_py"] == "gateway, proxy, runtime, service: uvloop; loadgen: gevent"
    assert loops["temporal"] == (
        "gateway, runtime, service: uvloop; loadgen: gevent; temporal-server: not announced"
    )
    assert _row(failure_detection(CELLS[:1]), "event loop")["temporal"] == "no cell ran"


def test_the_loop_read_from_a_log_is_the_last_incarnations() -> None:
    log = "starting\nevent loop: asyncio\nkilled\nevent loop: uvloop\nserving\n"
    assert announced_loop(log) == "uvloop" and announced_loop("no announcement") is None


def _cell(run: Path, meta: dict[str, Any]) -> None:
    cd = cell_dir(run, "warehouse", meta["system"], meta["scenario"], 1)
    with cd.requests_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RAW_COLUMNS)
        for i in range(5):
            t = 1_800_000_000.0 + i
            writer.writerow([f"s{i}", t, t, t + 0.1, 100.0, 200, "committed", "", "", 0, 1])
    write_json(cd.meta_json, meta)


def test_the_report_prints_the_settings_as_a_markdown_table(tmp_path: Path) -> None:
    for meta in CELLS:
        _cell(tmp_path, meta)
    write_failure_detection(tmp_path)
    analyse(tmp_path)
    report = write_report(tmp_path).read_text()
    section = report.split("## Failure detection and runtimes")[1].split("\n## ")[0]
    assert "| setting | accompanist_py | temporal |" in section
    assert "| one service-call attempt | service_call_s = " in section
    assert "[{" not in report  # no Python repr of the rows anywhere
