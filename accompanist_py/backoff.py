"""Capped exponential backoff, shared by service-call retries and outbox resends.

One policy for both, and the same numbers as the Temporal baseline's retry policy, so that the
two systems detect and ride out failures alike.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays initial_s, initial_s*multiplier, ... capped at max_s."""

    initial_s: float = 0.05
    max_s: float = 1.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1 = the first retry)."""
        return min(self.max_s, self.initial_s * self.multiplier ** max(0, attempt - 1))
