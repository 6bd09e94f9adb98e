"""The hotel saga end to end against real services, and its consistency checker."""

from __future__ import annotations

import json
from collections import Counter

from workloads.consistency import fetch_states
from workloads.hotel import checker
from workloads.hotel.data import TRAPS, expected_outcome, requests
from workloads.hotel.spec import STEPS
from workloads.launch import running_services_sync
from workloads.saga import run_direct


def test_requests_are_deterministic_and_mix_every_abort_cause():
    batch = requests(7, 1000, 0.1)
    assert batch == requests(7, 1000, 0.1)
    assert len({r["saga_id"] for r in batch}) == 1000
    reasons = Counter(expected_outcome(r)[1] for r in batch)
    assert reasons == {None: 900, **dict.fromkeys(TRAPS, 20)}
    assert all(expected_outcome(r)[0] == "committed" for r in requests(7, 200, 0.0))


async def _run_all(batch, urls, session) -> dict[str, dict]:
    return {r["saga_id"]: await run_direct(STEPS, r, urls, session) for r in batch}


async def test_every_saga_ends_as_its_trap_says_and_the_checker_agrees(fresh_hotel, session):
    batch = requests(2, 50, 0.3)
    results = await _run_all(batch, fresh_hotel, session)
    for request in batch:
        result = results[request["saga_id"]]
        assert (result["outcome"], result["reason"]) == expected_outcome(request)
    sent = {k: v["outcome"] for k, v in results.items()}
    report = checker.check(fetch_states(fresh_hotel), None, None, sent)
    assert report.ok, report.summary()
    assert (report.committed, report.compensated, report.rejected) == (35, 9, 6)


async def test_a_full_hotel_night_aborts_the_next_saga_with_room_gone(tmp_path, session):
    batch = requests(3, 3, 0.0)
    for request in batch:
        request.update(city="city-00", in_night=5, nights=2, flight="flight-00")
    with running_services_sync("hotel", tmp_path, seed=3, size=2) as urls:
        results = await _run_all(batch, urls, session)
        outcomes = [
            (results[r["saga_id"]]["outcome"], results[r["saga_id"]]["reason"]) for r in batch
        ]
        assert outcomes == [("committed", None), ("committed", None), ("compensated", "room gone")]
        states = fetch_states(urls)
    report = checker.check(states, None, None, {k: v["outcome"] for k, v in results.items()})
    assert report.ok, report.summary()

    overbooked = json.loads(json.dumps(states))
    room = results[batch[0]["saga_id"]]["results"]["reserve_room"]
    overbooked["reservation"]["slots"][f"{room['hotel']}@5"]["booked"] += 1
    invariants = {v.invariant for v in checker.check(overbooked).violations}
    assert invariants == {
        "reservation capacity never exceeded",
        "reservation booked = active bookings",
    }


async def test_checker_flags_a_charge_that_disagrees_and_a_false_rejection(fresh_hotel, session):
    request = requests(4, 1, 0.0)[0]
    sid = request["saga_id"]
    await run_direct(STEPS, request, fresh_hotel, session)
    clean = fetch_states(fresh_hotel)
    assert checker.check(clean, None, None, {sid: "committed"}).ok

    tampered = json.loads(json.dumps(clean))
    tampered["payment"]["charges"][0]["amount"] += 1
    invariants = {v.invariant for v in checker.check(tampered).violations}
    assert invariants == {"committed saga agrees", "money conserved"}

    report = checker.check(clean, None, None, {sid: "rejected"})
    assert [v.invariant for v in report.violations] == ["client outcome matches effects"]
