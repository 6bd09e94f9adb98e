"""TLS on every link: cells of every system with a fresh CA, the gateway's two ways to prove
who it is, the micro-benchmark's TLS chain, and what the report says about plaintext links.

The cells run the real processes (services over HTTPS admitting only the runtime next to
them, sidecars over mutual TLS, Temporal workers calling their services with a client
certificate); Temporal's frontend stays plaintext because the dev server cannot serve TLS
(tests/temporal/test_temporal_tls.py shows why).
"""

from __future__ import annotations

import asyncio
import json
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from bench_cells import run_checked_cell

from accompanist_py.tls import client_uri, sidecar_uri
from baselines.temporal.testing import running_gateway
from bench.analysis import analyse
from bench.credentials import (
    FRONTEND_PLAINTEXT,
    GATEWAY,
    HARNESS,
    RESTATE_HANDLER,
    RESTATE_PLAINTEXT,
    CellCredentials,
    files_args,
    link_security,
    service_callers,
)
from bench.load import LoadProfile
from bench.matrix import MATRICES, SCENARIOS, Scenario
from bench.microbench import hop_latency, tls_cost
from bench.report import write_report
from bench.systems.accompanist import running_sidecars
from workloads import discover
from workloads.launch import running_services_sync

TLS_LOCAL = Scenario("smoke-tls", "local", LoadProfile(mode="open", rate_rps=4.0), 8, 2.0, tls=True)
TLS_ZONES = Scenario(
    "smoke-tls-zones", "three-zones", LoadProfile(mode="open", rate_rps=4.0), 8, 2.0, tls=True
)


def _argv(cell_path: Path, process: str) -> str:
    """The command lines a process was started with, from its log."""
    log = (cell_path / "logs" / f"{process.replace(':', '-')}.log").read_text()
    return "\n".join(line for line in log.splitlines() if line.startswith("--- start"))


def test_the_tls_scenario_is_listed_in_its_own_matrix_and_not_in_quick() -> None:
    assert SCENARIOS["three-zones-tls"].tls
    assert not any(s.tls for s in MATRICES["quick"].scenarios)
    tls = MATRICES["tls"]
    assert {s.name for s in tls.scenarios} == {"three-zones", "three-zones-tls"}
    assert set(tls.systems) == {
        "accompanist",
        "temporal-distributed",
        "temporal-tuned",
        "restate",
        "dbos",
    }


def test_each_service_admits_only_the_runtime_next_to_it() -> None:
    assert service_callers("accompanist", "payment") == [sidecar_uri("payment")]
    assert service_callers("temporal-distributed", "payment") == [
        client_uri("temporal-worker-payment")
    ]
    assert service_callers("temporal-tuned", "payment") == [client_uri(GATEWAY)]
    assert service_callers("dbos", "payment") == [client_uri(GATEWAY)]
    assert service_callers("restate", "payment") == [client_uri(RESTATE_HANDLER)]


def test_the_link_inventory_says_which_links_stay_plaintext_and_why() -> None:
    assert link_security("accompanist", True)["sidecar -> sidecar"].startswith("mutual TLS")
    for system in ("temporal-distributed", "temporal-tuned"):
        links = link_security(system, True)
        frontend = [link for link in links if "Temporal frontend" in link]
        assert frontend and all(links[link] == FRONTEND_PLAINTEXT for link in frontend)
        assert any(p.startswith("mutual TLS") for p in links.values())
    restate = link_security("restate", True)
    assert restate["Restate server -> handler process"] == RESTATE_PLAINTEXT
    assert restate["handler process -> services"].startswith("mutual TLS")
    assert link_security("dbos", True)["gateway (hosting DBOS) -> services"].startswith("mutual")
    assert link_security("accompanist", False) == link_security("temporal-tuned", False)


