"""Guarded workload services (docs/security.md), as real processes started by workloads.launch:
over HTTPS only the sidecar a service allows gets in, and with a bearer token a request
without it is answered 401 and runs nothing."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from accompanist_py import certs
from accompanist_py.tls import TLSFiles, client_context, sidecar_uri
from workloads.consistency import fetch_states
from workloads.launch import running_services_sync, service_command
from workloads.service_kit import ServiceTLS
from workloads.service_kit import main as service_main
from workloads.warehouse.data import ITEMS
from workloads.warehouse.services import SERVICES
from workloads.warehouse.workload import WORKLOAD

TOKENS = {s: f"secret-of-{s}" for s in WORKLOAD.services}
BAD = "<a file that is not a certificate>"
RESERVE = {"customer": "customer-000", "item": ITEMS[0], "quantity": 1}


class PKI:
    """A CA; a service certificate and a sidecar certificate for every warehouse service; an
    intruder from the same CA that claims the warehouse role under another sidecar name; and a
    stranger whose certificate comes from another CA."""

    def __init__(self, root: Path) -> None:
        self.ca = certs.make_ca(root)
        self.services = {s: certs.service_certificate(*self.ca, root, s) for s in WORKLOAD.services}
        self.sidecars = {
            s: certs.sidecar_certificate(*self.ca, root, s, [s]) for s in WORKLOAD.services
        }
        self.intruder = certs.sidecar_certificate(*self.ca, root, "intruder", ["warehouse"])
        other = certs.make_ca(root / "other")
        self.stranger = certs.sidecar_certificate(
            *other, root / "other", "warehouse", ["warehouse"]
        )

    def tls(self, service: str) -> ServiceTLS:
        cert, key = self.services[service]
        return ServiceTLS(cert, key, self.ca[0], allow_uris=(sidecar_uri(service),))

    def context(self, holder: tuple[Path, Path] | None) -> ssl.SSLContext:
        """A caller trusting our CA, presenting `holder`'s certificate (or none)."""
        if holder is not None:
            return TLSFiles(self.ca[0], *holder).client_context()
        return client_context(self.ca[0])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[dict[str, str]]:
    """The warehouse services over HTTPS, each allowing its own sidecar, each with a token."""
    tls = {s: pki.tls(s) for s in WORKLOAD.services}
    dirpath = tmp_path_factory.mktemp("guarded")
    with running_services_sync(WORKLOAD, dirpath, size=50, tls=tls, tokens=TOKENS) as urls:
        yield urls


