"""Locust load for one saga workload: closed or open loop, one raw CSV row per request.

Run by :func:`bench.load.run_locust` as ``locust -f this-file --headless ... ClosedLoop|OpenLoop``.
Every user posts ``{"saga_id", "request"}`` to the gateway's ``POST /sagas/{workload}``, taking
requests in order from a JSONL file the harness wrote beforehand. This file imports only the
standard library, gevent, Locust and ``workloads.outcomes`` (which imports nothing): Locust
monkey-patches with gevent, and temporalio (which a workload module could drag in) must never be
imported into this process.

- ``ClosedLoop``: N users, each sends a saga, waits for its outcome, thinks, sends the next.
- ``OpenLoop``: one scheduler spawns each request at its intended start, ``--rate`` a second:
  evenly spaced (``--arrivals fixed``, the default, so that the offered rate is exactly the
  rate asked for) or Poisson (``--arrivals poisson``). Latency is measured from that intended
  start, so a stalled system (or a saturated client) shows up as latency instead of as silently
  fewer requests (coordinated omission). In-flight sagas are capped by ``--max-in-flight``;
  past the cap the scheduler waits for a slot, and the wait counts as latency (it eats into
  the saga's deadline); an arrival the cap kept from being sent by the end of the run is an
  error.

Every saga has one deadline, ``--request-timeout`` seconds after its intended start, retries
included. A post that gets no answer (the connection is refused, reset or cut off) or a 503
(the gateway says the system is unreachable or restarting) is posted again with the *same saga
id*, after ``--retry-initial`` seconds doubling (``--retry-multiplier``) up to ``--retry-max``,
while the deadline allows: the same policy for every system (the runtime's backoff), and safe
because the gateway runs a saga id once whatever the number of posts. Any other answer is
final: an outcome, a 4xx, or a 500 (the saga failed for good, with the reason).

Every scheduled saga gets exactly one row, whatever its number of ``attempts``; its latency runs
from the intended start to the last answer, or to the moment it was given up: at its deadline
(``no answer within the request timeout``), at the end of the run for an arrival the in-flight
cap kept from being sent (``attempts`` 0, ``start`` empty), or when Locust quits for a saga
still unfinished then (``no answer by the end of the run``). Rows whose intended start falls in
the first ``--warmup`` seconds are marked ``warmup = 1``. With ``--account-json`` the process
writes there, when it quits, how many sagas it scheduled and rows it wrote (the harness checks
that they match) and its own CPU seconds: the load generator's cost, kept apart from the
system's.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Pool
from locust import FastHttpUser, events, task
from locust.exception import StopUser

from workloads.outcomes import OUTCOMES

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
    "attempts",
)
# Answers worth posting again: none at all (status 0), or the gateway's "unreachable, restarting".
TRANSIENT_STATUSES = frozenset({0, 503})
NO_ANSWER_BY_THE_END = "no answer by the end of the run"


def _no_answer_in_time() -> str:
    return f"no answer within the request timeout ({_Run.timeout_s:g} s)"


def _not_sent(until: str) -> str:
    return f"not sent: {_Run.max_in_flight} sagas (--max-in-flight) in flight until {until}"


@dataclass
class _Arrival:
    """One scheduled saga, owed exactly one row from the moment it is scheduled."""

    saga_id: str
    request: dict[str, Any]
    intended: float
    deadline: float
    start: float | None = None  # its first post; None while unsent
    attempts: int = 0


class _Run:
    """Everything this Locust process knows about its run, set once from the command line."""

    workload = ""
    t0 = 0.0
    warmup_s = 0.0
    timeout_s = 30.0
    max_in_flight = 500
    end: float = 0.0
    requests: Iterator[tuple[str, dict[str, Any]]] = iter(())
    writer: Any = None
    file: Any = None
    pending: dict[str, _Arrival] = {}  # scheduled, no row yet
    scheduled = 0
    rows = 0
    stopping = False  # Locust has begun to stop the users: no new closed-loop saga


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("accompanist bench")
    group.add_argument("--requests-file", required=True, help="JSONL of {saga_id, request}")
    group.add_argument("--raw-csv", required=True, help="where to write one row per saga")
    group.add_argument("--workload", required=True)
    group.add_argument("--rate", type=float, default=10.0, help="open loop: arrivals per second")
    group.add_argument("--think-time", type=float, default=0.0, help="closed loop: seconds")
    group.add_argument("--warmup", type=float, default=0.0, help="seconds marked as warm-up")
    group.add_argument("--request-timeout", type=float, default=30.0, help="one saga's deadline")
    group.add_argument("--max-in-flight", type=int, default=500)
    group.add_argument("--arrival-seed", type=int, default=0)
    group.add_argument("--arrivals", choices=("fixed", "poisson"), default="fixed")
    group.add_argument(
        "--account-json", default="", help="where to write sagas scheduled, rows, CPU seconds"
    )
    group.add_argument("--retry-initial", type=float, default=0.05, help="first retry delay, s")
    group.add_argument("--retry-max", type=float, default=1.0, help="longest retry delay, s")
    group.add_argument("--retry-multiplier", type=float, default=2.0)


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


def _arrive(intended: float) -> _Arrival:
    """The next request as a saga due at `intended`; from now on it is owed one row."""
    saga_id, request = next(_Run.requests)
    arrival = _Arrival(saga_id, request, intended, deadline=intended + _Run.timeout_s)
    _Run.pending[saga_id] = arrival
    _Run.scheduled += 1
    return arrival


def _record(
    arrival: _Arrival,
    status: int = 0,
    outcome: str = "",
    reason: str = "",
    error: str = "",
) -> None:
    """Write the row of `arrival`, ending now, unless it has one already (then it was given up
    when Locust quit, and what it hears later is too late to count)."""
    if _Run.pending.pop(arrival.saga_id, None) is None or _Run.writer is None:
        return
    end = time.time()
    _Run.writer.writerow(
        (
            arrival.saga_id,
            f"{arrival.intended:.6f}",
            "" if arrival.start is None else f"{arrival.start:.6f}",
            f"{end:.6f}",
            f"{(end - arrival.intended) * 1000:.3f}",
            status,
            outcome,
            reason,
            error,
            int(arrival.intended < _Run.t0 + _Run.warmup_s),
            arrival.attempts,
        )
    )
    _Run.rows += 1


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    _Run.workload = opts.workload
    _Run.warmup_s = opts.warmup
    _Run.timeout_s = opts.request_timeout
    _Run.max_in_flight = opts.max_in_flight
    _Run.requests = _cycle(Path(opts.requests_file))
    # A backstop only: every post is cut off at its saga's deadline (_SagaUser._post).
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


@events.test_stopping.add_listener
def _test_stopping(**_: Any) -> None:
    # Locust kills a user that is thinking; one that wakes up as the kill is delivered must not
    # start a saga that the kill would then cut off.
    _Run.stopping = True


@events.quitting.add_listener
def _quitting(environment: Any = None, **_: Any) -> None:
    # Sagas still unfinished now (Locust stopped waiting for them) are errors, not omissions.
    for arrival in list(_Run.pending.values()):
        _record(arrival, error=NO_ANSWER_BY_THE_END)
    if _Run.file is not None:
        _Run.file.close()
        _Run.file = _Run.writer = None
    opts = getattr(environment, "parsed_options", None)
    if opts is not None and opts.account_json:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        account = {
            "scheduled": _Run.scheduled,
            "rows": _Run.rows,
            "cpu_user_s": usage.ru_utime,
            "cpu_system_s": usage.ru_stime,
        }
        Path(opts.account_json).write_text(json.dumps(account))


class _SagaUser(FastHttpUser):
    abstract = True

    def saga(self, arrival: _Arrival) -> None:
        """Post one saga until it has a final answer or its deadline passes, and record it;
        never raises for a failed request."""
        opts = self.environment.parsed_options
        status, outcome, reason, error = 0, "", "", ""
        while (remaining := arrival.deadline - time.time()) > 0:
            arrival.start = arrival.start or time.time()
            arrival.attempts += 1
            status, outcome, reason, error = self._post(arrival, remaining)
            delay = min(
                opts.retry_max, opts.retry_initial * opts.retry_multiplier ** (arrival.attempts - 1)
            )
            if not error or status not in TRANSIENT_STATUSES:
                break
            if time.time() + delay >= arrival.deadline:
                break
            gevent.sleep(delay)
        if not arrival.attempts:
            error = _not_sent("its deadline")
        _record(arrival, status, outcome, reason, error)

    def _post(self, arrival: _Arrival, timeout_s: float) -> tuple[int, str, str, str]:
        """One attempt, cut off after `timeout_s`: (status, outcome, reason, error), status 0
        when nothing answered."""
        status, outcome, reason, error = 0, "", "", ""
        timer = gevent.Timeout(timeout_s)
        timer.start()
        try:
            with self.client.post(
                f"/sagas/{_Run.workload}",
                json={"saga_id": arrival.saga_id, "request": arrival.request},
                name=f"/sagas/{_Run.workload}",
                catch_response=True,
            ) as resp:
                status = resp.status_code or 0
                # Connection errors and timeouts leave no status; the exception sits in one of
                # two places depending on where geventhttpclient gave up (the deadline's timer
                # comes back wrapped in one of them).
                failure = getattr(resp, "error", None) or resp.request_meta.get("exception")
                if status == 0 and not timer.pending:
                    error = _no_answer_in_time()
                elif status == 0:
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
        except gevent.Timeout as fired:
            if fired is not timer:
                raise
            return 0, "", "", _no_answer_in_time()
        finally:
            timer.close()
        return status, outcome, reason, error


class ClosedLoop(_SagaUser):
    """N of these: send, wait for the outcome, think, repeat."""

    def wait_time(self) -> float:
        return self.environment.parsed_options.think_time

    @task
    def one_saga(self) -> None:
        if _Run.stopping:
            raise StopUser()
        self.saga(_arrive(time.time()))


def _intended_starts(first: float, end: float, opts: Any) -> Iterator[float]:
    """The open loop's arrival times from `first` until `end`: evenly spaced, or Poisson."""
    if opts.arrivals == "fixed":
        # Multiplied, never summed, so that the gaps stay exact over a long run.
        yield from itertools.takewhile(
            lambda t: t < end, (first + i / opts.rate for i in itertools.count())
        )
        return
    rng = random.Random(opts.arrival_seed)
    intended = first
    while intended < end:
        yield intended
        intended += rng.expovariate(opts.rate)


class OpenLoop(_SagaUser):
    """Exactly one of these: the arrival scheduler."""

    fixed_count = 1

    @task
    def schedule(self) -> None:
        opts = self.environment.parsed_options
        # Every arrival of the run is scheduled (and owed a row) up front.
        arrivals = [_arrive(t) for t in _intended_starts(time.time(), _Run.end, opts)]
        pool = Pool(opts.max_in_flight)
        for i, arrival in enumerate(arrivals):
            gevent.sleep(max(0.0, arrival.intended - time.time()))
            # Past the cap, wait for a slot: the request keeps its intended start, so the wait
            # counts. A slot frees by the deadline of the sagas in flight, all due before this
            # one, so only the end of the run bounds the wait.
            if pool.wait_available(timeout=max(0.0, _Run.end - time.time())):
                pool.spawn(self.saga, arrival)
                continue
            for unsent in arrivals[i:]:
                _record(unsent, error=_not_sent("the end of the run"))
            break
        pool.join(timeout=opts.request_timeout + 1.0)
        raise StopUser()