@pytest.mark.parametrize(
    ("system", "scenario"),
    [
        ("accompanist", TLS_ZONES),
        ("temporal-distributed", TLS_LOCAL),
        ("temporal-tuned", TLS_LOCAL),
        ("restate", TLS_LOCAL),
        ("dbos", TLS_LOCAL),
    ],
)
def test_a_tls_cell_runs_consistent_with_every_service_behind_mutual_tls(
    system: str, scenario: Scenario, tmp_path: Path
) -> None:
    cd = run_checked_cell(tmp_path, system, scenario)
    meta = cd.meta()
    assert meta["tls"] and meta["link_security"] == link_security(system, True)

    wl = discover()["warehouse"]
    for service in wl.services:
        argv = _argv(cd.path, f"service:{service}")
        assert "--tls-cert" in argv
        allowed = {*service_callers(system, service), client_uri(HARNESS)}
        named = {
            word for word in argv.replace("'", " ").replace(",", " ").split() if "spiffe" in word
        }
        assert named == allowed, f"{service} admits {named}"
    if system == "accompanist":
        for role in wl.services:
            config = tomllib.loads((cd.path / f"sidecar-{role}.toml").read_text())
            assert config["service_url"].startswith("https://")
            assert all(url.startswith("https://") for url in config["peers"].values())
            assert config["tls"]["cert"].endswith(f"sidecar-{role}.pem")
            assert config["service"]["cert"] == config["tls"]["cert"]
        assert "--tls-cert" in _argv(cd.path, "gateway")
    elif system == "temporal-distributed":
        for service in wl.services:
            argv = _argv(cd.path, f"runtime:{service}")
            assert f"client-temporal-worker-{service}.pem" in argv
            assert "https://" in argv
    elif system == "restate":
        argv = _argv(cd.path, "restate-handler")
        assert "client-restate-handler.pem" in argv and "https://" in argv
    else:
        assert "client-gateway.pem" in _argv(cd.path, "gateway")
    if scenario.topology == "three-zones":
        links = pd.read_csv(cd.links_csv)
        assert "error" not in links or links["error"].isna().all(), links
        # Each link is timed by one round trip (a TLS handshake to a TLS listener).
        assert (links["first_byte_ms"] >= 2 * links["configured_one_way_ms"]).all()

    analyse(tmp_path)
    report = write_report(tmp_path).read_text()
    assert "## TLS" in report
    if system.startswith("temporal-"):
        assert "cannot serve TLS" in report


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_gateway_starts_sagas_with_a_bearer_token_and_is_refused_without_one(
    tmp_path: Path,
) -> None:
    wl = discover()["warehouse"]
    creds = CellCredentials(tmp_path / "tls")
    token, token_file = creds.token_file(GATEWAY)
    tls = {s: creds.service_tls(s, service_callers("accompanist", s)) for s in wl.services}
    request = wl.requests(1, 1, 0.0)[0]
    saga = {"saga_id": request["saga_id"], "request": request}
    with (
        running_services_sync(wl, tmp_path / "services", tls=tls) as urls,
        running_sidecars(
            wl, urls, tmp_path / "sidecars", credentials=creds, tokens={GATEWAY: token}
        ) as cars,
    ):
        to_sidecar = ["--system", "accompanist", "--workload", "warehouse", "--deadline-s", "5"]
        to_sidecar += ["--sidecar", cars.urls[wl.initiator], "--choreography", cars.choreography]
        with_token = [*to_sidecar, "--tls-ca", str(creds.ca), "--token-file", str(token_file)]
        anonymous = [*to_sidecar, "--tls-ca", str(creds.ca)]
        with_certificate = [*to_sidecar, *files_args(creds.client(GATEWAY))]

        with running_gateway(with_token, tmp_path) as (url, _):
            status, outcome = _post(f"{url}/sagas/warehouse", saga)
        assert status == 200 and outcome["outcome"] == "committed", outcome
        with running_gateway(anonymous, tmp_path) as (url, _):
            status, refused = _post(f"{url}/sagas/warehouse", {**saga, "saga_id": "other"})
        assert status == 500 and "401" in refused["error"], refused
        with running_gateway(with_certificate, tmp_path) as (url, _):
            status, again = _post(f"{url}/sagas/warehouse", saga)
        assert status == 200 and again == outcome, "a certificate client reads the same saga"


@pytest.mark.parametrize("transport", ["stream", "http"])
def test_the_microbench_chain_runs_over_mutual_tls(transport: str, tmp_path: Path) -> None:
    result = asyncio.run(hop_latency("default", transport, 5, tmp_path, tls=True))
    assert 0 < result["hop_p50_ms"] <= result["hop_p99_ms"]
    assert (tmp_path / "tls" / "sidecar-r0.pem").exists()


def test_the_tls_cost_is_the_difference_of_the_same_chain_with_and_without_tls() -> None:
    hops = {
        ("default", "stream", False): {"hop_p50_ms": 0.5, "hop_p99_ms": 1.0},
        ("default", "stream", True): {"hop_p50_ms": 0.7, "hop_p99_ms": 1.5},
        ("default", "http", True): {"hop_p50_ms": 2.0, "hop_p99_ms": 3.0},
    }
    (line,) = tls_cost(hops)  # http was measured with TLS only: no difference to show
    assert "stream" in line and "+0.20 ms p50" in line and "+0.50 ms p99" in line
