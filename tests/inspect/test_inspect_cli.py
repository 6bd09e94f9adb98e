"""The inspector's command line against a real cluster: a committed, a compensated and a
crash-recovered saga drawn from the events of all three sidecars."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import COMMITTED, COMPENSATED, RECOVERED, Sagas, inspect_cli


def diagram(sagas: Sagas, session: str, *extra: str) -> str:
    done = inspect_cli(session, "--config", str(sagas.config), *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_committed_saga_shows_every_role_its_calls_messages_and_completion(sagas: Sagas):
    text = diagram(sagas, COMMITTED)
    lines = text.splitlines()
    assert lines[0] == f"session {COMMITTED} (saga3)"
    assert "events of a at a, b at b, c at c" in text
    assert "clocks agree" in text or "corrected" in text
    for call in ("reserve", "charge", "ship", "confirm"):
        assert f"[{call} -> ok " in text
    for tx in ("reserve", "charge", "ship", "confirm"):
        assert f"+ committed {tx}" in text
    assert sum("data #0" in line and "▶" in line for line in lines) == 2  # a->b, b->c
    assert any("data #0" in line and "◀" in line for line in lines)  # c->a
    assert sum("decision #-3" in line for line in lines) == 2
    assert "lost?" not in text and "unseen" not in text
    assert lines[-1].split() == ["completed"] * 3


def test_a_compensated_saga_shows_the_refusal_the_abort_and_its_origin_and_each_undo(sagas: Sagas):
    text = diagram(sagas, COMPENSATED)
    assert "[ship -> refused " in text
    assert "x REFUSED ship: ship declined" in text
    assert "! ABORT: ship declined (origin c)" in text
    assert "! ABORT: ship declined (origin a)" in text  # b learnt it from a's decision
    assert "~ COMPENSATED reserve (undo_reserve)" in text
    assert "~ COMPENSATED charge (undo_charge)" in text
    assert any("abort #-2" in line and "◀" in line for line in text.splitlines())
    assert text.splitlines()[-1].split() == ["compensated"] * 3


def test_a_crash_recovered_saga_shows_the_cut_call_the_restart_and_the_replay(sagas: Sagas):
    text = diagram(sagas, RECOVERED)
    lines = text.splitlines()
    cut = next(i for i, line in enumerate(lines) if "[charge: no answer recorded]" in line)
    restart = next(i for i, line in enumerate(lines) if "@ RESTART #1 (was running)" in line)
    replay = next(i for i, line in enumerate(lines) if "@ REPLAY:" in line)
    again = next(i for i, line in enumerate(lines) if "[charge -> ok " in line)
    assert cut < restart < replay < again
    assert lines[-1].split() == ["completed"] * 3


def test_mermaid_and_json_describe_the_same_timeline(sagas: Sagas, tmp_path: Path):
    out = tmp_path / "recovered.mmd"
    body = json.loads(diagram(sagas, RECOVERED, "--json", "--mermaid", str(out)))
    assert body["roles"] == ["a", "b", "c"]
    assert body["final"] == {"a": "completed", "b": "completed", "c": "completed"}
    assert [e["kind"] for e in body["events"]].count("restart") == 1
    for e in body["events"]:
        if e["kind"] == "received":
            assert e["match"] is not None and body["events"][e["match"]]["at"] <= e["at"]
    mermaid = out.read_text()
    assert mermaid.startswith("sequenceDiagram\n")
    assert "participant r1 as b" in mermaid and "participant s1 as b's service" in mermaid
    assert "Note over r1: RESTART #35;1 (was running)" in mermaid
    comp = tmp_path / "compensated.mmd"
    diagram(sagas, COMPENSATED, "--mermaid", str(comp))
    assert "rect rgba(255, 120, 120, 0.15)" in comp.read_text()


def test_a_sidecar_that_is_down_is_reported_and_the_others_still_draw(sagas: Sagas):
    done = inspect_cli(COMMITTED, "--config", str(sagas.config), "--sidecar", "http://127.0.0.1:9")
    assert done.returncode == 0, done.stderr
    assert "sidecar http://127.0.0.1:9: unreachable" in done.stdout
    assert done.stdout.splitlines()[-1].split() == ["completed"] * 3


def test_an_unknown_session_exits_1_and_no_sidecar_exits_2(sagas: Sagas):
    assert inspect_cli("no-such-session", "--config", str(sagas.config)).returncode == 1
    none = inspect_cli("x")
    assert none.returncode == 2 and "--sidecar" in none.stderr
