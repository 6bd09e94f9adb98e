"""The deployment's certificates (accompanist_py.certs) in real mutual-TLS handshakes: each side
sees the other's identity, and a certificate from another CA, an expired one, or none at all
never gets a request through."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from accompanist_py import certs
from accompanist_py.tls import (
    Identity,
    TLSFiles,
    client_uri,
    identity_of,
    peer_uris,
    role_host,
    role_uri,
    sidecar_uri,
)

REPO = Path(__file__).resolve().parents[2]


def tls_files(ca: tuple[Path, Path], leaf: tuple[Path, Path]) -> TLSFiles:
    return TLSFiles(ca=ca[0], cert=leaf[0], key=leaf[1])


def san_uris(cert: Path) -> list[str]:
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """A CA, a warehouse sidecar, a payment sidecar and a gateway client."""
    ca = certs.make_ca(tmp_path)
    return {
        "ca": ca,
        "warehouse": certs.sidecar_certificate(*ca, tmp_path, "warehouse", ["warehouse"]),
        "payment": certs.sidecar_certificate(*ca, tmp_path, "payment", ["payment", "loyalty"]),
        "gateway": certs.client_certificate(*ca, tmp_path, "gateway"),
    }


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[TLSFiles], Awaitable[tuple[str, list[Identity]]]]]:
    """Start aiohttp servers on 127.0.0.1 (OS-chosen ports) that answer with the identity of
    the caller's certificate; every one is stopped when the test ends."""
    runners: list[web.AppRunner] = []

    async def start(files: TLSFiles) -> tuple[str, list[Identity]]:
        seen: list[Identity] = []

        async def whoami(request: web.Request) -> web.Response:
            identity = identity_of(peer_uris(request.transport.get_extra_info("peercert")))
            seen.append(identity)
            return web.json_response({"roles": sorted(identity.roles), "client": identity.client})

        app = web.Application()
        app.router.add_get("/whoami", whoami)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=files.server_context())
        await site.start()
        return f"https://127.0.0.1:{runner.addresses[0][1]}", seen

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


async def call(url: str, context: ssl.SSLContext) -> dict:
    """GET /whoami over a fresh connection."""
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.get(f"{url}/whoami") as response,
    ):
        return await response.json()


async def server_identity(url: str, context: ssl.SSLContext) -> Identity:
    """The identity of the certificate the server at `url` presents to a verified handshake."""
    host, port = url.removeprefix("https://").split(":")
    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        return identity_of(peer_uris(writer.get_extra_info("peercert")))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def handshake(url: str, context: ssl.SSLContext, server_hostname: str | None = None) -> None:
    """A bare TLS handshake with the server at `url`, asking for `server_hostname` (default:
    the URL's host); raises ssl.SSLError if either side refuses."""
    host, port = url.removeprefix("https://").split(":")
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname or host),
    ):
        pass


async def assert_refused(
    url: str, seen: list[Identity], context: Callable[[], ssl.SSLContext]
) -> None:
    """The server at `url` refuses a caller with `context()` and never sees its request.

    Under TLS 1.3 a client finishes its half of the handshake before the server has judged the
    client's certificate, so the refusal reaches it as a closed connection; under TLS 1.2 it
    is the handshake itself that fails.
    """
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(url, context())
    tls12 = context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(handshake, url, tls12)
    assert seen == []


async def test_a_sidecar_and_its_peer_see_each_others_roles(pki, serve):
    url, seen = await serve(tls_files(pki["ca"], pki["warehouse"]))
    payment = tls_files(pki["ca"], pki["payment"]).client_context()
    assert await call(url, payment) == {"roles": ["loyalty", "payment"], "client": None}
    assert seen == [Identity(frozenset({"payment", "loyalty"}), sidecar="payment")]
    server = await server_identity(url, payment)
    assert server == Identity(frozenset({"warehouse"}), sidecar="warehouse")


async def test_a_client_certificate_names_the_client_and_no_role(pki, serve):
    url, seen = await serve(tls_files(pki["ca"], pki["warehouse"]))
    answer = await call(url, tls_files(pki["ca"], pki["gateway"]).client_context())
    assert answer == {"roles": [], "client": "gateway"}
    assert seen == [Identity(client="gateway")]
    assert not seen[0].is_peer


async def test_a_sender_asking_for_a_role_the_server_does_not_host_fails_the_handshake(pki, serve):
    url, seen = await serve(tls_files(pki["ca"], pki["payment"]))
    sender = tls_files(pki["ca"], pki["warehouse"]).client_context
    for hosted in ("payment", "loyalty"):
        await asyncio.to_thread(handshake, url, sender(), role_host(hosted))
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        await asyncio.to_thread(handshake, url, sender(), role_host("warehouse"))
    assert seen == []


async def test_a_certificate_from_another_ca_fails_the_handshake(pki, serve, tmp_path):
    other_ca = certs.make_ca(tmp_path / "other")
    stranger = certs.sidecar_certificate(*other_ca, tmp_path / "other", "payment", ["payment"])
    url, seen = await serve(tls_files(pki["ca"], pki["warehouse"]))
    # The stranger trusts our CA, so only its own certificate can be what is refused.
    stranger_files = TLSFiles(ca=pki["ca"][0], cert=stranger[0], key=stranger[1])
    await assert_refused(url, seen, stranger_files.client_context)
    # And a server with a stranger's certificate is refused by our client.
    strange_url, strange_seen = await serve(tls_files(other_ca, stranger))
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await call(strange_url, tls_files(pki["ca"], pki["payment"]).client_context())
    assert seen == []
    assert strange_seen == []


