"""What the benchmark holds equal between the systems, as a table the report prints.

Failure detection is where a comparison is most easily rigged: a runtime that notices a crash in
1 s against one that waits 10 s measures the timeouts, not the design. Every value below is read
from what applies it: the sidecar's defaults (`SidecarConfig`, `Backoff`), the Temporal
baseline's `CALL_POLICY` and `WORKFLOW_TASKS`, the Restate and DBOS twins' policy
(`baselines.contract.CALL_POLICY`) and the Restate server's retry settings, and, from each
cell's cell.json, the load profile its scenario ran with and the event loop each of its
processes announced (the line `accompanist_py.eventloop.announce` prints, which
:func:`announced_loop` reads back from a log). :func:`failure_detection` gives the table as rows
of ``setting`` and one column per system kind; :func:`write_failure_detection` keeps it in the
run folder (``failure_detection.csv``) once the cells have run, for the report.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from accompanist_py.backoff import Backoff
from accompanist_py.eventloop import ANNOUNCEMENT
from accompanist_py.sidecar.config import SidecarConfig
from baselines.contract import CALL_POLICY as TWIN_POLICY
from baselines.restate.server import SETTINGS as RESTATE_SETTINGS
from baselines.temporal.activities import CALL_POLICY
from baselines.temporal.worker import WORKFLOW_TASKS
from bench.matrix import SYSTEMS
from bench.results import FAILURE_DETECTION_CSV, cell_dirs

COLUMNS = ("setting", "accompanist_py", "temporal", "restate", "dbos")
_ANNOUNCED = re.compile(rf"^{ANNOUNCEMENT}(\S+)", re.MULTILINE)


def announced_loop(log_text: str) -> str | None:
    """The loop the last incarnation in a process log announced, or None if none did."""
    found = _ANNOUNCED.findall(log_text)
    return found[-1] if found else None


def _s(seconds: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


def _backoff(initial_s: float, multiplier: float, max_s: float) -> str:
    return f"{_s(initial_s)} x{multiplier:g}, at most {_s(max_s)}"


def _scenario(meta: Mapping[str, Any]) -> str:
    # A sweep's steps are one scenario at rising rates: named once.
    return f"sweep {meta['sweep']}" if meta.get("sweep") else str(meta.get("scenario"))


def _of_kind(cells: list[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    """The cells of systems of `kind` (``accompanist`` or ``temporal``)."""
    return [
        meta
        for meta in cells
        if (system := SYSTEMS.get(str(meta.get("system")))) is not None and system.kind == kind
    ]


def _load_generator(cells: list[Mapping[str, Any]]) -> str:
    """The load generator's retry policy and deadline, with the scenarios that used each."""
    scenarios: dict[str, list[str]] = defaultdict(list)
    for meta in cells:
        load = meta.get("load") or {}
        policy = (
            f"{_backoff(load['retry_initial_s'], load['retry_multiplier'], load['retry_max_s'])}"
            f", all within {_s(load['request_timeout_s'])} of the intended start"
        )
        if _scenario(meta) not in scenarios[policy]:
            scenarios[policy].append(_scenario(meta))
    if not scenarios:
        return "no cell ran"
    used = "; ".join(f"{policy} ({', '.join(names)})" for policy, names in scenarios.items())
    return f"the same saga id posted again after no answer or a 503 (never after a 500): {used}"


def _event_loops(cells: list[Mapping[str, Any]]) -> str:
    """The loops the processes of `cells` announced, by process kind (``runtime``, ``service``,
    ``gateway``, ...)."""
    loops: dict[str, set[str]] = defaultdict(set)
    for meta in cells:
        for process, loop in (meta.get("event_loops") or {}).items():
            loops[process.partition(":")[0]].add(loop)
    if not loops:
        return "no cell ran"
    by_loops: dict[str, list[str]] = defaultdict(list)
    for process_kind, announced in sorted(loops.items()):
        by_loops[", ".join(sorted(announced))].append(process_kind)
    return "; ".join(f"{', '.join(kinds)}: {loop}" for loop, kinds in by_loops.items())


