"""Attacks on real sidecar processes over loopback mutual TLS, each a test that now holds.

Three sidecars (roles a, b, c; tests/runtime/runtime_cluster.py) serve HTTPS with one CA per
cluster. The test plays the attackers, each as what it presents (`callers`): no certificate, a
certificate from another CA, an expired one from the deployment CA, one naming roles of
another trust domain, the client certificate "tester", a bearer token, or a real peer's
certificate used to speak for a role it does not name. Every forgery is built in the wire
format the transports use (`Message.to_wire`, msgpack; a stream frame is `[batch_id, rows]`)
and sent to `POST /messages` and over `GET /stream`. What must hold:

- a caller without a valid deployment certificate is refused at the handshake; one whose
  certificate names no role of the deployment gets 401 on the peer routes; a peer gets each
  message refused whose sender its certificate does not name, and a DECISION refused unless
  it is the initiator; `/ready` only for the roles its certificate names (403 otherwise);
- a refused message leaves nothing behind: its session is unknown where it was sent, a saga
  it aimed at runs on untouched, and a real session with the forged id completes everywhere;
- clients need a client certificate or the right bearer token (401, nothing stored), and a
  session is unknown (404) to every client but the one that started it;
- bodies, frames, slow connections and session counts are bounded: 413, a 1009 close, slow
  connections closed by the server, 503 with Retry-After, and the sidecar stays healthy;
- a config with a typo or plaintext on a non-loopback address does not start (exit 2).

Deadlines here are liveness bounds, generous on purpose: nothing asserts how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import ssl
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from runtime_cluster import ROLES, Cluster

from accompanist_py import certs
from accompanist_py.message import Control, Kind, Message, encode_batch, encode_value
from accompanist_py.tls import TLSFiles, role_uri, sidecar_uri
from accompanist_py.transport.http import CONTENT_TYPE
from accompanist_py.transport.stream import STREAM_PATH

TOKEN = "operator-token-3f9c2a71d5e8"  # the bearer token of client "operator" (guarded)
MB = 1024 * 1024
LIMIT = 4 * MB  # max_body_bytes and max_frame_bytes of the guarded deployment
HANDSHAKE_REFUSED = "handshake refused"
ALL_REFUSED = "every message refused"
ROUTES = ("messages", "stream")
ROUTE3_ARGS = [{"route": "left", "n": 3}]
ROUTE3_RESULT = {"route": "left", "value": 30}
VETO = {"reason": "forged veto", "failed": False, "involved": []}
ABORT = {"outcome": "abort", "reason": "forged decision", "failed": False}
COMMIT = {"outcome": "commit", "reason": None, "failed": False}

Refusals = list[tuple[int, str]]


# -- who calls ----------------------------------------------------------------------------------


def callers(cluster: Cluster) -> dict[str, Callable[[], ssl.SSLContext]]:
    """Every kind of caller, as a maker of what it presents in the handshake.

    All of them trust the deployment CA, so only their own certificate (or its absence) can be
    what a sidecar refuses. The forgers' certificates claim roles a and b, the senders of the
    forgeries, so that nothing but the certificate itself is wrong.
    """
    ca, ca_key = cluster.certs / "ca.pem", cluster.certs / "ca-key.pem"
    out = cluster.dir / "intruders"
    other_ca = certs.make_ca(out / "other-ca")
    now = datetime.now(UTC)
    forger = [sidecar_uri("forger"), role_uri("a"), role_uri("b")]
    leaves = {
        "another-ca": certs.sidecar_certificate(*other_ca, out, "stranger", ["a", "b"]),
        "expired": certs.issue(
            ca,
            ca_key,
            out,
            "expired",
            uris=forger,
            not_before=now - timedelta(days=30),
            not_after=now - timedelta(days=1),
        ),
        "another-trust-domain": certs.issue(
            ca, ca_key, out, "elsewhere", uris=[role_uri("a", "other"), role_uri("b", "other")]
        ),
        "client": (cluster.certs / "client-tester.pem", cluster.certs / "client-tester-key.pem"),
        **{
            f"peer-{r}": (
                cluster.certs / f"sidecar-{r}.pem",
                cluster.certs / f"sidecar-{r}-key.pem",
            )
            for r in ROLES
        },
    }
    made: dict[str, Callable[[], ssl.SSLContext]] = {
        name: TLSFiles(ca, cert, key).client_context for name, (cert, key) in leaves.items()
    }
    made["no-certificate"] = partial(ssl.create_default_context, cafile=str(ca))
    return made


@dataclass
class Deployment:
    """A running TLS cluster and the callers that attack it."""

    cluster: Cluster
    contexts: dict[str, Callable[[], ssl.SSLContext]]

    def http(self, caller: str, authorization: str | None = None) -> aiohttp.ClientSession:
        """A client session presenting what `caller` presents (and an Authorization header)."""
        headers = {"Authorization": authorization} if authorization is not None else None
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.contexts[caller]()),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=60),
        )

    def operator(self) -> aiohttp.ClientSession:
        """The bearer-token client "operator", without a certificate."""
        return self.http("no-certificate", f"Bearer {TOKEN}")


@contextlib.contextmanager
def deployed(cluster: Cluster) -> Iterator[Deployment]:
    """Start `cluster`; every process is stopped on leaving, whatever happened."""
    try:
        cluster.start()
        yield Deployment(cluster, callers(cluster))
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """TLS without tokens: the handshake itself needs a certificate from the deployment CA."""
    with deployed(Cluster(tmp_path_factory.mktemp("peers"), tls=True)) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """TLS and a bearer token (so a certificate is optional in the handshake), small body and
    frame limits, a 2 s header timeout and at most 2 sessions per sidecar."""
    cluster = Cluster(
        tmp_path_factory.mktemp("guarded"),
        tls=True,
        tokens={"operator": TOKEN},
        timeouts={"header_s": 2.0},
        limits={"max_sessions": 2, "max_body_bytes": LIMIT, "max_frame_bytes": LIMIT},
    )
    with deployed(cluster) as deployment:
        yield deployment


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Deployment]:
    """A TLS deployment of one test's own: its stalled saga needs a service nobody healed."""
    with deployed(Cluster(tmp_path / "fresh", tls=True)) as deployment:
        yield deployment


