"""The warehouse catalogue: seeded stock, prices and balances, and the requests that use them.

Names are fixed and prices come from the seed, so `requests(seed, n)` never needs to know how
the services were seeded. `size` is the number of sagas the data absorbs: every ordinary item
holds enough stock, and every ordinary customer enough money, for `size` sagas all hitting it.
Aborts come only from deliberate traps: sold-out items (reserve aborts "out of stock") and
broke customers (charge aborts "insufficient balance", after a reservation that must then be
released). The request generator aims a chosen fraction of requests at the traps, half of each
kind; services seeded with abort_rate 0 stock the traps like ordinary entities.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

ITEMS = tuple(f"item-{i:03d}" for i in range(100))
SOLD_OUT_ITEMS = tuple(f"item-sold-out-{i}" for i in range(5))
CUSTOMERS = tuple(f"customer-{i:03d}" for i in range(200))
BROKE_CUSTOMERS = tuple(f"customer-broke-{i}" for i in range(5))
MAX_QUANTITY = 3
MIN_PRICE, MAX_PRICE = 100, 5_000  # cents
BROKE_BALANCE = 1  # less than any price: every charge of a broke customer aborts


@dataclass(frozen=True)
class Catalogue:
    """The initial data of every warehouse-workload service."""

    prices: dict[str, int]
    stock: dict[str, int]
    balances: dict[str, int]


def catalogue(seed: int, size: int, abort_rate: float) -> Catalogue:
    """The initial data for (seed, size); traps are stocked normally when abort_rate is 0."""
    rng = random.Random(f"warehouse-catalogue:{seed}")
    items = ITEMS + SOLD_OUT_ITEMS
    traps = abort_rate > 0
    plenty = size * MAX_QUANTITY
    return Catalogue(
        prices={item: rng.randint(MIN_PRICE, MAX_PRICE) for item in items},
        stock={item: 0 if traps and item in SOLD_OUT_ITEMS else plenty for item in items},
        balances={
            customer: BROKE_BALANCE
            if traps and customer in BROKE_CUSTOMERS
            else size * MAX_QUANTITY * MAX_PRICE
            for customer in CUSTOMERS + BROKE_CUSTOMERS
        },
    )


def points_for(amount: int) -> int:
    """Loyalty points for a charge: one per whole currency unit (amounts are in cents)."""
    return amount // 100


def requests(seed: int, n: int, abort_rate: float = 0.1) -> list[dict[str, Any]]:
    """`n` deterministic saga requests; round(n * abort_rate) of them hit a trap."""
    rng = random.Random(f"warehouse-requests:{seed}")
    # Trap number j gets cause j % 2: both abort paths run, in equal shares, in every batch.
    doomed = {i: j % 2 for j, i in enumerate(rng.sample(range(n), round(n * abort_rate)))}
    out = []
    for i in range(n):
        request = {
            "saga_id": f"warehouse-{seed}-{i:06d}",
            "customer": rng.choice(CUSTOMERS),
            "item": rng.choice(ITEMS),
            "quantity": rng.randint(1, MAX_QUANTITY),
        }
        if i in doomed:
            if doomed[i] == 0:
                request["item"] = rng.choice(SOLD_OUT_ITEMS)
            else:
                request["customer"] = rng.choice(BROKE_CUSTOMERS)
        out.append(request)
    return out


def expected_outcome(request: dict[str, Any]) -> tuple[str, str | None]:
    """(outcome, reason) a request must end with on services seeded with traps."""
    if request["item"] in SOLD_OUT_ITEMS:
        return "compensated", "out of stock"
    if request["customer"] in BROKE_CUSTOMERS:
        return "compensated", "insufficient balance"
    return "committed", None
