"""Robustness over an unreliable in-memory network: duplicated batches, reordering delays and
lost acknowledgements change nothing a choreography's roles or services can see."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accompanist_py.backoff import Backoff
from accompanist_py.choreography import choreography
from accompanist_py.errors import BusinessAbort
from accompanist_py.node import NodeConfig
from accompanist_py.saga import Transaction
from accompanist_py.testing import LocalCluster, NetworkFaults

# Resends back off briefly, so that lost acknowledgements cost milliseconds, not seconds.
FAST = NodeConfig(receive_timeout_s=20.0, backoff=Backoff(initial_s=0.002, max_s=0.02))


def _refuses(order: dict[str, Any], role: str) -> dict[str, Any]:
    return {"abort": order["abort_at"] == role, "n": order["n"]}


@choreography(roles=["a", "b", "c"], initiator="a")
async def pipeline(op, order):
    """Concurrent sends, a shared branch, a stream of several messages, and a saga step each."""
    await op.call("a", "note", order)
    even = await op.broadcast("a", await op.locally("a", lambda o: o["n"] % 2 == 0, order))
    at_b = await op.comm("a", "b", order)
    at_c = await op.comm("a", "c", order)
    held = await op.transact(
        "b", Transaction("hold", "hold", "undo_hold", await op.locally("b", _refuses, at_b, "b"))
    )
    if even:
        via_c = await op.comm("b", "c", held)
        took = await op.transact(
            "c",
            Transaction("take", "take", "undo_take", await op.locally("c", _refuses, at_c, "c")),
        )
        back = await op.comm("c", "a", took)
        await op.call("c", "after", via_c)
    else:
        back = await op.comm("b", "a", held)
    stream = [await op.comm("b", "a", i) for i in range(3)]
    return await op.locally(
        "a", lambda b, *s: {"even": even, "back": b["key"], "stream": list(s)}, back, *stream
    )


class Recorder:
    """Services of every role that count each call per idempotency key (and never dedup)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def handler(self, operation: str, payload: Any, key: str) -> Any:
        self.calls[key] += 1
        if isinstance(payload, dict) and payload.get("abort"):
            raise BusinessAbort(operation, f"{operation} refused")
        return {"key": key}


async def _run(
    order: dict[str, Any], faults: NetworkFaults | None, dropped: list[int] | None = None
) -> tuple[dict, Counter, dict]:
    recorder = Recorder()
    services = dict.fromkeys("abc", recorder.handler)
    async with LocalCluster([pipeline], services=services, faults=faults, config=FAST) as c:
        results = await c.run(pipeline, order, session_id="s")
        states = c.states("s")
        if dropped is not None:
            dropped.append(
                sum(
                    n.metrics.total("accompanist_messages_duplicate_total")
                    for n in c.nodes.values()
                )
            )
    return results, recorder.calls, states


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    n=st.integers(0, 3),
    abort_at=st.sampled_from([None, "b", "c"]),
    duplicate=st.floats(0.0, 0.6),
    max_delay_s=st.floats(0.0, 0.005),
    lose_ack=st.floats(0.0, 0.4),
    seed=st.integers(0, 2**32 - 1),
)
def test_duplicates_reordering_and_lost_acks_change_no_result_and_apply_each_effect_once(
    n, abort_at, duplicate, max_delay_s, lose_ack, seed
):
    order = {"n": n, "abort_at": abort_at}
    faults = NetworkFaults(
        duplicate=duplicate, max_delay_s=max_delay_s, lose_ack=lose_ack, seed=seed
    )

    async def both() -> tuple[Any, Any]:
        return await _run(order, None), await _run(order, faults)

    (clean, clean_calls, clean_states), (faulty, faulty_calls, faulty_states) = asyncio.run(both())
    assert faulty == clean
    assert faulty_states == clean_states
    assert len(set(clean_states.values())) == 1, f"roles disagree: {clean_states}"
    assert dict(faulty_calls) == dict(clean_calls)
    assert all(count == 1 for count in faulty_calls.values()), faulty_calls


def test_the_fault_free_pipeline_takes_the_branch_and_stream_it_should():
    (results, calls, states) = asyncio.run(_run({"n": 2, "abort_at": None}, None))
    assert results["a"] == {"even": True, "back": "s:take", "stream": [0, 1, 2]}
    assert states == dict.fromkeys("abc", "completed")
    assert sorted(calls) == ["s:1", "s:12", "s:hold", "s:take"]


def test_every_duplicated_or_unacknowledged_batch_is_dropped_by_its_receiver():
    dropped: list[int] = []
    order = {"n": 2, "abort_at": None}
    clean = asyncio.run(_run(order, None))
    faulty = asyncio.run(_run(order, NetworkFaults(duplicate=1.0, lose_ack=0.5, seed=7), dropped))
    assert faulty == clean
    assert dropped[0] > 0, "the faults were not injected: no duplicate reached a receiver"
