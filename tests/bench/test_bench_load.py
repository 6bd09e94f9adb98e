"""Locust load: closed and open loop write exactly one raw row per scheduled saga, failures,
timeouts and sagas never sent included; a saga that got no answer or a 503 is posted again
under its saga id, within one deadline; a 500 or a 4xx is final."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import csv
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bench.load import (
    LOCUSTFILE,
    RAW_COLUMNS,
    LoadProfile,
    load_account_path,
    read_outcomes,
    run_locust,
    write_requests,
)

_POSTED: set[str] = set()


async def _saga(request: web.Request) -> web.Response:
    body = await request.json()
    saga_id = body["saga_id"]
    if saga_id.endswith("3") and saga_id not in _POSTED:
        _POSTED.add(saga_id)  # a system that comes back: the second post succeeds
        return web.json_response({"error": "transient"}, status=503)
    if saga_id.endswith("7"):
        return web.json_response({"error": "refused for good"}, status=400)
    if saga_id.endswith("5"):
        return web.json_response({"error": "workflow failed: boom"}, status=500)
    outcome = "committed" if body["request"]["n"] % 2 else "compensated"
    return web.json_response({"saga_id": body["saga_id"], "outcome": outcome, "reason": None})


@contextlib.contextmanager
def _serving(answer: Callable[[web.Request], Awaitable[web.Response]]) -> Iterator[str]:
    """A stand-in for the gateway that answers with `answer`, on a free port, in a thread."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/sagas/{workload}", answer)
    # Handlers that never answer are cancelled at once when the stand-in stops.
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    with _serving(_saga) as url:
        yield url