# -- what travels -------------------------------------------------------------------------------


def message(
    chor: str, session: str, sender: str, receiver: str, seq: int, kind: Kind, body: Any
) -> Message:
    return Message(
        chor, session, sender, receiver, seq, kind, encode_value(body), {"t": time.time()}
    )


def forgeries(prefix: str) -> dict[str, list[Message]]:
    """One forgery of each kind, each for its own route3 session `<prefix>-<kind>`, by the
    role it is sent to: DATA, CHOICE and an abort DECISION as a to b, DONE and ABORT as b to a.

    Each would show if it were taken: a DATA or CHOICE starts the session at b with a seq-0
    message the real a never sent, an abort DECISION leaves a tombstone at b, and a vote at a
    makes a answer b "presumed abort" (a tombstone at b too); then the real session with that
    id fails instead of completing.
    """
    forged = partial(message, "route3")
    return {
        "b": [
            forged(f"{prefix}-data", "a", "b", 0, Kind.DATA, {"forged": True}),
            forged(f"{prefix}-choice", "a", "b", 0, Kind.CHOICE, "right"),
            forged(f"{prefix}-decision", "a", "b", Control.DECISION, Kind.CONTROL, ABORT),
        ],
        "a": [
            forged(f"{prefix}-done", "b", "a", Control.DONE, Kind.CONTROL, {"involved": []}),
            forged(f"{prefix}-abort", "b", "a", Control.ABORT, Kind.CONTROL, VETO),
        ],
    }


async def deliver(
    http: aiohttp.ClientSession, route: str, url: str, *batches: list[Message]
) -> list[Refusals]:
    """Send `batches` to the sidecar at `url` as a peer would, and return each one's refusals.

    `messages`: one POST each; `stream`: one frame each, all on one WebSocket. Raises
    `aiohttp.ClientResponseError` for an answer other than 200 (or 101 for the stream).
    """
    answers: dict[int, Any] = {}
    if route == "messages":
        for i, batch in enumerate(batches):
            async with http.post(
                f"{url}/messages",
                data=encode_batch(batch),
                headers={"Content-Type": CONTENT_TYPE},
                raise_for_status=True,
            ) as resp:
                answers[i] = msgpack.unpackb(await resp.read(), raw=False)
    else:
        async with http.ws_connect(url + STREAM_PATH) as ws:
            for i, batch in enumerate(batches):
                frame = [i, [m.to_wire() for m in batch]]
                await ws.send_bytes(msgpack.packb(frame, use_bin_type=True))
            while len(answers) < len(batches):
                frame = await ws.receive(timeout=30)
                assert frame.type is aiohttp.WSMsgType.BINARY, frame
                batch_id, answer = msgpack.unpackb(frame.data, raw=False)
                answers[batch_id] = answer
    assert all(isinstance(a, list) for a in answers.values()), answers
    return [[tuple(r) for r in answers[i]] for i in range(len(batches))]


