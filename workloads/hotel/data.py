"""The hotel catalogue: users, hotels, rooms per night, flights, balances, and the requests.

Names are fixed and rates and prices come from the seed, so `requests(seed, n)` never needs to
know how the services were seeded. `size` is the number of sagas the data absorbs: each
ordinary hotel has `size` rooms every night, each ordinary flight `size` seats, each ordinary
user money for `size` trips. Every saga books the cheapest hotel of its city, so even a city
that gets every request stays bookable. The traps, one per way a saga can end short of
committing:

    ghost user      (not a frontend user)       check_user 409 "unknown user"    -> rejected
    full city       (search lists no rooms)     nearby 409 "no availability"     -> rejected
    stale city      (search lists rooms that
                     the reservation service
                     no longer has)             reserve_room 409 "room gone"     -> compensated
    full flight     (no seats)                  book_seat 409 "flight full"      -> compensated
    broke user      (balance of one cent)       charge 409 "payment declined"    -> compensated

The request generator aims a chosen fraction of requests at the traps, in equal shares;
services seeded with abort_rate 0 turn every trap into an ordinary entity.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

CITIES = tuple(f"city-{i:02d}" for i in range(20))
FULL_CITIES = ("city-full-0", "city-full-1")
STALE_CITIES = ("city-stale-0", "city-stale-1")
HOTELS_PER_CITY = 4
NIGHTS = 28  # bookable nights 0 .. NIGHTS-1
MAX_STAY = 4
FLIGHTS = tuple(f"flight-{i:02d}" for i in range(40))
FULL_FLIGHTS = ("flight-full-0", "flight-full-1")
USERS = tuple(f"user-{i:03d}" for i in range(200))
GHOST_USERS = tuple(f"user-ghost-{i}" for i in range(5))
BROKE_USERS = tuple(f"user-broke-{i}" for i in range(5))
MIN_RATE, MAX_RATE = 6_000, 30_000  # cents per night
MIN_FARE, MAX_FARE = 5_000, 40_000  # cents per seat
BROKE_BALANCE = 1

TRAPS = ("unknown user", "no availability", "room gone", "flight full", "payment declined")


def hotels_of(city: str) -> tuple[str, ...]:
    return tuple(f"hotel-{city.removeprefix('city-')}-{j}" for j in range(HOTELS_PER_CITY))


@dataclass(frozen=True)
class Catalogue:
    """The initial data of every hotel-workload service."""

    users: tuple[str, ...]
    hotels: dict[str, tuple[str, int]]  # hotel -> (city, nightly rate)
    listed: dict[str, bool]  # what search believes: does the hotel have rooms?
    rooms: dict[str, int]  # hotel -> rooms per night, at the reservation service
    flights: dict[str, tuple[int, int]]  # flight -> (seats, fare)
    balances: dict[str, int]


def catalogue(seed: int, size: int, abort_rate: float) -> Catalogue:
    """The initial data for (seed, size); traps are ordinary entities when abort_rate is 0."""
    rng = random.Random(f"hotel-catalogue:{seed}")
    traps = abort_rate > 0
    hotels = {
        hotel: (city, rng.randint(MIN_RATE, MAX_RATE))
        for city in CITIES + FULL_CITIES + STALE_CITIES
        for hotel in hotels_of(city)
    }
    trip = MAX_STAY * MAX_RATE + MAX_FARE
    return Catalogue(
        users=USERS + BROKE_USERS + (() if traps else GHOST_USERS),
        hotels=hotels,
        listed={h: not (traps and city in FULL_CITIES) for h, (city, _) in hotels.items()},
        rooms={
            h: 0 if traps and city in FULL_CITIES + STALE_CITIES else size
            for h, (city, _) in hotels.items()
        },
        flights={
            f: (0 if traps and f in FULL_FLIGHTS else size, rng.randint(MIN_FARE, MAX_FARE))
            for f in FLIGHTS + FULL_FLIGHTS
        },
        balances={
            u: BROKE_BALANCE if traps and u in BROKE_USERS else size * trip
            for u in USERS + BROKE_USERS + GHOST_USERS
        },
    )


def requests(seed: int, n: int, abort_rate: float = 0.1) -> list[dict[str, Any]]:
    """`n` deterministic saga requests; round(n * abort_rate) of them hit a trap."""
    rng = random.Random(f"hotel-requests:{seed}")
    # Trap number j gets cause j % 5: every early exit and abort path runs in equal shares.
    doomed = {
        i: TRAPS[j % len(TRAPS)] for j, i in enumerate(rng.sample(range(n), round(n * abort_rate)))
    }
    out = []
    for i in range(n):
        nights = rng.randint(1, MAX_STAY)
        request = {
            "saga_id": f"hotel-{seed}-{i:06d}",
            "user": rng.choice(USERS),
            "city": rng.choice(CITIES),
            "in_night": rng.randrange(NIGHTS - nights + 1),
            "nights": nights,
            "flight": rng.choice(FLIGHTS),
        }
        trap = doomed.get(i)
        if trap == "unknown user":
            request["user"] = rng.choice(GHOST_USERS)
        elif trap == "no availability":
            request["city"] = rng.choice(FULL_CITIES)
        elif trap == "room gone":
            request["city"] = rng.choice(STALE_CITIES)
        elif trap == "flight full":
            request["flight"] = rng.choice(FULL_FLIGHTS)
        elif trap == "payment declined":
            request["user"] = rng.choice(BROKE_USERS)
        out.append(request)
    return out


def expected_outcome(request: dict[str, Any]) -> tuple[str, str | None]:
    """(outcome, reason) a request must end with on services seeded with traps."""
    if request["user"] in GHOST_USERS:
        return "rejected", "unknown user"
    if request["city"] in FULL_CITIES:
        return "rejected", "no availability"
    if request["city"] in STALE_CITIES:
        return "compensated", "room gone"
    if request["flight"] in FULL_FLIGHTS:
        return "compensated", "flight full"
    if request["user"] in BROKE_USERS:
        return "compensated", "payment declined"
    return "committed", None
