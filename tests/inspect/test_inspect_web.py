"""`python -m accompanist_py.inspect serve` against a real cluster: the JSON endpoints, and
the page in headless Chromium drawing a committed, a compensated and a recovered saga."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import COMMITTED, COMPENSATED, RECOVERED, Sagas
from runtime_cluster import REPO, Process

from launch import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def inspector(sagas: Sagas, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = Process(
        "inspector",
        [
            sys.executable,
            "-m",
            "accompanist_py.inspect",
            "serve",
            "--config",
            str(sagas.config),
            "--port",
            str(port),
        ],
        tmp_path_factory.mktemp("inspector") / "inspector.log",
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/", timeout=2):
                    break
            except OSError:
                assert proc.alive(), proc.tail()
                assert time.monotonic() < deadline, proc.tail()
                time.sleep(0.1)
        yield url
    finally:
        proc.stop()


async def get(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_sessions_show_their_state_at_every_role_and_filter_by_state(inspector: str):
    listed = (await get(f"{inspector}/api/sessions"))["sessions"]
    by_id = {s["session_id"]: s["roles"] for s in listed}
    assert by_id[COMMITTED] == {"a": "completed", "b": "completed", "c": "completed"}
    assert by_id[COMPENSATED] == {"a": "compensated", "b": "compensated", "c": "compensated"}
    compensated = (await get(f"{inspector}/api/sessions?state=compensated"))["sessions"]
    assert [s["session_id"] for s in compensated] == [COMPENSATED]
    assert compensated[0]["roles"]["b"] == "compensated"


async def test_timeline_and_metrics_endpoints(inspector: str):
    body = await get(f"{inspector}/api/sessions/{RECOVERED}/timeline")
    assert body["roles"] == ["a", "b", "c"] and body["unreachable"] == {}
    assert "restart" in [e["kind"] for e in body["events"]]
    metrics = await get(f"{inspector}/api/metrics")
    assert len(metrics["sidecars"]) == 3 and metrics["unreachable"] == {}
    totals = {
        k: sum(m.get(k, 0) for m in metrics["sidecars"].values())
        for k in (
            "sessions_completed_total",
            "sessions_compensated_total",
            "sessions_recovered_total",
        )
    }
    assert totals["sessions_completed_total"] >= 6 and totals["sessions_compensated_total"] >= 3
    assert totals["sessions_recovered_total"] >= 1
    assert all("outbox_pending" in m for m in metrics["sidecars"].values())


def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM once its scripts have run, from headless Chromium."""
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(
    CHROMIUM is None, reason="browser test skipped: no chromium (apt-get install chromium)"
)
@pytest.mark.parametrize(
    ("session", "state", "marks"),
    [
        (COMMITTED, "completed", ['class="mark committed"']),
        (
            COMPENSATED,
            "compensated",
            [
                'class="mark refused"',
                'class="mark abort"',
                'class="mark compensated"',
                'class="call refused"',
            ],
        ),
        (
            RECOVERED,
            "completed",
            ['class="mark restart"', 'class="mark replay"', 'class="call open"'],
        ),
    ],
)
def test_the_page_draws_the_sequence_diagram_in_chromium(
    inspector: str, session: str, state: str, marks: list[str], tmp_path: Path
):
    dom = dump_dom(f"{inspector}/?session={session}", tmp_path / "profile")
    assert f'data-loaded="{session}"' in dom, dom[-3000:]
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="sequence"' in dom
    for role in ("a", "b", "c"):
        assert f'class="lifeline" data-role="{role}"' in dom
        assert f'class="final" data-role="{role}" data-state="{state}"' in dom
    assert dom.count('class="message') >= 6  # data a->b->c->a, done, decisions
    assert 'data-from="a" data-to="b" data-kind="data"' in dom
    assert dom.count('class="call') >= 4
    assert "data-latency-ms=" in dom
    for mark in marks:
        assert mark in dom
    assert f'data-session="{session}"' in dom  # listed in the sessions table
    assert 'class="sidecar"' in dom and 'data-metric="sessions_started_total"' in dom
