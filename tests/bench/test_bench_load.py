"""Locust load: closed and open loop write one raw row per request, failures included."""

from __future__ import annotations

import ast
import asyncio
import csv
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bench.load import (
    LOCUSTFILE,
    RAW_COLUMNS,
    LoadProfile,
    read_outcomes,
    run_locust,
    write_requests,
)


async def _saga(request: web.Request) -> web.Response:
    body = await request.json()
    if body["saga_id"].endswith("3"):
        return web.json_response({"error": "transient"}, status=503)
    outcome = "committed" if body["request"]["n"] % 2 else "compensated"
    return web.json_response({"saga_id": body["saga_id"], "outcome": outcome, "reason": None})


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    """A trivial stand-in for the gateway, on a free port, in a thread."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/sagas/{workload}", _saga)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.run_until_complete(runner.cleanup())
    loop.close()


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


def _check_rows(rows: list[dict[str, str]]) -> None:
    assert rows
    for row in rows:
        assert float(row["intended_start"]) <= float(row["start"]) <= float(row["end"])
        if row["saga_id"].endswith("3"):
            assert row["status"] == "503" and row["error"].startswith("HTTP 503")
        else:
            assert row["status"] == "200" and row["outcome"] in ("committed", "compensated")
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
    assert outcomes["c-000003"] is None and outcomes["c-000001"] == "committed"


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
    from workloads.launch import free_port

    requests = write_requests(tmp_path / "req.jsonl", [{"n": i} for i in range(50)], "x")
    profile = LoadProfile("open", rate_rps=10, request_timeout_s=2)
    raw = run_locust(f"http://127.0.0.1:{free_port()}", "warehouse", requests,
                     tmp_path / "raw.csv", profile, 2)  # fmt: skip
    _, rows = _rows(raw)
    assert rows and all(row["status"] == "0" and row["error"] for row in rows)