async def test_an_expired_certificate_fails_the_handshake(pki, serve, tmp_path):
    now = datetime.now(UTC)
    expired = certs.issue(
        *pki["ca"],
        tmp_path / "expired",
        "payment",
        uris=[sidecar_uri("payment"), role_uri("payment")],
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    url, seen = await serve(tls_files(pki["ca"], pki["warehouse"]))
    await assert_refused(url, seen, tls_files(pki["ca"], expired).client_context)
    expired_url, _ = await serve(tls_files(pki["ca"], expired))
    with pytest.raises(aiohttp.ClientConnectorCertificateError, match="expired"):
        await call(expired_url, tls_files(pki["ca"], pki["payment"]).client_context())
    assert seen == []


async def test_a_caller_without_a_certificate_is_refused(pki, serve):
    url, seen = await serve(tls_files(pki["ca"], pki["warehouse"]))

    def anonymous() -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(pki["ca"][0]))
        context.check_hostname = False
        return context

    await assert_refused(url, seen, anonymous)


def test_private_keys_are_readable_by_their_owner_only(pki):
    for _, key in pki.values():
        assert key.stat().st_mode & 0o777 == 0o600


def test_make_ca_never_replaces_a_ca(pki, tmp_path):
    before = pki["ca"][0].read_bytes()
    with pytest.raises(FileExistsError):
        certs.make_ca(tmp_path)
    assert pki["ca"][0].read_bytes() == before


@pytest.mark.parametrize("name", ["a/b", "../up", "", ".hidden", "white space"])
def test_unsafe_names_are_refused(pki, tmp_path, name):
    with pytest.raises(ValueError, match="unsafe"):
        certs.client_certificate(*pki["ca"], tmp_path, name)
    with pytest.raises(ValueError, match="unsafe"):
        certs.sidecar_certificate(*pki["ca"], tmp_path, "warehouse", [name])


def write_config(path: Path, name: str, roles: list[str], listen: str) -> Path:
    quoted = ", ".join(f'"{r}"' for r in roles)
    path.write_text(f'name = "{name}"\nroles = [{quoted}]\nlisten = "{listen}"\n')
    return path


def test_the_command_line_makes_a_certificate_per_sidecar_client_and_service(tmp_path):
    a = write_config(tmp_path / "a.toml", "warehouse", ["warehouse"], "127.0.0.1:7001")
    b = write_config(tmp_path / "b.toml", "payment", ["payment", "loyalty"], "10.1.2.3:7002")
    out = tmp_path / "pki"
    argv = [sys.executable, "-m", "accompanist_py.certs", "--out", str(out)]
    argv += ["--client", "gateway", "--service", "warehouse", str(a), str(b)]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    written = {
        "ca.pem",
        "ca-key.pem",
        "sidecar-warehouse.pem",
        "sidecar-warehouse-key.pem",
        "sidecar-payment.pem",
        "sidecar-payment-key.pem",
        "client-gateway.pem",
        "client-gateway-key.pem",
        "service-warehouse.pem",
        "service-warehouse-key.pem",
    }
    assert {p.name for p in out.iterdir()} == written
    for name in written:
        assert str(out / name) in run.stdout
    assert run.stdout.count("[tls]") == 2
    assert f'cert = "{out / "sidecar-payment.pem"}"' in run.stdout
    assert san_uris(out / "sidecar-payment.pem") == [
        sidecar_uri("payment"),
        role_uri("payment"),
        role_uri("loyalty"),
    ]
    assert san_uris(out / "client-gateway.pem") == [client_uri("gateway")]
    assert san_uris(out / "service-warehouse.pem") == [certs.service_uri("warehouse")]
    payment = x509.load_pem_x509_certificate((out / "sidecar-payment.pem").read_bytes())
    san = payment.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3", "127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == [
        "localhost",
        role_host("payment"),
        role_host("loyalty"),
    ]


def test_the_command_line_reuses_the_ca_it_finds(tmp_path, capsys):
    a = write_config(tmp_path / "a.toml", "warehouse", ["warehouse"], "127.0.0.1:7001")
    out = tmp_path / "pki"
    assert certs.main(["--out", str(out), str(a)]) == 0
    ca = (out / "ca.pem").read_bytes()
    assert certs.main(["--out", str(out), "--client", "gateway"]) == 0
    assert (out / "ca.pem").read_bytes() == ca
    assert "reused CA" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "no such config file"),
        ('roles = ["warehouse"]\n', "missing 'name'"),
        ('name = "warehouse"\n', "'roles' must be a non-empty list"),
        ('name = "ware/house"\nroles = ["warehouse"]\n', "unsafe sidecar name"),
        ('name = "warehouse"\nroles = ["warehouse"\n', "not a readable TOML file"),
    ],
)
def test_the_command_line_refuses_bad_input_in_one_line(tmp_path, capsys, config, message):
    path = tmp_path / "sidecar.toml"
    if config is not None:
        path.write_text(config)
    assert certs.main(["--out", str(tmp_path / "pki"), str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "pki").exists()


def test_the_command_line_refuses_a_ca_of_another_trust_domain(tmp_path, capsys):
    certs.make_ca(tmp_path, trust_domain="elsewhere")
    assert certs.main(["--out", str(tmp_path), "--client", "gateway"]) == 2
    assert "trust domain 'elsewhere'" in capsys.readouterr().err
    assert not (tmp_path / "client-gateway.pem").exists()