def _locustfile_columns() -> tuple[str, ...]:
    # Read, never import, the locustfile: importing Locust monkey-patches this whole process.
    for node in ast.parse(LOCUSTFILE.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "RAW_COLUMNS":
            return ast.literal_eval(node.value)
    raise AssertionError("RAW_COLUMNS not found in the locustfile")


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _scheduled(raw: Path) -> int:
    return json.loads(load_account_path(raw).read_text())["scheduled"]


def _check_rows(rows: list[dict[str, str]]) -> None:
    assert rows
    for row in rows:
        assert float(row["intended_start"]) <= float(row["start"]) <= float(row["end"])
        if row["saga_id"].endswith("7"):  # a 4xx is the answer: never posted again
            assert row["status"] == "400" and row["error"].startswith("HTTP 400")
            assert row["attempts"] == "1"
        elif row["saga_id"].endswith("5"):  # a 500 is final too: the saga failed for good
            assert row["status"] == "500" and "workflow failed: boom" in row["error"]
            assert row["attempts"] == "1"
        else:
            assert row["status"] == "200" and row["outcome"] in ("committed", "compensated")
            assert row["attempts"] == ("2" if row["saga_id"].endswith("3") else "1")
    assert {row["warmup"] for row in rows} == {"0", "1"}


def test_closed_loop_writes_the_raw_csv(gateway: str, tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "req.jsonl", [{"n": i} for i in range(500)], "c")
    profile = LoadProfile("closed", users=2, think_time_s=0.05)
    raw = run_locust(gateway, "warehouse", requests, tmp_path / "raw.csv", profile, 3, warmup_s=1)
    columns, rows = _rows(raw)
    assert tuple(columns) == RAW_COLUMNS == _locustfile_columns()
    _check_rows(rows)
    assert len({row["saga_id"] for row in rows}) == len(rows)
    outcomes = read_outcomes(raw)
    assert outcomes["c-000007"] is None and outcomes["c-000001"] == "committed"
    assert outcomes["c-000003"] == "committed"  # after its retry


def test_open_loop_measures_from_the_intended_start(gateway: str, tmp_path: Path) -> None:
    # Fewer requests than arrivals: the load re-uses them under fresh saga ids.
    requests = write_requests(tmp_path / "req.jsonl", [{"n": i} for i in range(10)], "o")
    profile = LoadProfile("open", rate_rps=30)
    raw = run_locust(gateway, "warehouse", requests, tmp_path / "raw.csv", profile, 3, warmup_s=1)
    columns, rows = _rows(raw)
    assert tuple(columns) == RAW_COLUMNS
    _check_rows(rows)
    assert 30 <= len(rows) <= 200  # ~90 Poisson arrivals in 3 s
    assert len({row["saga_id"] for row in rows}) == len(rows)
    for row in rows:
        latency = float(row["latency_ms"])
        assert latency == pytest.approx(
            (float(row["end"]) - float(row["intended_start"])) * 1000, abs=0.01
        )


def test_requests_keep_their_own_saga_ids(tmp_path: Path) -> None:
    path = write_requests(tmp_path / "r.jsonl", [{"saga_id": "w-1", "n": 1}, {"n": 2}], "p")
    lines = path.read_text().splitlines()
    assert lines[0].startswith('{"saga_id": "w-1"') and '"saga_id": "p-000001"' in lines[1]


def test_an_unreachable_gateway_is_recorded_as_errors(tmp_path: Path) -> None:
    from launch import free_port

    requests = write_requests(tmp_path / "req.jsonl", [{"n": i} for i in range(50)], "x")
    profile = LoadProfile("open", rate_rps=10, request_timeout_s=2)
    raw = run_locust(f"http://127.0.0.1:{free_port()}", "warehouse", requests,
                     tmp_path / "raw.csv", profile, 2)  # fmt: skip
    _, rows = _rows(raw)
    assert rows and all(row["status"] == "0" and row["error"] for row in rows)
    # Posted again, with backoff, until the request timeout had passed.
    assert all(int(row["attempts"]) > 1 for row in rows)


def test_a_fixed_rate_open_loop_offers_exactly_its_rate_and_reports_its_cpu(
    gateway: str, tmp_path: Path
) -> None:
    from itertools import pairwise

    from bench.load import read_load_cpu

    requests = write_requests(tmp_path / "req.jsonl", [{"n": i} for i in range(100)], "f")
    profile = LoadProfile("open", rate_rps=20)
    raw = run_locust(gateway, "warehouse", requests, tmp_path / "raw.csv", profile, 3)
    starts = sorted({float(row["intended_start"]) for row in _rows(raw)[1]})
    gaps = [b - a for a, b in pairwise(starts)]
    assert 55 <= len(starts) <= 61
    assert max(gaps) - min(gaps) < 1e-4 and abs(gaps[0] - 0.05) < 1e-4
    user, system = read_load_cpu(raw) or (0.0, 0.0)
    assert user + system > 0


async def _never_answer(_: web.Request) -> web.Response:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def test_a_saga_that_never_gets_an_answer_ends_at_its_deadline_retries_included(
    tmp_path: Path,
) -> None:
    timeout_s = 4.0
    posted: set[str] = set()

    async def busy_then_silent(request: web.Request) -> web.Response:
        saga_id = (await request.json())["saga_id"]
        if saga_id in posted:
            return await _never_answer(request)
        posted.add(saga_id)
        # Half the deadline gone: a retry that got a full timeout of its own would run past it.
        await asyncio.sleep(timeout_s / 2)
        return web.json_response({"error": "restarting"}, status=503)

    requests = write_requests(tmp_path / "req.jsonl", [{"n": i} for i in range(20)], "d")
    profile = LoadProfile("open", rate_rps=5, request_timeout_s=timeout_s)
    with _serving(busy_then_silent) as url:
        raw = run_locust(url, "warehouse", requests, tmp_path / "raw.csv", profile, 2)
    _, rows = _rows(raw)
    assert len(rows) == _scheduled(raw) > 0
    for row in rows:
        assert row["attempts"] == "2" and row["status"] == "0", row
        assert row["error"] == "no answer within the request timeout (4 s)", row
        # One deadline for the whole saga (twice the timeout was what the old per-post one gave).
        assert float(row["latency_ms"]) < (timeout_s + 1) * 1000, row


def test_arrivals_the_in_flight_cap_kept_from_being_sent_are_error_rows(tmp_path: Path) -> None:
    async def slow(request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(1.0)
        return web.json_response({"saga_id": body["saga_id"], "outcome": "committed"})

    requests = write_requests(tmp_path / "req.jsonl", [{"n": i} for i in range(60)], "m")
    # One saga at a time, each taking 1 s, against 10 arrivals a second.
    profile = LoadProfile("open", rate_rps=10, max_in_flight=1, request_timeout_s=1.5)
    with _serving(slow) as url:
        raw = run_locust(url, "warehouse", requests, tmp_path / "raw.csv", profile, 3)
    _, rows = _rows(raw)
    assert len(rows) == _scheduled(raw) == len({row["saga_id"] for row in rows})
    late = "no answer within the request timeout (1.5 s)"
    unsent = "not sent: 1 sagas (--max-in-flight) in flight until the end of the run"
    kinds = {
        "ok": [r for r in rows if r["outcome"] == "committed"],
        # Sent late, after the wait for a slot had eaten most of their deadline.
        "late": [r for r in rows if r["error"] == late],
        "unsent": [r for r in rows if r["error"] == unsent],
    }
    assert all(kinds.values()), {kind: len(found) for kind, found in kinds.items()}
    assert sum(map(len, kinds.values())) == len(rows)
    for row in kinds["unsent"]:
        assert row["attempts"] == "0" and row["start"] == "" and row["status"] == "0", row


def test_sagas_still_unfinished_when_locust_quits_are_error_rows(tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "req.jsonl", [{"n": i} for i in range(20)], "q")
    # Locust stops waiting 1 s after the end, long before the sagas' deadline.
    profile = LoadProfile("open", rate_rps=5, request_timeout_s=60)
    with _serving(_never_answer) as url:
        raw = run_locust(
            url, "warehouse", requests, tmp_path / "raw.csv", profile, 2, stop_timeout_s=1
        )
    _, rows = _rows(raw)
    assert len(rows) == _scheduled(raw) > 0
    assert {(row["error"], row["attempts"]) for row in rows} == {
        ("no answer by the end of the run", "1")
    }
