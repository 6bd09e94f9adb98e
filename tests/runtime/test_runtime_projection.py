"""Endpoint projection, run in one process with `run_local`: where values land, how roles branch
together, how enclaves scope a sub-choreography, and how misuse is reported."""

from __future__ import annotations

import asyncio

import pytest

from accompanist_py.choreography import choreography
from accompanist_py.errors import (
    AbsentValueError,
    ChoreographyError,
    SelfSendError,
    UndeclaredRoleError,
)
from accompanist_py.located import Located
from accompanist_py.testing import run_local

# -- where values land -----------------------------------------------------------------------


@choreography(roles=["a", "b", "c"], initiator="a")
async def relay(op, x):
    at_b = await op.comm("a", "b", x)
    at_c = await op.comm("b", "c", await op.locally("b", lambda v: v + 1, at_b))
    return {
        "x_here": x.is_here,
        "at_b_here": at_b.is_here,
        "at_c_here": at_c.is_here,
        "owners": [sorted(x.owners), sorted(at_b.owners), sorted(at_c.owners)],
    }


def test_inputs_live_at_the_initiator_and_a_sent_value_only_at_its_receiver():
    results = run_local(relay, 1)
    assert results["a"] == {
        "x_here": True,
        "at_b_here": False,
        "at_c_here": False,
        "owners": [["a"], ["b"], ["c"]],
    }
    assert results["b"]["x_here"] is False and results["b"]["at_b_here"] is True
    assert results["b"]["at_c_here"] is False
    assert results["c"]["x_here"] is False and results["c"]["at_b_here"] is False
    assert results["c"]["at_c_here"] is True


def test_reading_a_located_value_elsewhere_raises_naming_its_owner_and_the_reader():
    value = Located(frozenset({"a"}), "b", 42)
    with pytest.raises(AbsentValueError, match=r"located at 'a' was read at role 'b'"):
        _ = value.value
    assert Located(frozenset({"a"}), "a", 42).value == 42


def test_branching_directly_on_a_located_value_is_refused():
    with pytest.raises(AbsentValueError, match="broadcast"):
        bool(Located(frozenset({"a"}), "a", True))


@choreography(roles=["a", "b"], initiator="a")
async def reads_input_at_b(op, x):
    await op.comm("a", "b", 0)
    return await op.locally("b", lambda: x.value)


def test_a_role_reading_a_value_it_does_not_own_fails_the_session_everywhere():
    results = run_local(reads_input_at_b, 7)
    reason = "value located at 'a' was read at role 'b'"
    for role in ("a", "b"):
        assert results[role]["outcome"] == "failed"
        assert reason in results[role]["reason"]


@choreography(roles=["a", "b"], initiator="a")
async def returns_located(op, x):
    return await op.comm("a", "b", x)


def test_a_returned_located_value_is_the_result_at_its_owner_and_none_elsewhere():
    assert run_local(returns_located, "v") == {"a": None, "b": "v"}


# -- locally ---------------------------------------------------------------------------------


async def _slow_double(v):
    await asyncio.sleep(0)
    return v * 2


@choreography(roles=["a", "b"], initiator="a")
async def local_steps(op, x):
    calls = []

    def sync_step(v):
        calls.append(v)
        return v + 1

    plus = await op.locally("a", sync_step, x)
    doubled = await op.locally("a", _slow_double, plus)
    keyword = await op.locally("a", lambda v, k: v * k, doubled, k=10, pure=True)
    at_b = await op.comm("a", "b", keyword)
    seen = await op.locally("b", lambda v: v, at_b)
    return {"calls": calls, "b_value": seen.value if seen.is_here else None}


def test_locally_runs_sync_and_async_functions_only_at_its_role_with_unwrapped_arguments():
    results = run_local(local_steps, 4)
    assert results["a"] == {"calls": [4], "b_value": None}
    assert results["b"] == {"calls": [], "b_value": 100}


# -- branching together ----------------------------------------------------------------------


@choreography(roles=["a", "b", "c"], initiator="a")
async def branch(op, flag):
    choice = await op.broadcast("a", await op.locally("a", lambda f: f, flag))
    if choice:
        got = await op.comm("a", "b", "yes")
        taken = "then"
    else:
        got = await op.comm("a", "c", "no")
        taken = "else"
    return {"taken": taken, "received": got.value if got.is_here else None}


@pytest.mark.parametrize("flag", [True, False])
def test_every_role_takes_the_branch_the_deciding_role_broadcast(flag):
    results = run_local(branch, flag)
    expected = "then" if flag else "else"
    assert {r: v["taken"] for r, v in results.items()} == dict.fromkeys("abc", expected)
    if flag:
        assert results["b"]["received"] == "yes" and results["c"]["received"] is None
    else:
        assert results["c"]["received"] == "no" and results["b"]["received"] is None


@choreography(roles=["a", "b", "c"], initiator="a")
async def told_only_b(op, flag):
    early = await op.comm("a", "c", "before the decision")
    choice = await op.broadcast("a", await op.locally("a", lambda f: f, flag), to=["b"])
    if choice:  # c was never told and learned nothing since: it must not guess
        return "then"
    return f"else {early.is_here}"


