"""The merge of sidecars' answers into one timeline: matching, clock skew and ordering."""

from __future__ import annotations

from typing import Any

from accompanist_py.inspect import NodeEvents, merge


def ev(n: int, t: float, kind: str, **fields: Any) -> dict[str, Any]:
    return {"n": n, "t": t, "kind": kind, **fields}


def ping_pong(skew_b: float = 0.0, delay: float = 0.010) -> list[NodeEvents]:
    """a sends data to b, b answers: b's clock runs `skew_b` seconds ahead of a's."""
    a = [
        ev(1, 100.000, "started", choreography="c", origin="client", by=None),
        ev(2, 100.001, "sent", peer="b", seq=0, message="data"),
        ev(3, 100.001 + 2 * delay + 0.002, "received", peer="b", seq=0, message="data"),
        ev(4, 100.001 + 2 * delay + 0.003, "finished", state="completed"),
    ]
    b = [
        ev(1, 100.001 + delay + skew_b, "started", choreography="c", origin="peer", by="a"),
        ev(2, 100.001 + delay + skew_b, "received", peer="a", seq=0, message="data"),
        ev(3, 100.003 + delay + skew_b, "sent", peer="a", seq=0, message="data"),
        ev(4, 100.004 + delay + skew_b, "finished", state="completed"),
    ]
    return [NodeEvents("node-a", "http://a", {"a": a}), NodeEvents("node-b", "http://b", {"b": b})]


def kinds(timeline) -> list[str]:
    return [f"{e.role}:{e.kind}" for e in timeline.entries]


def test_sent_and_received_are_matched_by_sender_receiver_seq_and_message():
    t = merge("s", ping_pong())
    for e in t.entries:
        if e.kind in ("sent", "received"):
            other = t.entries[e.match]
            assert {e.kind, other.kind} == {"sent", "received"}
            assert {e.role, other.role} == {"a", "b"}
    assert t.offsets == {"node-a": 0.0, "node-b": 0.0}
    assert t.notes[0].startswith("clocks agree")


def test_agreeing_clocks_order_by_time_and_keep_each_roles_order():
    t = merge("s", ping_pong())
    assert kinds(t) == [
        "a:started", "a:sent", "b:started", "b:received", "b:sent", "b:finished",
        "a:received", "a:finished",
    ]  # fmt: skip
    assert t.roles == ["a", "b"]
    assert t.entries[0].at == 0.0


def test_a_node_whose_clock_is_behind_is_corrected_so_no_message_arrives_before_it_is_sent():
    t = merge("s", ping_pong(skew_b=-5.0))
    assert abs(t.offsets["node-b"] - 5.0) < 0.002  # midpoint of the two-way bounds
    assert t.offsets["node-a"] == 0.0
    for e in t.entries:
        if e.kind == "received":
            assert e.at >= t.entries[e.match].at
    assert kinds(t) == kinds(merge("s", ping_pong()))
    assert any("corrected" in n for n in t.notes)
    assert any("node node-b's clock: +500" in n for n in t.notes)


def test_one_way_messages_correct_a_skewed_receiver_just_enough():
    a = [
        ev(1, 10.0, "started", origin="client"),
        ev(2, 10.0, "sent", peer="b", seq=0, message="data"),
    ]
    b = [ev(1, 7.0, "received", peer="a", seq=0, message="data"), ev(2, 7.1, "finished", state="x")]
    t = merge("s", [NodeEvents("A", "u", {"a": a}), NodeEvents("B", "v", {"b": b})])
    assert 3.0 <= t.offsets["B"] < 3.001
    assert kinds(t) == ["a:started", "a:sent", "b:received", "b:finished"]


def test_a_received_is_never_placed_before_its_sent_even_when_clocks_cannot_be_reconciled():
    # b received before a sent, and a received b's answer before b sent it: no offset fits both.
    a = [ev(1, 10.0, "sent", peer="b", seq=0, message="data"),
         ev(2, 10.5, "received", peer="b", seq=1, message="data")]  # fmt: skip
    b = [ev(1, 9.0, "received", peer="a", seq=0, message="data"),
         ev(2, 12.0, "sent", peer="a", seq=1, message="data")]  # fmt: skip
    t = merge("s", [NodeEvents("A", "u", {"a": a}), NodeEvents("B", "v", {"b": b})])
    assert kinds(t) == ["a:sent", "b:received", "b:sent", "a:received"]


def test_repeated_keys_pair_in_order_and_unmatched_messages_are_noted():
    a = [ev(1, 1.0, "sent", peer="b", seq=-3, message="decision"),
         ev(2, 1.1, "sent", peer="c", seq=-3, message="decision"),
         ev(3, 1.2, "sent", peer="b", seq=0, message="data")]  # fmt: skip
    b = [ev(1, 1.05, "received", peer="a", seq=-3, message="decision")]
    t = merge("s", [NodeEvents("A", "u", {"a": a}), NodeEvents("B", "v", {"b": b})], {"w": "down"})
    decision_to_b = next(e for e in t.entries if e.kind == "sent" and e.fields["peer"] == "b")
    assert t.entries[decision_to_b.match].role == "b"
    assert "a -> c decision seq -3: its events were not fetched" in t.notes
    assert "a -> b data seq 0: not received" in t.notes
    assert t.roles == ["a", "b", "c"]
    assert t.final_state("c") == "no events"
    assert t.final_state("b") == "unfinished"
    assert t.unreachable == {"w": "down"}


def test_the_json_timeline_names_roles_offsets_final_states_and_every_event():
    body = merge("s", ping_pong(skew_b=2.0)).to_json()
    assert body["session"] == "s" and body["choreography"] == "c"
    assert body["final"] == {"a": "completed", "b": "completed"}
    assert len(body["events"]) == 8
    assert set(body["offsets_s"]) == {"node-a", "node-b"}
    assert body["events"][1]["kind"] == "sent" and body["events"][1]["peer"] == "b"
