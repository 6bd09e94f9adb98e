"""Seed data of the chain saga, and the requests that use it.

A request is a parcel and its weight. The only abort is a deliberate trap: each stage is seeded
with parcels it refuses ("blocked"), and the request generator for a chain of N stages aims
round(n * abort_rate) requests at parcels blocked at the last stage, so every earlier stage has
a stamp to compensate. Services seeded with abort_rate 0 block nothing.
"""

from __future__ import annotations

import random
from typing import Any

from workloads.chain.spec import stage
from workloads.saga import COMMITTED, COMPENSATED

PARCELS = tuple(f"parcel-{i:04d}" for i in range(1000))
MAX_WEIGHT = 20
BLOCKED = "blocked"


def blocked_at(k: int) -> tuple[str, ...]:
    """The parcels the k-th stage refuses (when seeded with a non-zero abort rate)."""
    return tuple(f"parcel-blocked-at-{stage(k)}-{i}" for i in range(3))


def requests(stages: int, seed: int, n: int, abort_rate: float = 0.1) -> list[dict[str, Any]]:
    """`n` deterministic requests for a chain of `stages`; round(n * abort_rate) are trapped."""
    rng = random.Random(f"chain{stages}-requests:{seed}")
    doomed = set(rng.sample(range(n), round(n * abort_rate)))
    out = []
    for i in range(n):
        parcel = rng.choice(blocked_at(stages)) if i in doomed else rng.choice(PARCELS)
        out.append(
            {
                "saga_id": f"chain{stages}-{seed}-{i:06d}",
                "parcel": parcel,
                "weight": rng.randint(1, MAX_WEIGHT),
            }
        )
    return out


def expected_outcome(request: dict[str, Any], stages: int) -> tuple[str, str | None]:
    """(outcome, reason) a request must end with on services seeded with traps."""
    if request["parcel"] in blocked_at(stages):
        return COMPENSATED, BLOCKED
    return COMMITTED, None