async def call(
    context: ssl.SSLContext | None,
    method: str,
    url: str,
    body: Any = None,
    *,
    key: str | None = None,
    token: str | None = None,
    authorization: str | None = None,
) -> tuple[int, Any]:
    """One request over a fresh connection; (status, JSON body)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if authorization is not None:
        headers["Authorization"] = authorization
    data = json.dumps(body).encode() if body is not None else None
    connector = aiohttp.TCPConnector(ssl=context if context is not None else False)
    timeout = aiohttp.ClientTimeout(total=20)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.request(method, url, data=data, headers=headers) as response,
    ):
        return response.status, await response.json()


async def keys_recorded(pki: PKI, url: str, service: str) -> set[str]:
    """The idempotency keys a service has recorded, read as its own sidecar."""
    context = pki.context(pki.sidecars[service])
    status, state = await call(context, "GET", f"{url}/state", token=TOKENS[service])
    assert status == 200, state
    return {record["key"] for record in state["idempotency"]}


def tls_handshake(url: str, context: ssl.SSLContext) -> None:
    """A bare TLS 1.2 handshake (raises ssl.SSLError if refused). Under TLS 1.3 a client
    finishes its half before the server judges its certificate; 1.2 shows the refusal itself."""
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    host, port = url.removeprefix("https://").split(":")
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host),
    ):
        pass


async def test_the_services_own_sidecar_with_its_token_is_served(guarded, pki):
    url = guarded["warehouse"]
    assert url.startswith("https://")
    context = pki.context(pki.sidecars["warehouse"])
    status, body = await call(
        context,
        "POST",
        f"{url}/ops/reserve",
        RESERVE,
        key="tls-ok-1:reserve",
        token=TOKENS["warehouse"],
    )
    assert status == 200, body
    assert body["reservation_id"] == "tls-ok-1:reserve"
    assert "tls-ok-1:reserve" in await keys_recorded(pki, url, "warehouse")


@pytest.mark.parametrize("caller", ["no certificate", "another CA's certificate"])
async def test_a_caller_without_a_certificate_from_the_ca_fails_at_tls(guarded, pki, caller):
    url = guarded["warehouse"]
    holder = None if caller == "no certificate" else pki.stranger
    key = f"tls-refused-{holder is None}:reserve"
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(
            pki.context(holder),
            "POST",
            f"{url}/ops/reserve",
            RESERVE,
            key=key,
            token=TOKENS["warehouse"],
        )
    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(tls_handshake, url, pki.context(holder))
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(pki.context(holder), "GET", f"{url}/health")
    assert key not in await keys_recorded(pki, url, "warehouse")


@pytest.mark.parametrize("caller", ["intruder", "payment"])
async def test_a_certificate_without_an_allowed_uri_is_refused_403(guarded, pki, caller):
    """The intruder's certificate names the warehouse role, but not the warehouse sidecar; the
    payment sidecar is a real peer, but not the caller this service allows."""
    url = guarded["warehouse"]
    holder = pki.intruder if caller == "intruder" else pki.sidecars["payment"]
    key = f"tls-403-{caller}:reserve"
    status, body = await call(
        pki.context(holder),
        "POST",
        f"{url}/ops/reserve",
        RESERVE,
        key=key,
        token=TOKENS["warehouse"],
    )
    assert (status, body) == (403, {"error": "client certificate names no allowed caller"})
    status, _ = await call(pki.context(holder), "GET", f"{url}/state", token=TOKENS["warehouse"])
    assert status == 403
    assert key not in await keys_recorded(pki, url, "warehouse")


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-secret",
        f"Bearer {TOKENS['payment']}",
        f"Basic {TOKENS['warehouse']}",
        TOKENS["warehouse"],
    ],
    ids=["missing", "wrong", "another-service's", "not-bearer", "no-scheme"],
)
async def test_a_missing_or_wrong_token_is_answered_401_and_runs_nothing(
    guarded, pki, authorization, request
):
    url = guarded["warehouse"]
    context = pki.context(pki.sidecars["warehouse"])
    key = f"tls-401-{request.node.callspec.id}:reserve"
    status, body = await call(
        context, "POST", f"{url}/ops/reserve", RESERVE, key=key, authorization=authorization
    )
    assert (status, body) == (401, {"error": "missing or wrong bearer token"})
    status, _ = await call(context, "GET", f"{url}/state", authorization=authorization)
    assert status == 401
    assert key not in await keys_recorded(pki, url, "warehouse")


async def test_health_needs_only_a_certificate_from_the_ca(guarded, pki):
    for service, url in guarded.items():
        status, body = await call(pki.context(pki.intruder), "GET", f"{url}/health")
        assert (status, body) == (200, {"service": service, "ok": True})


def test_a_token_alone_guards_a_plain_http_service(tmp_path):
    async def check(urls: dict[str, str]) -> None:
        url = urls["loyalty"]
        assert url.startswith("http://")
        award = {"account": "customer-000", "amount": 500}
        status, _ = await call(None, "POST", f"{url}/ops/award", award, key="tok-1:award")
        assert status == 401
        status, state = await call(None, "GET", f"{url}/state", token=TOKENS["loyalty"])
        assert status == 200 and state["idempotency"] == []
        assert (await call(None, "GET", f"{url}/health"))[0] == 200
        token = TOKENS["loyalty"]
        status, _ = await call(
            None, "POST", f"{url}/ops/award", award, key="tok-1:award", token=token
        )
        assert status == 200
        status, state = await call(None, "GET", f"{url}/state", token=token)
        assert [r["key"] for r in state["idempotency"]] == ["tok-1:award"]

    with running_services_sync(WORKLOAD, tmp_path, size=10, tokens=TOKENS) as urls:
        asyncio.run(check(urls))


def test_a_half_guarded_workload_is_refused_before_anything_starts(tmp_path, pki):
    with (
        pytest.raises(ValueError, match=r"missing \['loyalty', 'payment'\]"),
        running_services_sync(WORKLOAD, tmp_path, tls={"warehouse": pki.tls("warehouse")}),
    ):
        pass
    assert not list(tmp_path.iterdir())


def test_the_service_command_carries_the_guard(pki):
    tls = pki.tls("payment")
    token = Path("p.token")
    argv = service_command(WORKLOAD, "payment", 9, "p.db", 1, 10, 0.1, tls=tls, token_file=token)
    tail = argv[argv.index("--tls-cert") :]
    assert tail == [
        "--tls-cert",
        str(tls.cert),
        "--tls-key",
        str(tls.key),
        "--tls-ca",
        str(tls.ca),
        "--allow-uri",
        sidecar_uri("payment"),
        "--token-file",
        "p.token",
    ]
    assert "--tls-cert" not in service_command(WORKLOAD, "payment", 9, "p.db", 1, 10, 0.1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tls-cert", "c.pem"], "go together"),
        (["--allow-uri", "spiffe://accompanist/sidecar/x"], "--allow-uri needs"),
        (["--tls-cert", "no.pem", "--tls-key", "no.pem", "--tls-ca", "no.pem"], "no such file"),
        (["--tls-cert", BAD, "--tls-key", BAD, "--tls-ca", BAD], "not a usable"),
        (["--token-file", "empty.token"], "at least 16 characters"),
        (["--token-file", "short.token"], "at least 16 characters"),
        (["--token-file", "no.token"], "--token-file"),
    ],
)
def test_the_service_refuses_an_incomplete_or_unusable_guard_at_startup(
    tmp_path, capsys, extra, message
):
    (tmp_path / "p.pem").write_text("not a certificate")
    (tmp_path / "empty.token").write_text("\n")
    (tmp_path / "short.token").write_text("fifteen-chars..\n")
    extra = [str(tmp_path / "p.pem") if a == BAD else a for a in extra]
    extra = [str(tmp_path / a) if a.endswith(".token") else a for a in extra]
    argv = ["--service", "payment", "--port", "9", "--db", str(tmp_path / "p.db"), *extra]
    with pytest.raises(SystemExit) as exit_:
        service_main(SERVICES, argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.db").exists()


def test_the_checker_reads_services_behind_tls_with_a_certificate_they_admit(
    pki: PKI, tmp_path: Path
) -> None:
    tls = {s: pki.tls(s) for s in WORKLOAD.services}
    with running_services_sync(WORKLOAD, tmp_path, size=5, tls=tls) as urls:
        warehouse = {"warehouse": urls["warehouse"]}
        admitted = pki.context(pki.sidecars["warehouse"])
        assert fetch_states(warehouse, context=admitted)["warehouse"]["items"]
        with pytest.raises(OSError):  # another caller's certificate: 403; none: no handshake
            fetch_states(warehouse, context=pki.context(pki.sidecars["payment"]))
        with pytest.raises(OSError):
            fetch_states(warehouse, context=pki.context(None))
