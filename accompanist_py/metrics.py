"""What a node counts, exported through `prometheus_client` for `GET /metrics`.

Every node has its own `CollectorRegistry`, never the process-wide default one: tests and
`testing.run_local` run several nodes in one process, and each must show its own figures. The
registry holds the process and platform collectors too, so that one scrape tells all about a
sidecar. Counters on the message path are children bound once per role, or per (role, peer)
on first use, so that counting a message costs a dict lookup and an increment, not a label
lookup. Figures kept elsewhere (the store's queue and commits, the outbox's lanes, the
listener's connections, the timeline's counts) are read when scraped, by `Reading`s. Every
metric is listed in docs/contracts.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = CONTENT_TYPE_LATEST  # what `render` produces
P = "accompanist"
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
COMMIT_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

Read = Callable[[], float] | Callable[[], dict[str, float]]


class Reading:
    """A figure read when scraped: `read()` gives a value, or, with `label`, {label value:
    value}. A gauge unless `counter` (then its samples get the `_total` suffix)."""

    def __init__(
        self, name: str, help_text: str, read: Read, label: str | None = None, counter: bool = False
    ) -> None:
        self.name, self.help, self.read, self.label = name, help_text, read, label
        self.family = CounterMetricFamily if counter else GaugeMetricFamily

    def collect(self) -> Iterable[Metric]:
        labels = [self.label] if self.label else None
        family = self.family(self.name, self.help, labels=labels)
        if self.label is None:
            family.add_metric([], self.read())  # type: ignore[arg-type]
        else:
            values: dict[str, float] = self.read()  # type: ignore[assignment]
            for key, value in sorted(values.items()):
                family.add_metric([key], value)
        yield family


@dataclass(slots=True)
class RoleMetrics:
    """The counters of one role hosted here, bound to its label."""

    sessions_started: Counter
    sessions_completed: Counter
    sessions_compensated: Counter
    sessions_failed: Counter
    sessions_recovered: Counter
    sessions_refused: Counter
    sessions_broken: Counter
    compensation_retries: Counter
    session_duration: Histogram


@dataclass(slots=True)
class LinkMetrics:
    """The message counters between a role hosted here and one peer role."""

    sent: Counter
    received: Counter
    duplicate: Counter
    rejected: Counter
    refused: Counter


@dataclass(slots=True)
class CallMetrics:
    """The service-call figures of one role and operation."""

    calls: Counter
    attempts: Counter
    retries: Counter
    seconds: Histogram


class NodeMetrics:
    """Everything a node counts, in its own registry."""

    def __init__(self, roles: Sequence[str] = ()) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        reg = self.registry

        def counter(name: str, help_text: str, *labels: str) -> Counter:
            return Counter(f"{P}_{name}", help_text, labels, registry=reg)

        role = ("role",)
        link = ("role", "peer")
        call = ("role", "operation")
        self._role = (
            counter("sessions_started", "Sessions started here.", *role),
            counter("sessions_completed", "Sessions completed.", *role),
            counter("sessions_compensated", "Sessions aborted for a business reason.", *role),
            counter("sessions_failed", "Sessions failed by errors.", *role),
            counter("sessions_recovered", "Unfinished sessions replayed after a restart.", *role),
            counter(
                "sessions_refused",
                "New sessions refused by admission control (a client's 503, a peer's retry).",
                *role,
            ),
            counter(
                "sessions_broken", "Sessions ended by an internal error of the runtime.", *role
            ),
            counter(
                "compensation_retries", "Compensation calls that failed and were retried.", *role
            ),
            Histogram(
                f"{P}_session_duration_seconds",
                "Duration of a session's part at a role.",
                role,
                registry=reg,
                buckets=SECONDS,
            ),
        )
        self._link = (
            counter("messages_sent", "Messages acknowledged by the peer.", *link),
            counter("messages_received", "Messages received (duplicates excluded).", *link),
            counter("messages_duplicate", "Duplicate messages received and dropped.", *link),
            counter("messages_rejected", "Messages the peer refused for good.", *link),
            counter("messages_refused", "Messages refused here (malformed or not allowed).", *link),
        )
        self._call = (
            counter("service_calls", "Calls to the local service (compensations included).", *call),
            counter(
                "service_call_attempts", "Attempts those calls took (retries included).", *call
            ),
            counter("service_call_retries", "Transient failures retried within a call.", *call),
            Histogram(
                f"{P}_service_call_seconds",
                "Latency of a call to the local service, its retries included.",
                call,
                registry=reg,
                buckets=SECONDS,
            ),
        )
        self.batches_deferred = counter(
            "batches_deferred",
            "Peer batches told to come back later because the store's queue was full.",
        )
        self._commit_rows: Histogram | None = None
        self._commit_seconds: Histogram | None = None
        self._roles: dict[str, RoleMetrics] = {r: self._bind_role(r) for r in roles}
        self._links: dict[tuple[str, str], LinkMetrics] = {}
        self._calls: dict[tuple[str, str], CallMetrics] = {}

    def _bind_role(self, role: str) -> RoleMetrics:
        return RoleMetrics(*(m.labels(role) for m in self._role))

    def of(self, role: str) -> RoleMetrics:
        """The counters of `role` (a role hosted here; bound when the node was made)."""
        bound = self._roles.get(role)
        if bound is None:
            bound = self._roles[role] = self._bind_role(role)
        return bound

    def link(self, role: str, peer: str) -> LinkMetrics:
        """The message counters between `role`, hosted here, and `peer`: bound on first use.

        Pass only roles of a loaded choreography, so that the labels stay few."""
        bound = self._links.get((role, peer))
        if bound is None:
            bound = self._links[role, peer] = LinkMetrics(
                *(m.labels(role, peer) for m in self._link)
            )
        return bound

    def call_ended(self, role: str, operation: str, seconds: float, attempts: int) -> None:
        """A call to the service ended (whatever its outcome) after `attempts` attempts."""
        bound = self._calls.get((role, operation))
        if bound is None:
            children = (m.labels(role, operation) for m in self._call)
            bound = self._calls[role, operation] = CallMetrics(*children)
        bound.calls.inc()
        bound.attempts.inc(attempts)
        if attempts > 1:
            bound.retries.inc(attempts - 1)
        bound.seconds.observe(seconds)

    def committed(self, rows: int, seconds: float) -> None:
        """The store's writer committed `rows` queued writes in one transaction (its thread)."""
        assert self._commit_rows is not None and self._commit_seconds is not None
        self._commit_rows.observe(rows)
        self._commit_seconds.observe(seconds)

    def watch_commits(self) -> Callable[[int, float], None]:
        """Export the group commits of a durable store; returns the hook its writer calls."""
        self._commit_rows = Histogram(
            f"{P}_store_commit_rows",
            "Writes per group commit of the store (its _count: the commits made).",
            registry=self.registry,
            buckets=COMMIT_ROWS,
        )
        self._commit_seconds = Histogram(
            f"{P}_store_commit_seconds",
            "Duration of one group commit (the transaction, its fsync included).",
            registry=self.registry,
            buckets=COMMIT_SECONDS,
        )
        return self.committed

    def add(self, reading: Reading) -> None:
        """Export a figure kept elsewhere, read when scraped."""
        self.registry.register(reading)

    def total(self, sample: str) -> float:
        """The sum of a sample over all its labels, e.g. `accompanist_messages_sent_total`."""
        return sum(
            s.value
            for family in self.registry.collect()
            for s in family.samples
            if s.name == sample
        )

    def render(self) -> bytes:
        """The registry in Prometheus text format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "LinkMetrics", "NodeMetrics", "Reading", "RoleMetrics"]
