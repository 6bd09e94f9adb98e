"""The text, Mermaid and SVG diagrams of synthetic timelines."""

from __future__ import annotations

from typing import Any

from accompanist_py.inspect import NodeEvents, merge, render_mermaid, render_svg, render_text


def ev(n: int, t: float, kind: str, **fields: Any) -> dict[str, Any]:
    return {"n": n, "t": t, "kind": kind, **fields}


def compensated_with_restart():
    """a commits reserve, sends to b; b restarts, replays, is refused; both compensate."""
    a = [
        ev(1, 0.000, "started", choreography="saga", origin="client", by="ops"),
        ev(2, 0.001, "call_start", operation="reserve"),
        ev(3, 0.003, "call_end", operation="reserve", status="ok", attempts=1, latency_ms=2.0),
        ev(4, 0.004, "committed", transaction="reserve", operation="reserve"),
        ev(5, 0.005, "sent", peer="b", seq=0, message="data"),
        ev(6, 0.300, "received", peer="b", seq=-2, message="abort"),
        ev(7, 0.301, "abort", reason="charge declined", failed=False, origin="b"),
        ev(8, 0.302, "call_start", operation="undo_reserve"),
        ev(9, 0.310, "call_end", operation="undo_reserve", status="ok", attempts=3, latency_ms=8.0),
        ev(10, 0.311, "compensated", transaction="reserve", operation="undo_reserve"),
        ev(11, 0.312, "finished", state="compensated"),
    ]
    b = [
        ev(1, 0.006, "started", choreography="saga", origin="peer", by="a"),
        ev(2, 0.006, "received", peer="a", seq=0, message="data"),
        ev(3, 0.007, "call_start", operation="charge"),
        ev(4, 0.200, "restart", restarts=1, state="running"),
        ev(5, 0.200, "replay", steps=0, received=1),
        ev(6, 0.201, "call_start", operation="charge"),
        ev(7, 0.202, "call_end", operation="charge", status="refused", attempts=1, latency_ms=1.0),
        ev(8, 0.203, "refused", transaction="charge", operation="charge", reason="charge declined"),
        ev(9, 0.204, "abort", reason="charge declined", failed=False, origin="b"),
        ev(10, 0.205, "sent", peer="a", seq=-2, message="abort"),
        ev(11, 0.206, "finished", state="compensated"),
    ]
    return merge(
        "s-1", [NodeEvents("A", "http://a", {"a": a}), NodeEvents("B", "http://b", {"b": b})]
    )


def test_text_diagram_has_a_lifeline_per_role_arrows_calls_and_marks():
    text = render_text(compensated_with_restart())
    lines = text.splitlines()
    assert lines[0] == "session s-1 (saga)"
    header = next(line for line in lines if line.split() == ["a", "b"])
    assert header.index("a") < header.index("b")
    assert any("data #0" in line and "▶" in line for line in lines)
    assert any("abort #-2" in line and "◀" in line and "╌" in line for line in lines)
    assert "[reserve -> ok 2.0 ms]" in text
    assert "[undo_reserve -> ok 8.0 ms, 3 attempts]" in text
    assert "[charge: no answer recorded]" in text  # the call the crash cut short
    assert "@ RESTART #1 (was running)" in text
    assert "@ REPLAY: 0 steps, 1 messages from the store" in text
    assert "x REFUSED charge: charge declined" in text
    assert "! ABORT: charge declined (origin b)" in text
    assert "~ COMPENSATED reserve (undo_reserve)" in text
    assert lines[-1].split() == ["compensated", "compensated"]


def test_text_rows_are_in_timeline_order_with_times_since_the_start():
    lines = render_text(compensated_with_restart()).splitlines()
    rows = [line for line in lines if line.lstrip().startswith("+")]
    assert rows[0].lstrip().startswith("+0.0ms") and "started by client ops" in rows[0]
    restart = next(i for i, r in enumerate(rows) if "RESTART" in r)
    refused = next(i for i, r in enumerate(rows) if "REFUSED" in r)
    compensated = next(i for i, r in enumerate(rows) if "COMPENSATED" in r)
    assert restart < refused < compensated
    assert rows[restart].lstrip().startswith("+200.0ms")


def test_mermaid_has_roles_and_services_messages_calls_notes_and_a_compensation_block():
    out = render_mermaid(compensated_with_restart())
    lines = [line.strip() for line in out.splitlines()]
    assert lines[0] == "sequenceDiagram"
    assert lines[1:5] == [
        "participant r0 as a",
        "participant s0 as a's service",
        "participant r1 as b",
        "participant s1 as b's service",
    ]
    assert "r0->>r1: data seq 0 (1.0 ms)" in lines
    assert "r0->>s0: reserve" in lines and "s0-->>r0: ok 2.0 ms" in lines
    assert "s0-->>r0: ok 8.0 ms, 3 attempts" in lines
    assert "Note over s1: no answer recorded" in lines
    assert "Note over r1: RESTART #35;1 (was running)" in lines
    assert "r1-->>r0: abort seq -2 (95.0 ms)" in lines
    rect = next(i for i, line in enumerate(lines) if line.startswith("rect rgba(255"))
    assert lines[rect + 1] == "Note over r0,r1: compensation"
    assert lines.index("Note over r0: COMPENSATED reserve (undo_reserve)") > rect
    assert lines.count("end") == lines.count("rect rgba(120, 160, 255, 0.2)") + 1
    assert lines[-1] == "Note over r0,r1: final: a compensated, b compensated"


def test_mermaid_writes_hash_and_semicolon_as_entity_codes():
    a = [ev(1, 0.0, "abort", reason="bad; input #3", failed=True, origin="deadline")]
    out = render_mermaid(merge("s", [NodeEvents("A", "u", {"a": a})]))
    assert "Note over r0: ABORT: bad#59; input #35;3 (origin deadline, failed)" in out


def test_svg_draws_lifelines_arrows_call_boxes_and_marks_with_escaped_text():
    svg = render_svg(compensated_with_restart())
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert svg.count('class="lifeline"') == 2
    assert 'class="message" data-from="a" data-to="b" data-kind="data"' in svg
    assert 'class="message control" data-from="b" data-to="a" data-kind="abort"' in svg
    assert 'data-operation="undo_reserve" data-status="ok" data-latency-ms="8.0"' in svg
    assert 'class="call open" data-role="b" data-operation="charge"' in svg
    assert 'class="call refused"' in svg
    for kind in ("compensated", "restart", "replay", "abort", "refused"):
        assert f'class="mark {kind}"' in svg
    assert 'class="final" data-role="a" data-state="compensated"' in svg
    hostile = [ev(1, 0.0, "abort", reason="<script>x</script>", failed=False, origin="a")]
    assert "<script>" not in render_svg(merge("s", [NodeEvents("A", "u", {"<b>": hostile})]))
