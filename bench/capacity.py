"""Capacity: when a system stops keeping up, and when a measurement is of contention.

An open-loop *step* offers a fixed rate and records what came back. Three verdicts are made
here, as pure functions of a step, so that the sweep, the analysis and the report use the same
numbers:

- **stop** (:func:`stop_reasons`): the capacity sweep stops raising a system's rate once its
  p99 passes 1 s, more than 1 % of its requests fail, or it completes less than 95 % of the
  offered rate.
- **sustainable** (:func:`is_sustainable`, :func:`sustainable_rps`): a rate is sustainable when
  p99 is under 1 s, no request failed and at least 95 % of the offered rate completed; a
  system's *sustainable throughput* is the highest rate it was offered at which that step and
  every lower one were sustainable (a clean step above an unsustainable one is luck, not
  capacity).
- **saturated** (:func:`saturation_reasons`): a cell whose latency measures queueing for CPU
  rather than the system: it trips the stop rule, or the system's own processes (services,
  sidecars or workers, Temporal server, gateway; not Locust, not the latency proxy) averaged
  70 % or more of the machine's cores over the load (1.4 of 2 cores: the load generator and the
  proxy then compete for the rest). In a crash scenario the crashes, not the load, cause the
  tail, the failures and the backlog (a crash near the end of the load leaves sagas to finish
  after it), so only the CPU criterion counts there. A saturated cell is flagged wherever it
  appears and never yields a bare latency ratio.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

P99_LIMIT_MS = 1000.0
ERROR_LIMIT = 0.01
ACHIEVED_LIMIT = 0.95
CPU_LIMIT = 0.70


@dataclass(frozen=True)
class Step:
    """What one cell (or the pooled repetitions of one) delivered.

    ``offered_rps`` is NaN for a closed loop (it offers no rate); ``cpu_cores`` is the system's
    CPU-seconds per second of load, NaN when unknown.
    """

    offered_rps: float
    requests: int
    errors: int
    p99_ms: float
    achieved_rps: float
    cpu_cores: float = math.nan
    crashes: bool = False
    # A count of completions in a window is exact only to within one saga at its edges (which
    # side of the edge the first and last ends fall): one saga per repetition's window, per
    # second. Below it, a shortfall is counting, not falling behind.
    count_slack_rps: float = 0.0

    @property
    def error_fraction(self) -> float:
        return self.errors / self.requests if self.requests else 1.0

    @property
    def achieved_fraction(self) -> float:
        """Completions over the offered rate (NaN for a closed loop)."""
        return self.achieved_rps / self.offered_rps if self.offered_rps > 0 else math.nan

    @property
    def falls_behind(self) -> bool:
        """Whether it completed less than `ACHIEVED_LIMIT` of the offered rate, by more than
        the count's slack (False for a closed loop)."""
        return self.achieved_rps + self.count_slack_rps < ACHIEVED_LIMIT * self.offered_rps


def stop_reasons(step: Step) -> list[str]:
    """Why the sweep stops raising this system's rate after `step` (empty: go on).

    A step without any request stops the sweep too: nothing came back to judge.
    """
    if step.requests == 0:
        return ["no requests measured"]
    reasons = []
    if not step.p99_ms <= P99_LIMIT_MS:  # NaN stops too
        reasons.append(f"p99 {step.p99_ms:.0f} ms > {P99_LIMIT_MS:.0f} ms")
    if step.error_fraction > ERROR_LIMIT:
        reasons.append(f"errors {step.error_fraction:.1%} > {ERROR_LIMIT:.0%}")
    if step.falls_behind:
        reasons.append(
            f"achieved {step.achieved_rps:.1f}/s of {step.offered_rps:g}/s offered "
            f"({step.achieved_fraction:.1%} < {ACHIEVED_LIMIT:.0%})"
        )
    return reasons


def is_sustainable(step: Step) -> bool:
    """p99 under 1 s, no failed request, and at least 95 % of the offered rate achieved."""
    return (
        step.requests > 0
        and step.p99_ms < P99_LIMIT_MS
        and step.errors == 0
        and not step.falls_behind
        and step.offered_rps > 0
    )


def sustainable_rps(steps: Iterable[Step]) -> float:
    """The highest offered rate of `steps` below which every step (it included) was
    sustainable; NaN when the lowest is not."""
    highest = math.nan
    for step in sorted(steps, key=lambda s: s.offered_rps):
        if not is_sustainable(step):
            break
        highest = step.offered_rps
    return highest


def saturation_reasons(step: Step, machine_cores: int) -> list[str]:
    """Why `step`'s latency measures contention rather than the system (empty: it does not)."""
    reasons = [] if step.crashes else stop_reasons(step)
    if step.cpu_cores >= CPU_LIMIT * machine_cores:
        reasons.append(
            f"system CPU {step.cpu_cores:.2f} of {machine_cores} cores (>= {CPU_LIMIT:.0%})"
        )
    return reasons
