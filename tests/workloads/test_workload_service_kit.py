"""The service contract of docs/contracts.md, exercised on real warehouse service processes."""

from __future__ import annotations

import json
import urllib.request

from launch import ProcessSpec, Supervisor, free_port
from workloads.consistency import fetch_states
from workloads.launch import running_services_sync, service_command
from workloads.warehouse.data import ITEMS, SOLD_OUT_ITEMS
from workloads.warehouse.workload import WORKLOAD


def _reserve(item: str = ITEMS[0], quantity: int = 2) -> dict:
    return {"customer": "customer-000", "item": item, "quantity": quantity}


async def _stock(state, url: str, item: str = ITEMS[0]) -> dict:
    return (await state(url))["items"][item]


async def test_repeated_key_returns_stored_response_and_applies_once(warehouse_urls, post, state):
    url = warehouse_urls["warehouse"]
    before = await _stock(state, url)
    first = await post(url, "reserve", _reserve(), "repeat-1:reserve")
    second = await post(url, "reserve", _reserve(), "repeat-1:reserve")
    assert first == second
    assert first[0] == 200 and first[1]["reservation_id"] == "repeat-1:reserve"
    after = await _stock(state, url)
    assert after["stock"] == before["stock"] - 2
    assert after["reserved"] == before["reserved"] + 2


async def test_business_abort_answers_409_and_is_replayed(warehouse_urls, post):
    url = warehouse_urls["warehouse"]
    body = _reserve(SOLD_OUT_ITEMS[0], 1)
    assert await post(url, "reserve", body, "abort-1:reserve") == (409, {"error": "out of stock"})
    assert await post(url, "reserve", body, "abort-1:reserve") == (409, {"error": "out of stock"})
    undo = await post(url, "release", {"commit_key": "abort-1:reserve"}, "abort-1:reserve:undo")
    assert undo == (200, {"compensated": False})


async def test_compensation_undoes_the_commit_once(warehouse_urls, post, state):
    url = warehouse_urls["warehouse"]
    before = await _stock(state, url)
    assert (await post(url, "reserve", _reserve(), "undo-1:reserve"))[0] == 200
    undo_body = {"commit_key": "undo-1:reserve"}
    first = await post(url, "release", undo_body, "undo-1:reserve:undo")
    second = await post(url, "release", undo_body, "undo-1:reserve:undo")
    assert first == second == (200, {"compensated": True, "released": 2})
    assert await _stock(state, url) == before


async def test_compensating_before_the_commit_leaves_a_tombstone(warehouse_urls, post, state):
    url = warehouse_urls["payment"]
    before = (await state(url))["accounts"]["customer-001"]
    undo = await post(url, "refund", {"commit_key": "late-1:charge"}, "late-1:charge:undo")
    assert undo == (200, {"compensated": False})
    late = await post(url, "charge", {"account": "customer-001", "amount": 500}, "late-1:charge")
    assert late == (409, {"error": "compensated"})
    after = await state(url)
    assert after["accounts"]["customer-001"] == before
    assert not [c for c in after["charges"] if c["key"] == "late-1:charge"]
    record = next(r for r in after["idempotency"] if r["key"] == "late-1:charge")
    assert record["tombstone"] is True


async def test_malformed_requests_answer_400_and_apply_nothing(warehouse_urls, post, state):
    url = warehouse_urls["warehouse"]
    before = await state(url)
    status, body = await post(url, "reserve", b"{not json", "bad-1:reserve")
    assert status == 400 and "malformed JSON" in body["error"]
    assert (await post(url, "reserve", [1, 2], "bad-2:reserve"))[0] == 400
    assert (await post(url, "reserve", {"item": ITEMS[0]}, "bad-3:reserve"))[0] == 400
    assert (await post(url, "reserve", _reserve(quantity=0), "bad-4:reserve"))[0] == 400
    assert (await post(url, "reserve", _reserve(quantity=True), "bad-5:reserve"))[0] == 400
    assert (await post(url, "reserve", _reserve(), None))[0] == 400
    wrong_key = await post(url, "release", {"commit_key": "bad-6:reserve"}, "bad-6:other")
    assert wrong_key[0] == 400
    assert (await post(url, "teleport", {}, "bad-7:x"))[0] == 404
    after = await state(url)
    assert after["items"] == before["items"] and after["idempotency"] == before["idempotency"]


async def test_a_key_reused_for_another_operation_is_refused(warehouse_urls, post):
    url = warehouse_urls["warehouse"]
    assert (await post(url, "reserve", _reserve(), "reuse-1:reserve"))[0] == 200
    status, body = await post(url, "ship", {"reservation_id": "x"}, "reuse-1:reserve")
    assert status == 400 and "reserve" in body["error"]


async def test_undo_of_a_commit_of_another_operation_is_refused(warehouse_urls, post):
    url = warehouse_urls["warehouse"]
    assert (await post(url, "reserve", _reserve(), "mix-1:reserve"))[0] == 200
    status, _ = await post(
        url, "cancel_shipment", {"commit_key": "mix-1:reserve"}, "mix-1:reserve:undo"
    )
    assert status == 400


def test_a_restarted_service_keeps_its_data_and_does_not_reseed(tmp_path):
    with running_services_sync(WORKLOAD, tmp_path, seed=1, size=50) as urls:
        request = urllib.request.Request(
            f"{urls['warehouse']}/ops/reserve",
            method="POST",
            data=json.dumps(_reserve(quantity=3)).encode(),
            headers={"Idempotency-Key": "restart-1:reserve"},
        )
        urllib.request.urlopen(request).close()
    with running_services_sync(WORKLOAD, tmp_path, seed=1, size=50) as urls:
        items = fetch_states({"warehouse": urls["warehouse"]})["warehouse"]["items"]
    assert items[ITEMS[0]]["reserved"] == 3


def test_sigterm_stops_a_service_cleanly(tmp_path):
    port = free_port()
    command = service_command(WORKLOAD, "loyalty", port, tmp_path / "loyalty.db", 1, 10, 0.1)
    health = f"http://127.0.0.1:{port}/health"
    with Supervisor(tmp_path) as supervisor:
        supervisor.start(ProcessSpec("loyalty", command, health_url=health, stop_grace_s=10))
        supervisor.stop("loyalty")
        assert supervisor.exit_code("loyalty") == 0
