"""Counters and a latency histogram, rendered as Prometheus text for `GET /metrics`."""

from __future__ import annotations

import bisect
from collections.abc import Callable


class Counter:
    """A monotonically increasing count."""

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help, self.value = name, help_text, 0

    def inc(self, n: int = 1) -> None:
        self.value += n

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} counter",
            f"{self.name} {self.value}",
        ]


class Histogram:
    """Cumulative-bucket histogram of durations in seconds."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.counts = [0] * (len(self.BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.BUCKETS, self.counts, strict=False):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {running}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.n}')
        lines += [f"{self.name}_sum {self.total}", f"{self.name}_count {self.n}"]
        return lines


class Gauge:
    """A value read when rendered; with `label`, `read` gives {label value: value}."""

    def __init__(
        self,
        name: str,
        help_text: str,
        read: Callable[[], float] | Callable[[], dict[str, float]],
        label: str | None = None,
    ) -> None:
        self.name, self.help, self.read, self.label = name, help_text, read, label

    def render(self) -> list[str]:
        head = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        if self.label is None:
            return [*head, f"{self.name} {self.read()}"]
        values: dict[str, float] = self.read()  # type: ignore[assignment]
        return head + [
            f'{self.name}{{{self.label}="{key}"}} {value}' for key, value in sorted(values.items())
        ]


class NodeMetrics:
    """Everything a node counts."""

    def __init__(self) -> None:
        p = "accompanist"
        self.sessions_started = Counter(f"{p}_sessions_started_total", "Sessions started here.")
        self.sessions_completed = Counter(f"{p}_sessions_completed_total", "Sessions completed.")
        self.sessions_compensated = Counter(
            f"{p}_sessions_compensated_total", "Sessions aborted for a business reason."
        )
        self.sessions_failed = Counter(f"{p}_sessions_failed_total", "Sessions failed by errors.")
        self.sessions_recovered = Counter(
            f"{p}_sessions_recovered_total", "Unfinished sessions replayed after a restart."
        )
        self.messages_sent = Counter(f"{p}_messages_sent_total", "Messages acknowledged by peers.")
        self.messages_received = Counter(
            f"{p}_messages_received_total", "Messages received (duplicates excluded)."
        )
        self.messages_duplicate = Counter(
            f"{p}_messages_duplicate_total", "Duplicate messages received and dropped."
        )
        self.messages_rejected = Counter(
            f"{p}_messages_rejected_total", "Messages a peer refused for good."
        )
        self.messages_refused = Counter(
            f"{p}_messages_refused_total", "Messages refused here (malformed or not allowed)."
        )
        self.service_calls = Counter(f"{p}_service_calls_total", "Calls to the local service.")
        self.compensation_retries = Counter(
            f"{p}_compensation_retries_total", "Compensation calls that failed and were retried."
        )
        self.sessions_refused = Counter(
            f"{p}_sessions_refused_total",
            "New sessions refused by admission control (a client's 503, a peer's retry).",
        )
        self.batches_deferred = Counter(
            f"{p}_batches_deferred_total",
            "Peer batches told to come back later because the store's queue was full.",
        )
        self.sessions_broken = Counter(
            f"{p}_sessions_broken_total", "Sessions ended by an internal error of the runtime."
        )
        self.session_duration = Histogram(
            f"{p}_session_duration_seconds", "Duration of a session's part at a role."
        )
        self.gauges: list[Gauge] = []

    def render(self) -> str:
        items = [v for v in vars(self).values() if isinstance(v, Counter | Histogram)]
        lines: list[str] = []
        for item in [*items, *self.gauges]:
            lines += item.render()
        return "\n".join(lines) + "\n"
