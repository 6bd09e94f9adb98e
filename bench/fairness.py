"""What the benchmark holds equal between the systems, as a table the report prints.

Failure detection is where a comparison is most easily rigged: a runtime that notices a crash
in 1 s against one that waits 10 s measures the timeouts, not the design. Every number below is
read from the object that applies it — the sidecar's defaults (`SidecarConfig`, `Backoff`), the
Temporal baseline's `CALL_POLICY` and `WORKFLOW_TASKS`, the load generator's `LoadProfile` —
so the table cannot drift from what ran. :func:`failure_detection` gives it as rows of
``setting, accompanist_py, temporal`` for run.json and the report.
"""

from __future__ import annotations

from accompanist_py.backoff import Backoff
from accompanist_py.sidecar.config import SidecarConfig
from baselines.temporal.activities import CALL_POLICY
from baselines.temporal.worker import WORKFLOW_TASKS
from bench.load import LoadProfile


def _s(seconds: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


def _backoff(initial_s: float, multiplier: float, max_s: float) -> str:
    return f"{_s(initial_s)} x{multiplier:g}, at most {_s(max_s)}"


def failure_detection(load: LoadProfile | None = None) -> list[dict[str, str]]:
    """Rows ``{"setting", "accompanist_py", "temporal"}``: timeouts, retries, crash detection
    and event loops of both systems, from the settings the harness deploys."""
    load = load or LoadProfile(mode="open")
    sidecar, backoff, call, tasks = SidecarConfig, Backoff(), CALL_POLICY, WORKFLOW_TASKS
    client_retry = (
        f"the same saga id re-posted after no answer or a 5xx, "
        f"{_backoff(load.retry_initial_s, load.retry_multiplier, load.retry_max_s)}, "
        f"within {_s(load.request_timeout_s)} of the first post"
    )
    return [
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
            "accompanist_py": "retries the initiator sidecar through restarts (202 or no "
            f"answer), {_backoff(backoff.initial_s, backoff.multiplier, backoff.max_s)}",
            "temporal": "retries the Temporal frontend through restarts (UNAVAILABLE and "
            f"kin), {_backoff(backoff.initial_s, backoff.multiplier, backoff.max_s)}",
        },
        {"setting": "load generator", "accompanist_py": client_retry, "temporal": client_retry},
        {
            "setting": "event loop (each cell.json's event_loops: what every process announced)",
            "accompanist_py": "uvloop: sidecars, services, gateway; Locust: gevent",
            "temporal": "uvloop: workers, services, gateway, the dev server's Python wrapper "
            "(the server itself is Go); Locust: gevent",
        },
    ]
