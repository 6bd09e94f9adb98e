"""The warehouse saga end to end against real services, and its consistency checker."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from collections import Counter

from workloads.consistency import fetch_states
from workloads.launch import running_services_sync
from workloads.saga import call, idempotency_key, run_direct, undo_key, undo_payload
from workloads.warehouse import checker
from workloads.warehouse.data import expected_outcome, requests
from workloads.warehouse.spec import STEPS


def test_requests_are_deterministic_and_abort_at_the_chosen_rate():
    batch = requests(7, 1000, 0.1)
    assert batch == requests(7, 1000, 0.1)
    assert batch != requests(8, 1000, 0.1)
    assert len({r["saga_id"] for r in batch}) == 1000
    reasons = Counter(expected_outcome(r)[1] for r in batch)
    assert reasons == {None: 900, "out of stock": 50, "insufficient balance": 50}
    assert all(expected_outcome(r)[0] == "committed" for r in requests(7, 200, 0.0))


async def _run_all(batch, urls, session) -> dict[str, dict]:
    return {r["saga_id"]: await run_direct(STEPS, r, urls, session) for r in batch}


async def test_every_saga_ends_as_its_trap_says_and_the_checker_agrees(fresh_warehouse, session):
    batch = requests(2, 60, 0.2)
    results = await _run_all(batch, fresh_warehouse, session)
    for request in batch:
        result = results[request["saga_id"]]
        assert (result["outcome"], result["reason"]) == expected_outcome(request)
    states = fetch_states(fresh_warehouse)
    report = checker.check(states, None, None, {k: v["outcome"] for k, v in results.items()})
    assert report.ok, report.summary()
    assert (report.committed, report.compensated, report.rejected) == (48, 12, 0)
    # The compensations ran: nothing is left reserved, and money is where it started for aborts.
    assert all(item["reserved"] == 0 for item in states["warehouse"]["items"].values())


async def test_compensating_every_step_after_a_full_commit_leaves_no_effect(
    fresh_warehouse, session
):
    request = requests(3, 1, 0.0)[0]
    assert (await run_direct(STEPS, request, fresh_warehouse, session))["outcome"] == "committed"
    sid = request["saga_id"]
    for step in reversed(STEPS):
        status, body = await call(
            session,
            fresh_warehouse[step.role],
            step.undo,
            undo_key(sid, step.name),
            undo_payload(sid, step.name),
        )
        assert (status, body["compensated"]) == (200, True)
    report = checker.check(fetch_states(fresh_warehouse), None, None, {sid: "compensated"})
    assert report.ok, report.summary()
    assert report.compensated == 1


async def test_services_seeded_without_traps_commit_every_request(tmp_path, session):
    batch = requests(4, 20, 0.5)
    with running_services_sync("warehouse", tmp_path, seed=4, size=50, abort_rate=0) as urls:
        results = await _run_all(batch, urls, session)
        assert {r["outcome"] for r in results.values()} == {"committed"}
        assert checker.check(fetch_states(urls)).ok


async def test_checker_flags_a_charge_without_a_reservation(fresh_warehouse, session):
    batch = requests(5, 5, 0.0)
    results = await _run_all(batch, fresh_warehouse, session)
    sent = {k: v["outcome"] for k, v in results.items()}
    assert checker.check(fetch_states(fresh_warehouse), None, None, sent).ok
    await call(
        session,
        fresh_warehouse["payment"],
        "charge",
        idempotency_key("rogue", "charge"),
        {"account": "customer-000", "amount": 700},
    )
    report = checker.check(fetch_states(fresh_warehouse), None, None, sent)
    invariants = {v.invariant for v in report.violations if v.subject == "rogue"}
    assert invariants == {"no effect for a saga never sent", "all or nothing"}


async def test_checker_flags_planted_inconsistencies(fresh_warehouse, session):
    request = requests(6, 1, 0.0)[0]
    sid = request["saga_id"]
    await run_direct(STEPS, request, fresh_warehouse, session)
    clean = fetch_states(fresh_warehouse)
    assert checker.check(clean, None, None, {sid: "committed"}).ok

    # An extra award, under a key that names no award step of this saga.
    await call(
        session,
        fresh_warehouse["loyalty"],
        "award",
        f"{sid}:bonus",
        {"account": request["customer"], "amount": 10_000},
    )
    report = checker.check(fetch_states(fresh_warehouse), None, None, {sid: "committed"})
    assert "effect keyed by its step" in {v.invariant for v in report.violations}

    # Counters tampered with behind the effects' back.
    tampered = json.loads(json.dumps(clean))
    tampered["loyalty"]["members"][request["customer"]] += 5
    tampered["warehouse"]["items"][request["item"]]["stock"] -= 1
    report = checker.check(tampered, None, None, {sid: "committed"})
    assert {v.invariant for v in report.violations} == {
        "points conserved",
        "stock + reserved + shipped = initial",
    }

    # The client claims an outcome the services contradict.
    report = checker.check(clean, None, None, {sid: "compensated"})
    assert [v.invariant for v in report.violations] == ["client outcome matches effects"]


async def test_checker_command_line_reports_and_exits_nonzero_on_violation(
    fresh_warehouse, session, tmp_path
):
    batch = requests(9, 10, 0.3)
    results = await _run_all(batch, fresh_warehouse, session)
    sagas = tmp_path / "sagas.csv"
    with sagas.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["saga_id", "outcome"])
        writer.writerows((k, v["outcome"]) for k, v in results.items())
    services = [f"--service={name}={url}" for name, url in fresh_warehouse.items()]
    command = [
        sys.executable,
        "-m",
        "workloads.warehouse.checker",
        *services,
        "--sagas",
        str(sagas),
        "--out",
        str(tmp_path / "report.json"),
    ]
    clean = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] and report["committed"] + report["compensated"] == 10

    await call(
        session,
        fresh_warehouse["loyalty"],
        "award",
        "never-sent:award",
        {"account": "customer-001", "amount": 100},
    )
    dirty = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    assert dirty.returncode == 1
    assert "never-sent" in dirty.stdout
    assert json.loads((tmp_path / "report.json").read_text())["violations"]