def test_branching_on_a_choice_the_role_was_never_told_fails_the_session_naming_the_fix():
    results = run_local(told_only_b, True)
    for role in ("a", "b", "c"):
        assert results[role]["outcome"] == "failed", results
        assert "never told" in results[role]["reason"]
        assert "'a'" in results[role]["reason"] and "'c'" in results[role]["reason"]


@choreography(roles=["a", "b", "c"], initiator="a")
async def learned_from_b(op, flag):
    choice = await op.broadcast("a", await op.locally("a", lambda f: f, flag), to=["b"])
    await op.comm("b", "c", "carries what b knows")
    return "then" if choice else "else"


@pytest.mark.parametrize("flag", [True, False])
def test_a_role_not_told_a_choice_can_branch_on_it_after_a_later_message_from_a_role_that_knew(
    flag,
):
    results = run_local(learned_from_b, flag)
    expected = "then" if flag else "else"
    assert results == {"a": expected, "b": expected, "c": expected}


# -- enclaves --------------------------------------------------------------------------------


@choreography(roles=["x", "y"], initiator="x")
async def pair(op, v):
    at_y = await op.comm("x", "y", v)
    return {"role": op.role, "value": at_y.value if at_y.is_here else None}


@choreography(roles=["a", "b", "c"], initiator="a")
async def with_enclave(op, v):
    at_b = await op.comm("a", "b", v)
    inner = await op.enclave(pair, at_b, roles={"x": "b", "y": "c"})
    after = await op.comm("a", "c", "after")
    if isinstance(inner, Located):
        return {"skipped": True, "members": sorted(inner.owners), "present": inner.is_here}
    return {**inner, "after": after.value if after.is_here else None}


def test_an_enclave_runs_over_a_renamed_subset_and_roles_outside_it_get_nothing():
    results = run_local(with_enclave, 5)
    assert results["b"] == {"role": "x", "value": None, "after": None}
    assert results["c"] == {"role": "y", "value": 5, "after": "after"}
    assert results["a"] == {"skipped": True, "members": ["b", "c"], "present": False}


@choreography(roles=["a", "b"], initiator="a")
async def same_names(op, v):
    at_b = await op.comm("a", "b", v)
    return at_b.value if at_b.is_here else "not here"


@choreography(roles=["a", "b", "c"], initiator="a")
async def enclave_same_names(op, v):
    inner = await op.enclave(same_names, v)
    await op.comm("a", "c", "so that c takes part")
    return inner if not isinstance(inner, Located) else "outside"


def test_an_enclave_without_a_role_map_keeps_the_role_names():
    assert run_local(enclave_same_names, "v") == {"a": "not here", "b": "v", "c": "outside"}


# -- misuse ----------------------------------------------------------------------------------


@choreography(roles=["a", "b"], initiator="a")
async def names_an_undeclared_role(op):
    try:
        await op.comm("a", "zed", 1)
    except UndeclaredRoleError as exc:
        caught = str(exc)
    await op.comm("a", "b", "still in step")
    return caught


def test_an_undeclared_role_raises_undeclared_role_error_at_every_role():
    results = run_local(names_an_undeclared_role)
    for role in ("a", "b"):
        assert "'zed' is not declared" in results[role]


@choreography(roles=["a", "b"], initiator="a")
async def sends_to_itself(op):
    try:
        await op.comm("a", "a", 1)
    except SelfSendError as exc:
        caught = f"comm: {exc}"
    try:
        await op.broadcast("a", 1, to=["a"])
    except SelfSendError as exc:
        caught += f" | broadcast: {exc}"
    await op.comm("a", "b", "still in step")
    return caught


def test_sending_from_a_role_to_itself_raises_self_send_error():
    results = run_local(sends_to_itself)
    assert results["a"] == results["b"]
    assert results["a"].startswith("comm: comm from role 'a' to itself")
    assert "broadcast: broadcast from role 'a' to itself" in results["a"]


@choreography(roles=["a", "b"], initiator="a")
async def uncaught_undeclared(op):
    # The misuse comes before any message to b: b then hears only the abort. (A message
    # followed at once by an abort trips a runtime bug, shown in test_runtime_sagas.py.)
    await op.locally("nobody", lambda: 1)
    await op.comm("a", "b", 1)


def test_an_uncaught_misuse_fails_the_session_with_the_error_as_reason():
    results = run_local(uncaught_undeclared)
    assert set(results) == {"a", "b"}
    for role in ("a", "b"):
        assert results[role]["outcome"] == "failed"
        assert "role 'nobody' is not declared" in results[role]["reason"]


def test_a_choreography_with_star_args_is_rejected_at_declaration():
    with pytest.raises(ChoreographyError, match=r"\*args"):

        @choreography(roles=["a", "b"])
        async def variadic(op, *inputs):
            return inputs


def test_a_choreography_with_duplicate_roles_or_an_unknown_initiator_is_rejected():
    with pytest.raises(ChoreographyError, match="distinct"):
        choreography(roles=["a", "a"])
    with pytest.raises(ChoreographyError, match="initiator 'z'"):

        @choreography(roles=["a", "b"], initiator="z")
        async def nowhere(op):
            return None


def test_a_plain_function_is_not_a_choreography():
    with pytest.raises(ChoreographyError, match="async"):

        @choreography(roles=["a"])
        def not_async(op):
            return None