async def forge(http: aiohttp.ClientSession, route: str, url: str, batch: list[Message]) -> str:
    """What the sidecar at `url` makes of a forged batch: HANDSHAKE_REFUSED, an HTTP status,
    ALL_REFUSED (every message refused by its sender), or what it took."""
    try:
        (refused,) = await deliver(http, route, url, batch)
    except aiohttp.ClientConnectionError:
        return HANDSHAKE_REFUSED
    except aiohttp.ClientResponseError as exc:
        return str(exc.status)
    senders = [i for i, reason in refused if reason.startswith("sender:")]
    return ALL_REFUSED if senders == list(range(len(batch))) else f"took some: {refused}"


FORGERS = {  # who forges, and what the peers-only deployment answers it
    "no-certificate": HANDSHAKE_REFUSED,
    "another-ca": HANDSHAKE_REFUSED,
    "expired": HANDSHAKE_REFUSED,
    "another-trust-domain": "401",
    "client": "401",
    "peer-c": ALL_REFUSED,  # a real peer, speaking for a and b
}


# -- what is left -------------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]], what: str, deadline_s: float = 60) -> None:
    """Poll `check` until it holds; fail naming `what` after `deadline_s` (a liveness bound)."""
    end = time.monotonic() + deadline_s
    while not await check():
        assert time.monotonic() < end, f"not within {deadline_s}s: {what}"
        await asyncio.sleep(0.05)


async def states(cluster: Cluster, http: aiohttp.ClientSession, sid: str) -> dict[str, Any]:
    """The state of `sid` at every role (None where it is unknown)."""
    found = {r: await cluster.status(http, r, sid) for r in ROLES}
    return {r: None if st is None else st["state"] for r, st in found.items()}


async def ops(cluster: Cluster, http: aiohttp.ClientSession, role: str, sid: str) -> Counter[str]:
    """How often each operation took effect for `sid` at the service of `role`."""
    effects = (await cluster.effects(http, role))["effects"]
    return Counter(e["operation"] for e in effects if e["key"].startswith(f"{sid}:"))


