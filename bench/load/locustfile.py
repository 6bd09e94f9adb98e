"""Locust load for one saga workload: closed or open loop, one raw CSV row per request.

Run by :func:`bench.load.run_locust` as ``locust -f this-file --headless ... ClosedLoop|OpenLoop``.
Every user posts ``{"saga_id", "request"}`` to the gateway's ``POST /sagas/{workload}``, taking
requests in order from a JSONL file the harness wrote beforehand. This file imports only the
standard library, gevent and Locust: Locust monkey-patches with gevent, and temporalio (which a
workload module could drag in) must never be imported into this process.

- ``ClosedLoop``: N users, each sends a saga, waits for its outcome, thinks, sends the next.
- ``OpenLoop``: one scheduler draws Poisson arrivals at ``--rate`` and spawns each request at its
  intended start. Latency is measured from that intended start, so a stalled system (or a
  saturated client) shows up as latency instead of as silently fewer requests (coordinated
  omission). In-flight requests are capped by ``--max-in-flight``; past the cap the scheduler
  waits, and the wait counts as latency.

A failed or timed-out request is a row too, with its latency and its error. Rows whose intended
start falls in the first ``--warmup`` seconds are marked ``warmup = 1``.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Pool
from locust import FastHttpUser, events, task
from locust.exception import StopUser

RAW_COLUMNS = (
    "saga_id",
    "intended_start",
    "start",
    "end",
    "latency_ms",
    "status",
    "outcome",
    "reason",
    "error",
    "warmup",
)
OUTCOMES = ("committed", "compensated", "rejected")


class _Run:
    """Everything this Locust process knows about its run, set once from the command line."""

    workload = ""
    t0 = 0.0
    warmup_s = 0.0
    end: float = 0.0
    requests: Iterator[tuple[str, dict[str, Any]]] = iter(())
    writer: Any = None
    file: Any = None


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("accompanist bench")
    group.add_argument("--requests-file", required=True, help="JSONL of {saga_id, request}")
    group.add_argument("--raw-csv", required=True, help="where to write one row per request")
    group.add_argument("--workload", required=True)
    group.add_argument("--rate", type=float, default=10.0, help="open loop: arrivals per second")
    group.add_argument("--think-time", type=float, default=0.0, help="closed loop: seconds")
    group.add_argument("--warmup", type=float, default=0.0, help="seconds marked as warm-up")
    group.add_argument("--request-timeout", type=float, default=30.0)
    group.add_argument("--max-in-flight", type=int, default=500)
    group.add_argument("--arrival-seed", type=int, default=0)


def _cycle(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not items:
        raise SystemExit(f"{path}: no requests")
    for cycle in itertools.count():
        if cycle == 1:
            print(
                f"warning: {path} exhausted; re-using requests with new saga ids", file=sys.stderr
            )
        # Saga ids must stay unique: the gateway answers a re-posted id with the old outcome.
        suffix = f"-r{cycle}" if cycle else ""
        for item in items:
            yield f"{item['saga_id']}{suffix}", item["request"]


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    _Run.workload = opts.workload
    _Run.warmup_s = opts.warmup
    _Run.requests = _cycle(Path(opts.requests_file))
    for user in (ClosedLoop, OpenLoop):
        user.network_timeout = opts.request_timeout
        user.connection_timeout = opts.request_timeout
    OpenLoop.concurrency = opts.max_in_flight


@events.test_start.add_listener
def _test_start(environment: Any, **_: Any) -> None:
    if "temporalio" in sys.modules:
        raise RuntimeError("temporalio was imported into the Locust process (gevent-patched)")
    opts = environment.parsed_options
    _Run.t0 = time.time()
    _Run.end = _Run.t0 + (opts.run_time or 0)
    raw = Path(opts.raw_csv)
    raw.parent.mkdir(parents=True, exist_ok=True)
    _Run.file = raw.open("w", newline="")
    _Run.writer = csv.writer(_Run.file)
    _Run.writer.writerow(RAW_COLUMNS)


@events.quitting.add_listener
def _quitting(**_: Any) -> None:
    if _Run.file is not None:
        _Run.file.close()
        _Run.file = None


class _SagaUser(FastHttpUser):
    abstract = True

    def saga(self, intended_start: float) -> None:
        """Post one saga and record it; never raises for a failed request."""
        saga_id, request = next(_Run.requests)
        start = time.time()
        status, outcome, reason, error = 0, "", "", ""
        with self.client.post(
            f"/sagas/{_Run.workload}",
            json={"saga_id": saga_id, "request": request},
            name=f"/sagas/{_Run.workload}",
            catch_response=True,
        ) as resp:
            status = resp.status_code or 0
            # Connection errors and timeouts leave no status; the exception sits in one of two
            # places depending on where geventhttpclient gave up.
            failure = getattr(resp, "error", None) or resp.request_meta.get("exception")
            if status == 0:
                error = repr(failure) if failure is not None else "no response"
            elif status != 200:
                error = f"HTTP {status}: {(resp.text or '')[:200]}"
            else:
                try:
                    body = resp.json()
                    outcome, reason = body.get("outcome") or "", body.get("reason") or ""
                except (ValueError, AttributeError):
                    error = f"bad JSON: {(resp.text or '')[:200]}"
                if not error and outcome not in OUTCOMES:
                    error = f"unknown outcome {outcome!r}"
            if error:
                resp.failure(error)
            else:
                resp.success()
        end = time.time()
        if _Run.writer is not None:
            _Run.writer.writerow(
                (
                    saga_id,
                    f"{intended_start:.6f}",
                    f"{start:.6f}",
                    f"{end:.6f}",
                    f"{(end - intended_start) * 1000:.3f}",
                    status,
                    outcome,
                    reason,
                    error,
                    int(intended_start < _Run.t0 + _Run.warmup_s),
                )
            )


class ClosedLoop(_SagaUser):
    """N of these: send, wait for the outcome, think, repeat."""

    def wait_time(self) -> float:
        return self.environment.parsed_options.think_time

    @task
    def one_saga(self) -> None:
        self.saga(time.time())


class OpenLoop(_SagaUser):
    """Exactly one of these: the Poisson arrival scheduler."""

    fixed_count = 1

    @task
    def schedule(self) -> None:
        opts = self.environment.parsed_options
        rng = random.Random(opts.arrival_seed)
        pool = Pool(opts.max_in_flight)
        intended = time.time()
        while intended < _Run.end:
            delay = intended - time.time()
            if delay > 0:
                gevent.sleep(delay)
            # Blocks while max_in_flight requests are outstanding; the request still carries its
            # intended start, so the wait is counted.
            pool.spawn(self.saga, intended)
            intended += rng.expovariate(opts.rate)
        pool.join(timeout=opts.request_timeout + 1.0)
        raise StopUser()