def failure_detection(cells: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Rows of :data:`COLUMNS`: timeouts, retries, crash detection and event loops of every
    system kind; `cells` are the cell.json contents of the cells that ran."""
    cells = list(cells)
    ours, theirs = _of_kind(cells, "accompanist"), _of_kind(cells, "temporal")
    sidecar, backoff, call, tasks = SidecarConfig, Backoff(), CALL_POLICY, WORKFLOW_TASKS
    twin = TWIN_POLICY
    twin_backoff = _backoff(twin.backoff.initial_s, twin.backoff.multiplier, twin.backoff.max_s)
    invocations = RESTATE_SETTINGS["default-retry-policy"]
    restate_retries = (
        f"{invocations['initial-interval']} x{invocations['exponentiation-factor']:g}, at most "
        f"{invocations['max-interval']}"
    )
    gateway_answers = "; past the gateway's deadline 503, for a saga failed for good 500"
    rows = [
        {
            "setting": "one service-call attempt",
            "accompanist_py": f"service_call_s = {_s(sidecar.service_call_s)}",
            "temporal": f"start_to_close = {_s(call.start_to_close_s)}",
        },
        {
            "setting": "all attempts of one call",
            "accompanist_py": f"service_deadline_s = {_s(sidecar.service_deadline_s)}",
            "temporal": f"schedule_to_close = {_s(call.schedule_to_close_s)}, unlimited attempts",
        },
        {
            "setting": "retry backoff (service calls, outbox resends)",
            "accompanist_py": _backoff(backoff.initial_s, backoff.multiplier, backoff.max_s),
            "temporal": _backoff(call.retry_initial_s, call.retry_backoff, call.retry_max_s),
        },
        {
            "setting": "call in flight when its runtime is killed",
            "accompanist_py": "replayed by the restarted sidecar as soon as it starts",
            "temporal": f"distributed: heartbeat_timeout = {_s(call.heartbeat_timeout_s)} "
            f"(the activity heartbeats while a call runs); tuned (local activities): redone "
            f"after the workflow task timeout, {_s(tasks.timeout_s)}",
        },
        {
            "setting": "work sent to a killed runtime",
            "accompanist_py": f"peers resend when it announces /ready, at worst every "
            f"{_s(backoff.max_s)} (outbox backoff)",
            "temporal": f"sticky queue schedule-to-start = {_s(tasks.sticky_schedule_to_start_s)}"
            f", then the normal queue; workflow task timeout = {_s(tasks.timeout_s)}",
        },
        {
            "setting": "gateway to its backend",
            "accompanist_py": "retries the initiator sidecar through restarts (202, 5xx or no "
            f"answer), {_backoff(backoff.initial_s, backoff.multiplier, backoff.max_s)}"
            + gateway_answers,
            "temporal": "retries the Temporal frontend through restarts (UNAVAILABLE and "
            f"kin), {_backoff(backoff.initial_s, backoff.multiplier, backoff.max_s)}"
            + gateway_answers,
        },
        {
            "setting": "load generator",
            "accompanist_py": _load_generator(ours),
            "temporal": _load_generator(theirs),
        },
        {
            "setting": "event loop (announced by each process, every cell)",
            "accompanist_py": _event_loops(ours),
            "temporal": _event_loops(theirs),
        },
    ]
    twins = {
        "one service-call attempt": (
            f"{_s(twin.attempt_s)} (one ctx.run)",
            f"{_s(twin.attempt_s)} (one attempt of the DBOS step)",
        ),
        "all attempts of one call": (
            f"ctx.run max_duration = {_s(twin.deadline_s)}",
            f"{_s(twin.deadline_s)} (the step's own retry loop)",
        ),
        "retry backoff (service calls, outbox resends)": (
            f"ctx.run: {twin_backoff}; invocations: {restate_retries}",
            twin_backoff,
        ),
        "call in flight when its runtime is killed": (
            "the server sees the handler's connection drop and invokes again on a new one "
            f"({restate_retries}), replaying the journal; the step in flight runs again",
            "resumed by the restarted process at launch (DBOS recovers its executor's pending "
            "workflows); the step in flight runs again",
        ),
        "work sent to a killed runtime": (
            f"retried by the server, {restate_retries}",
            "none is sent: the runtime is the gateway; the load generator posts again",
        ),
        "gateway to its backend": (
            "retries the Restate ingress through restarts (no answer, 502-504), "
            f"{_backoff(backoff.initial_s, backoff.multiplier, backoff.max_s)}" + gateway_answers,
            "in process (DBOS is a library in the gateway)" + gateway_answers,
        ),
    }
    for row in rows:
        restate, dbos = twins.get(row["setting"], ("", ""))
        if row["setting"] == "load generator":
            restate, dbos = (_load_generator(_of_kind(cells, k)) for k in ("restate", "dbos"))
        elif row["setting"].startswith("event loop"):
            restate, dbos = (_event_loops(_of_kind(cells, k)) for k in ("restate", "dbos"))
        row |= {"restate": restate, "dbos": dbos}
    return rows


def write_failure_detection(run_dir: Path) -> Path:
    """Write :data:`FAILURE_DETECTION_CSV` into `run_dir` from the cells that ran there."""
    path = Path(run_dir) / FAILURE_DETECTION_CSV
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(failure_detection(cell.meta() for cell in cell_dirs(run_dir)))
    return path