async def assert_healthy(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    for role in ROLES:
        async with http.get(f"{cluster.sidecar_url(role)}/health") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["quarantined"] == []


async def assert_no_trace_and_the_ids_run(
    cluster: Cluster, forged: dict[str, list[Message]]
) -> None:
    """No forged session exists where it was sent, and a real session with each forged id
    then completes, with the same result, at every role."""
    sids = [m.session for batch in forged.values() for m in batch]
    async with cluster.http() as http:
        for role, batch in forged.items():
            for msg in batch:
                assert await cluster.status(http, role, msg.session) is None, msg
        answers = await asyncio.gather(*(cluster.run(http, "route3", s, ROUTE3_ARGS) for s in sids))
        assert [a["result"] for a in answers] == [ROUTE3_RESULT] * len(sids), answers
        done = await cluster.wait_terminal(http, sids)
        assert {st["state"] for per in done.values() for st in per.values()} == {"completed"}
        await assert_healthy(cluster, http)


UNDECIDED = {"a": "running", "b": "awaiting", "c": "awaiting"}  # b and c voted, a is busy


async def stall(cluster: Cluster, http: aiohttp.ClientSession, sid: str) -> None:
    """Start stalled_saga as `sid` and return once b and c have voted: a's last step is
    answered 503 until `heal`, so the saga stays undecided for as long as the test needs."""
    async with http.post(
        f"{cluster.sidecar_url('a')}/sessions/stalled_saga",
        json={"session_id": sid, "args": [{}], "wait": False},
    ) as resp:
        assert resp.status == 202, await resp.text()

    async def voted() -> bool:
        return await states(cluster, http, sid) == UNDECIDED

    await until(voted, f"b and c vote in {sid}")


def heal(cluster: Cluster) -> None:
    """From now on a's service answers `stall` (tests/runtime/tiny_service.py)."""
    (cluster.dir / "service-a.db.healed").touch()


STALLED_OPS = {"a": {"reserve": 1, "stall": 1}, "b": {"charge": 1}, "c": {"ship": 1}}


async def assert_completes_untouched(
    cluster: Cluster, http: aiohttp.ClientSession, sid: str
) -> None:
    """Heal the stalled `sid`: it completes at every role, every step once, none undone."""
    heal(cluster)
    done = await cluster.wait_terminal(http, [sid])
    assert {r: st["state"] for r, st in done[sid].items()} == dict.fromkeys(ROLES, "completed")
    for role, expected in STALLED_OPS.items():
        assert await ops(cluster, http, role, sid) == expected, role


# -- 1. forged messages -------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("forger", sorted(FORGERS))
async def test_forged_messages_of_every_kind_are_refused_and_leave_no_trace(peers, forger, route):
    forged = forgeries(f"{forger}-{route}")
    async with peers.http(forger) as http:
        for role, batch in forged.items():
            url = peers.cluster.sidecar_url(role)
            assert await forge(http, route, url, batch) == FORGERS[forger], role
    await assert_no_trace_and_the_ids_run(peers.cluster, forged)


@pytest.mark.parametrize(
    "forger", [f for f, answer in FORGERS.items() if answer == HANDSHAKE_REFUSED]
)
async def test_the_handshake_itself_fails_without_a_valid_deployment_certificate(peers, forger):
    # Under TLS 1.3 the server judges the client's certificate after the client has finished
    # its half of the handshake (the refusal then shows as a closed connection); under TLS
    # 1.2 it is the handshake that fails: with the server's alert, or with the reset of the
    # connection the server aborted before the alert was read.
    for role in ROLES:
        context = peers.contexts[forger]()
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await asyncio.open_connection(
                "127.0.0.1", peers.cluster.sidecar_ports[role], ssl=context
            )


async def test_forged_votes_and_decisions_leave_a_running_saga_untouched(fresh):
    cluster = fresh.cluster
    sid = "live"
    forged = partial(message, "stalled_saga", sid)
    aimed = {  # what would end the saga if it were believed
        "a": [forged("b", "a", Control.ABORT, Kind.CONTROL, VETO)],
        "b": [forged("a", "b", Control.DECISION, Kind.CONTROL, ABORT)],
        "c": [forged("a", "c", Control.DECISION, Kind.CONTROL, ABORT)],
    }
    async with cluster.http() as http:
        await stall(cluster, http, sid)
        for forger, answer in FORGERS.items():
            async with fresh.http(forger) as attacker:
                for route in ROUTES:
                    for role, batch in aimed.items():
                        url = cluster.sidecar_url(role)
                        assert await forge(attacker, route, url, batch) == answer, forger
        assert await states(cluster, http, sid) == UNDECIDED
        await assert_completes_untouched(cluster, http, sid)


# -- 2. a fake stream peer ----------------------------------------------------------------------


async def test_one_stream_speaks_only_for_the_role_its_certificate_names(peers):
    as_c = partial(message, "route3", sender="c", receiver="a", kind=Kind.CONTROL)
    as_b = partial(message, "route3", sender="b", receiver="a", kind=Kind.CONTROL)
    first = [
        as_c("own-query", seq=Control.QUERY, body={}),
        as_b("as-b-query", seq=Control.QUERY, body={}),
        as_b("as-b-done", seq=Control.DONE, body={"involved": []}),
        as_b("as-b-abort", seq=Control.ABORT, body=VETO),
    ]
    second = [as_b("as-b-again", seq=Control.DONE, body={"involved": []}), first[0]]
    cluster = peers.cluster
    async with peers.http("peer-c") as http:
        answers = await deliver(http, "stream", cluster.sidecar_url("a"), first, second)
    assert [[i for i, _ in refused] for refused in answers] == [[1, 2, 3], [0]], answers
    for refused in answers:
        for _, reason in refused:
            assert reason == "sender: the connection is certified for role(s) ['c'], not 'b'"
    async with cluster.http() as client:
        for msg in first + second:
            assert await cluster.status(client, "a", msg.session) is None


# -- 3. a decision from a peer that is not the initiator ----------------------------------------


async def test_a_decision_from_a_peer_that_is_not_the_initiator_is_refused(fresh):
    cluster = fresh.cluster
    sid = "undecided"
    decide = partial(message, "stalled_saga", sid, seq=Control.DECISION, kind=Kind.CONTROL)
    async with cluster.http() as http:
        await stall(cluster, http, sid)
        for peer, participant in (("c", "b"), ("b", "c")):
            batch = [
                decide(peer, participant, body=COMMIT),
                decide(peer, participant, body=ABORT),
            ]
            async with fresh.http(f"peer-{peer}") as liar:
                for route in ROUTES:
                    (refused,) = await deliver(liar, route, cluster.sidecar_url(participant), batch)
                    assert [i for i, _ in refused] == [0, 1], refused
                    assert all("only the initiator 'a' sends decision" in r for _, r in refused)
        assert await states(cluster, http, sid) == UNDECIDED
        await assert_completes_untouched(cluster, http, sid)


# -- 4. /ready ----------------------------------------------------------------------------------


async def announce(http: aiohttp.ClientSession, url: str, roles: list[str]) -> str:
    """POST /ready as a sidecar hosting `roles`; the answer's status, or HANDSHAKE_REFUSED."""
    try:
        async with http.post(f"{url}/ready", json={"sidecar": "c", "roles": roles}) as resp:
            return str(resp.status)
    except aiohttp.ClientConnectionError:
        return HANDSHAKE_REFUSED


@pytest.mark.parametrize(
    ("deployment", "caller", "authorization", "answer"),
    [
        ("peers", "no-certificate", None, HANDSHAKE_REFUSED),
        ("peers", "client", None, "401"),
        ("guarded", "no-certificate", None, "401"),
        ("guarded", "no-certificate", f"Bearer {TOKEN}", "401"),
    ],
    ids=["no-certificate", "client-certificate", "no-certificate-optional", "bearer-token"],
)
async def test_ready_from_a_caller_that_is_not_a_certified_peer_is_refused(
    request, deployment, caller, authorization, answer
):
    target: Deployment = request.getfixturevalue(deployment)
    async with target.http(caller, authorization) as http:
        assert await announce(http, target.cluster.sidecar_url("a"), ["c"]) == answer


@pytest.mark.parametrize(
    ("roles", "answer"),
    [(["a"], "403"), (["b"], "403"), (["a", "c"], "403"), (["c"], "200")],
    ids=["another-role", "the-receivers-role", "its-own-and-another", "its-own"],
)
async def test_ready_is_taken_only_for_roles_the_certificate_names(peers, roles, answer):
    async with peers.http("peer-c") as http:
        assert await announce(http, peers.cluster.sidecar_url("b"), roles) == answer


# -- 5. clients ---------------------------------------------------------------------------------

UNAUTHENTICATED = {  # a caller, and the Authorization header it sends
    "no-credentials": ("no-certificate", None),
    "a-wrong-token": ("no-certificate", "Bearer operator-token-0000000000"),
    "the-token-without-its-scheme": ("no-certificate", TOKEN),
    "the-token-as-basic": ("no-certificate", f"Basic {TOKEN}"),
    "a-peer-certificate": ("peer-c", None),
}


@pytest.mark.parametrize("case", sorted(UNAUTHENTICATED))
async def test_a_client_without_valid_credentials_gets_401_and_nothing_is_stored(guarded, case):
    cluster = guarded.cluster
    sid, owned = f"unauthenticated-{case}", f"owned-{case}"
    url = cluster.sidecar_url("a")
    async with guarded.http(*UNAUTHENTICATED[case]) as http, cluster.http() as tester:
        await cluster.run(tester, "route3", owned, ROUTE3_ARGS)
        body = {"session_id": sid, "args": ROUTE3_ARGS}
        async with http.post(f"{url}/sessions/route3", json=body) as resp:
            assert resp.status == 401, await resp.text()
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        for unknown_or_not in (sid, owned):
            async with http.get(f"{url}/sessions/{unknown_or_not}") as resp:
                assert resp.status == 401, await resp.text()
        assert await states(cluster, tester, sid) == dict.fromkeys(ROLES)
        async with guarded.operator() as operator:
            assert await cluster.status(operator, "a", sid) is None


async def test_only_authenticated_callers_see_the_nodes_details(guarded):
    """Anyone may ask whether a sidecar is alive; its roles, sessions, the ids of quarantined
    sessions and its metrics are for authenticated clients and certified peers only."""
    url = guarded.cluster.sidecar_url("a")
    async with guarded.http("no-certificate") as anyone:
        async with anyone.get(f"{url}/health") as resp:
            assert resp.status == 200 and await resp.json() == {"status": "ok"}
        async with anyone.get(f"{url}/metrics") as resp:
            assert resp.status == 401, await resp.text()
    async with guarded.operator() as operator, guarded.http("peer-c") as peer:
        for caller in (operator, peer):
            async with caller.get(f"{url}/health") as resp:
                details = await resp.json()
                assert resp.status == 200 and {"roles", "quarantined"} <= set(details), details
            async with caller.get(f"{url}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
                names = {f.name for f in text_string_to_metric_families(await resp.text())}
                assert {"accompanist_sessions_started", "process_cpu_seconds"} <= names


# The owner travels with the session's messages (header "o"), so participants know it too.
@pytest.mark.parametrize("role", ["a", "b", "c"])
async def test_a_session_is_unknown_to_every_client_but_the_one_that_started_it(guarded, role):
    cluster = guarded.cluster
    mine, theirs = f"tester-{role}", f"operator-{role}"
    async with cluster.http() as tester, guarded.operator() as operator:
        await cluster.run(tester, "route3", mine, ROUTE3_ARGS)
        await cluster.run(operator, "route3", theirs, ROUTE3_ARGS)
        await cluster.wait_terminal(tester, [mine])
        await cluster.wait_terminal(operator, [theirs])
        assert await cluster.status(operator, role, mine) is None
        assert await cluster.status(tester, role, theirs) is None
        assert (await cluster.status(tester, role, mine))["state"] == "completed"
        assert (await cluster.status(operator, role, theirs))["state"] == "completed"


async def test_a_token_client_starts_and_reads_its_own_sessions_but_cannot_join_anothers(guarded):
    cluster = guarded.cluster
    url = f"{cluster.sidecar_url('a')}/sessions"
    async with cluster.http() as tester, guarded.operator() as operator:
        await cluster.run(tester, "route3", "the-testers", ROUTE3_ARGS)
        body = {"session_id": "the-testers", "args": ROUTE3_ARGS}
        async with operator.post(f"{url}/route3", json=body) as resp:
            assert resp.status == 404, await resp.text()
        own = await cluster.run(operator, "route3", "the-operators", ROUTE3_ARGS)
        assert own["result"] == ROUTE3_RESULT
        async with operator.get(f"{url}/the-operators") as resp:
            assert resp.status == 200
            assert (await resp.json())["state"] == "completed"


async def test_a_sessions_events_and_listing_are_for_its_own_client_only(guarded):
    """The inspector's routes are client routes: 401 without credentials, and another
    client's session is unknown (404) and unlisted, at every role."""
    cluster = guarded.cluster
    async with cluster.http() as tester, guarded.operator() as operator:
        await cluster.run(tester, "route3", "tester-events", ROUTE3_ARGS)
        await cluster.wait_terminal(tester, ["tester-events"])
        async with guarded.http("no-certificate") as stranger:
            for role in ROLES:
                url = cluster.sidecar_url(role)
                for path in ("/sessions/tester-events/events", "/sessions"):
                    async with stranger.get(f"{url}{path}") as resp:
                        assert resp.status == 401, (role, path, await resp.text())
        for role in ROLES:
            assert await cluster.session_events(operator, role, "tester-events") is None
            events = await cluster.session_events(tester, role, "tester-events")
            assert events[0]["kind"] == "started" and events[-1]["kind"] == "finished"
            url = f"{cluster.sidecar_url(role)}/sessions"
            async with operator.get(url) as resp:
                listed = {s["session_id"] for s in (await resp.json())["sessions"]}
            assert "tester-events" not in listed
            async with tester.get(url) as resp:
                listed = {s["session_id"] for s in (await resp.json())["sessions"]}
            assert "tester-events" in listed


# -- 6. sizes -----------------------------------------------------------------------------------


def rss(pid: int) -> int:
    """The resident memory of process `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def post_oversized(http: aiohttp.ClientSession, url: str) -> int:
    async with http.post(url, data=b"\0" * (2 * LIMIT)) as resp:
        return resp.status


async def send_oversized_frame(http: aiohttp.ClientSession, url: str) -> Any:
    """Send a frame of twice the limit over a fresh stream; how the server closed it."""
    async with http.ws_connect(url + STREAM_PATH) as ws:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await ws.send_bytes(b"\0" * (2 * LIMIT))
        frame = await ws.receive(timeout=60)
    assert frame.type is aiohttp.WSMsgType.CLOSE, frame
    return frame.data


async def test_a_body_over_max_body_bytes_is_answered_413_and_stores_nothing(guarded):
    cluster = guarded.cluster
    async with guarded.http("peer-c") as peer:
        assert await post_oversized(peer, f"{cluster.sidecar_url('b')}/messages") == 413
    big = {"session_id": "oversized", "args": [{"route": "left", "n": 3, "pad": "x" * LIMIT}]}
    async with cluster.http() as tester:
        async with tester.post(f"{cluster.sidecar_url('a')}/sessions/route3", json=big) as resp:
            assert resp.status == 413
        assert await states(cluster, tester, "oversized") == dict.fromkeys(ROLES)
        await assert_healthy(cluster, tester)


async def test_a_frame_over_max_frame_bytes_closes_the_stream_with_1009(guarded):
    cluster = guarded.cluster
    port = cluster.sidecar_ports["b"]
    async with guarded.http("peer-c") as peer:
        close = await send_oversized_frame(peer, cluster.sidecar_url("b"))
    assert close == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    # A frame header announcing a terabyte, and none of it: closed at once, nothing awaited.
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=guarded.contexts["peer-c"]()
    )
    try:
        writer.write(
            b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        writer.write(b"\x82\xff" + struct.pack("!Q", 2**40) + b"mask")
        async with asyncio.timeout(60):
            rest = await reader.read()
        assert rest[:4] == b"\x88\x02" + struct.pack("!H", aiohttp.WSCloseCode.MESSAGE_TOO_BIG)
    finally:
        writer.close()
    async with cluster.http() as tester:
        await assert_healthy(cluster, tester)


async def test_oversized_bodies_and_frames_leave_the_sidecar_healthy_with_bounded_memory(guarded):
    cluster = guarded.cluster
    sidecar = cluster.sidecars["b"].proc
    assert sidecar is not None
    url = cluster.sidecar_url("b")
    before = rss(sidecar.pid)
    async with guarded.http("peer-c") as peer:
        for _ in range(3):
            assert await post_oversized(peer, f"{url}/messages") == 413
            assert await send_oversized_frame(peer, url) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    grown = rss(sidecar.pid) - before
    assert grown < 100 * MB, f"the sidecar grew by {grown / MB:.0f} MB"
    async with cluster.http() as tester:
        await assert_healthy(cluster, tester)
        await cluster.run(tester, "route3", "after-oversized", ROUTE3_ARGS)


# -- 7. slow connections ------------------------------------------------------------------------

SLOW = 300
SLOW_KINDS = ("silent", "half-a-hello", "handshake-only", "unfinished-headers", "trickled-headers")


async def open_slow(port: int, kind: str, context: ssl.SSLContext) -> Any:
    """A connection that never finishes its handshake or its request headers."""
    if kind in ("silent", "half-a-hello"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if kind == "half-a-hello":
            writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        if kind != "handshake-only":
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    await writer.drain()
    return kind, reader, writer


async def closed_by_the_server(kind: str, reader: asyncio.StreamReader, writer: Any) -> None:
    """Return once the server has closed the connection; a trickler keeps sending a header
    byte every 0.2 s meanwhile, as a slowloris does to look alive."""
    try:
        while True:
            if kind == "trickled-headers" and not writer.is_closing():
                writer.write(b"x")
            try:
                if not await asyncio.wait_for(reader.read(4096), 0.2):
                    return
            except TimeoutError:
                continue
    except (ConnectionError, ssl.SSLError, OSError):
        return


async def test_slow_connections_are_closed_by_the_server_while_requests_go_through(guarded):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * SLOW:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * SLOW), hard))
    cluster = guarded.cluster
    port = cluster.sidecar_ports["a"]
    without_certificate = guarded.contexts["no-certificate"]()
    slow = await asyncio.gather(
        *(
            open_slow(port, SLOW_KINDS[i % len(SLOW_KINDS)], without_certificate)
            for i in range(SLOW)
        )
    )
    try:
        async with cluster.http() as tester:
            await assert_healthy(cluster, tester)
            await cluster.run(tester, "route3", "during-slowloris", ROUTE3_ARGS)
            closing = {asyncio.ensure_future(closed_by_the_server(*c)): c[0] for c in slow}
            _, still_open = await asyncio.wait(closing, timeout=60)
            for task in still_open:
                task.cancel()
            kinds = Counter(closing[task] for task in still_open)
            assert not still_open, f"{len(still_open)} of {SLOW} slow connections open: {kinds}"
            await assert_healthy(cluster, tester)
            await cluster.run(tester, "route3", "after-slowloris", ROUTE3_ARGS)
    finally:
        for _, _, writer in slow:
            writer.close()


async def test_a_peer_holds_at_most_its_connections_and_idle_ones_are_closed(tmp_path):
    """max_connections_per_peer: a certified identity's next connection is closed at once while
    others still get in; idle_s: a keep-alive connection that asks nothing more is closed."""
    cluster = Cluster(
        tmp_path / "limits",
        tls=True,
        timeouts={"header_s": 120.0, "idle_s": 1.0},
        limits={"max_connections_per_peer": 3},
    )
    with deployed(cluster) as deployment:
        port = cluster.sidecar_ports["a"]
        # The test client's identity, which no sidecar holds connections with; another
        # certificate of the same CA stands for everyone else.
        mine, other = deployment.contexts["client"], deployment.contexts["another-trust-domain"]
        held = [await asyncio.open_connection("127.0.0.1", port, ssl=mine()) for _ in range(3)]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=mine())
            # Long before the 120 s header deadline: the fourth is refused, not timed out.
            assert await asyncio.wait_for(reader.read(), 60) == b""
            writer.close()
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=other())) as http,
                http.get(f"{cluster.sidecar_url('a')}/health") as resp,
            ):
                assert resp.status == 200
        finally:
            for _, held_writer in held:
                held_writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=other())
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        # The answer, then nothing more asked: read() ends only when the server closes.
        answered = await asyncio.wait_for(reader.read(), 60)
        assert answered.startswith(b"HTTP/1.1 200"), answered[:200]
        writer.close()


# -- 8. admission -------------------------------------------------------------------------------


async def start_stalled(http: aiohttp.ClientSession, url: str, sid: str) -> tuple[int, Any]:
    """Start stalled_saga as `sid` without waiting: (status, Retry-After header)."""
    body = {"session_id": sid, "args": [{}], "wait": False}
    async with http.post(f"{url}/sessions/stalled_saga", json=body) as resp:
        return resp.status, resp.headers.get("Retry-After")


async def start_until_admitted(http: aiohttp.ClientSession, url: str, sid: str) -> None:
    """Start `sid` as a client that honours Retry-After does, until it is admitted."""
    end = time.monotonic() + 120
    while True:
        status, retry_after = await start_stalled(http, url, sid)
        if status != 503:
            assert status in (200, 202), status
            return
        assert time.monotonic() < end, f"{sid} still refused after 120 s"
        await asyncio.sleep(float(retry_after))


async def test_starts_over_max_sessions_get_503_with_retry_after_and_none_is_lost(guarded):
    cluster = guarded.cluster
    url = cluster.sidecar_url("a")
    sids = [f"admission-{i}" for i in range(10)]
    async with cluster.http() as tester:
        # Until healed, a's last step is refused (503), so the admitted sessions stay running.
        answers = await asyncio.gather(*(start_stalled(tester, url, sid) for sid in sids))
        admitted = [sid for sid, (status, _) in zip(sids, answers, strict=True) if status == 202]
        busy = [sid for sid, (status, _) in zip(sids, answers, strict=True) if status == 503]
        assert sorted(admitted + busy) == sorted(sids), answers
        assert 1 <= len(admitted) <= 2 and busy, answers
        assert all(int(ra) >= 1 for status, ra in answers if status == 503), answers
        for sid in busy:
            assert await states(cluster, tester, sid) == dict.fromkeys(ROLES)
        heal(cluster)
        await cluster.wait_terminal(tester, admitted)
        await asyncio.gather(*(start_until_admitted(tester, url, sid) for sid in busy))
        done = await cluster.wait_terminal(tester, sids)
        assert {st["state"] for per in done.values() for st in per.values()} == {"completed"}
        for sid in sids:
            assert await ops(cluster, tester, "a", sid) == {"reserve": 1, "stall": 1}, sid


# -- 9. configs ---------------------------------------------------------------------------------


class EditedConfigs(Cluster):
    """A plaintext cluster whose sidecar configs pass through `edit`: a deliberate mistake."""

    def __init__(self, dirpath: Path, edit: Callable[[str], str], **options: Any) -> None:
        super().__init__(dirpath, **options)
        self.edit = edit

    def config_text(self, role: str, failpoints: dict[str, int] | None = None) -> str:
        return self.edit(super().config_text(role, failpoints))


@contextlib.contextmanager
def edited(tmp_path: Path, edit: Callable[[str], str], **options: Any) -> Iterator[Cluster]:
    cluster = EditedConfigs(tmp_path / "edited", edit, **options)
    try:
        yield cluster
    finally:
        cluster.stop()


def everywhere(text: str) -> str:
    """Listen on every address (0.0.0.0) instead of loopback; still reached on 127.0.0.1."""
    return text.replace('listen = "127.0.0.1:', 'listen = "0.0.0.0:')


@pytest.mark.parametrize(
    ("mistake", "old", "new"),
    [
        ("timeout", "[timeouts]", "[timeout]"),
        ("recieve_s", "receive_s =", "recieve_s ="),
        ("max_sesions", "max_sessions =", "max_sesions ="),
    ],
    ids=["[timeout]", "recieve_s", "max_sesions"],
)
async def test_a_config_with_a_misspelt_key_exits_2_naming_it(tmp_path, mistake, old, new):
    with edited(tmp_path, lambda t: t.replace(old, new), limits={"max_sessions": 5}) as cluster:
        sidecar = cluster.launch_sidecar("a")
        assert await sidecar.wait_exit(60) == 2, sidecar.tail()
        assert repr(mistake) in sidecar.log.read_text(), sidecar.tail()


async def test_plaintext_on_a_non_loopback_address_exits_2_unless_insecure_is_set(tmp_path):
    with edited(tmp_path / "refused", everywhere) as cluster:
        sidecar = cluster.launch_sidecar("a")
        assert await sidecar.wait_exit(60) == 2, sidecar.tail()
        assert "'0.0.0.0', not loopback, needs [tls]" in sidecar.log.read_text(), sidecar.tail()
    with edited(tmp_path / "insecure", everywhere, settings={"insecure": True}) as cluster:
        await cluster.restart_sidecar("a")  # starts it, and waits until 127.0.0.1 says healthy
        assert "PLAINTEXT" in cluster.sidecars["a"].log.read_text()
        assert cluster.sidecars["a"].stop() == 0
