"""The compose example (deploy/compose) brought up for real: the warehouse saga in three zones,
every link mutual TLS, one saga committed and one compensated through the initiator sidecar,
and the services' state judged by the workload's consistency checker."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_env import DEPLOY, ROOT, load_script

from launch import free_ports
from workloads import discover

COMPOSE = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
configure = load_script(COMPOSE / "configure.py")
ROLES = configure.ROLES


def test_the_compose_file_defaults_are_configure_s_settings() -> None:
    text = COMPOSE_FILE.read_text()
    defaults = dict(re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", text))
    written_by_configure = {"ACCOMPANIST_DEPLOY", "ACCOMPANIST_UID", "ACCOMPANIST_GID"}
    assert set(defaults) - written_by_configure <= set(configure.SETTINGS)
    for name, default in defaults.items():
        if name in configure.SETTINGS:
            assert default == configure.SETTINGS[name], name
    # Every service container is started on the port its sidecar's config calls it at.
    for role in ROLES:
        assert f"--port ${{{role.upper()}_SERVICE_PORT:-" in text


def test_configure_writes_each_zone_only_what_it_needs(tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    subprocess.run([sys.executable, str(COMPOSE / "configure.py"), str(out)], check=True)
    for role in ROLES:
        sidecar = sorted(p.name for p in (out / role / "sidecar").iterdir())
        assert sidecar == sorted(
            ["ca.pem", "sidecar.toml", f"sidecar-{role}.pem", f"sidecar-{role}-key.pem"]
        )
        service = sorted(p.name for p in (out / role / "service").iterdir())
        assert service == sorted(
            ["ca.pem", "service.token", f"service-{role}.pem", f"service-{role}-key.pem"]
        )
        for secret in (
            out / role / "sidecar" / f"sidecar-{role}-key.pem",
            out / role / "sidecar" / "sidecar.toml",  # it holds the service's token
            out / role / "service" / "service.token",
        ):
            assert secret.stat().st_mode & 0o077 == 0, secret
    assert not any(p.name == "ca-key.pem" for p in out.rglob("*") if "pki" not in p.parts)
    env = dict(line.split("=", 1) for line in (out / ".env").read_text().splitlines())
    assert set(configure.SETTINGS) <= set(env)
    with pytest.raises(SystemExit, match="not empty"):
        configure.configure(out)


def _context(directory: Path, cert: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(str(directory / f"{cert}.pem"), str(directory / f"{cert}-key.pem"))
    return ctx


def _call(
    url: str, ctx: ssl.SSLContext, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120, context=ctx) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@pytest.fixture
def deployment(docker_ready: str, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """The example up under a project name and ports of its own; always torn down after."""
    project = f"acc-test-{secrets.token_hex(4)}"
    env = {**os.environ, "COMPOSE_PROJECT_NAME": project, "ACCOMPANIST_IMAGE": docker_ready}
    for role in ROLES:
        host = configure.SETTINGS[f"{role.upper()}_HOST"]
        (env[f"{role.upper()}_SIDECAR_PORT"],) = map(str, free_ports(1, host))
    for role, port in zip(ROLES, free_ports(len(ROLES)), strict=True):
        env[f"{role.upper()}_SERVICE_PORT"] = str(port)
    out = tmp_path / "deploy"
    compose = ["docker-compose", "-p", project, "-f", str(COMPOSE_FILE)]
    try:
        _run_whole([str(COMPOSE / "up.sh"), str(out)], env)
        yield out, env
    finally:
        # Also after a failure, a timeout or a Ctrl-C: the containers go, with their volumes,
        # and any a killed `up` was still creating.
        subprocess.run(
            [*compose, "down", "-v", "--remove-orphans", "--timeout", "10"],
            env=env,
            check=False,
            timeout=180,
        )
        left = _containers(project)
        if left:
            subprocess.run(["docker", "rm", "-f", "-v", *left], check=False, timeout=60)
    assert not left, f"containers of {project} outlived docker-compose down: {left}"


def _containers(project: str) -> list[str]:
    found = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return found.stdout.split()


def _run_whole(command: list[str], env: dict[str, str]) -> None:
    """Run `command` in a process group of its own; if the test is interrupted meanwhile, stop
    the whole group (the docker-compose it started too) before anything is torn down."""
    proc = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
    try:
        status = proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    if status != 0:
        raise subprocess.CalledProcessError(status, command)


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_the_warehouse_saga_commits_and_compensates_across_three_zones_over_mutual_tls(
    deployment: tuple[Path, dict[str, str]],
) -> None:
    out, env = deployment
    client = out / "client"
    initiator = f"https://{configure.SETTINGS['WAREHOUSE_HOST']}:{env['WAREHOUSE_SIDECAR_PORT']}"
    start = f"{initiator}/sessions/warehouse_saga"

    def saga(saga_id: str, customer: str, item: str) -> dict[str, Any]:
        request = {"saga_id": saga_id, "customer": customer, "item": item, "quantity": 1}
        return {"session_id": saga_id, "args": [request], "wait": True}

    # Without a certificate or a token nothing starts.
    status, _ = _call(start, _context(client, None), saga("nobody", "customer-000", "item-000"))
    assert status == 401
    # The gateway with its client certificate: every step commits.
    status, committed = _call(
        start, _context(client, "client-gateway"), saga("order-1", "customer-001", "item-001")
    )
    assert status == 200, committed
    assert committed["result"] == {"outcome": "committed", "reason": None}
    # The operator with its bearer token: the charge is declined, the reservation released.
    token = (client / "operator.token").read_text()
    status, compensated = _call(
        start, _context(client, None), saga("order-2", "customer-broke-0", "item-002"), token
    )
    assert status == 200, compensated
    assert compensated["result"] == {"outcome": "compensated", "reason": "insufficient balance"}

    # Each service's state, read as its own sidecar (certificate and token), as by hand.
    states = {}
    for role in ROLES:
        port = env[f"{role.upper()}_SERVICE_PORT"]
        token = (out / role / "service" / "service.token").read_text()
        ctx = _context(out / role / "sidecar", f"sidecar-{role}")
        status, states[role] = _call(f"https://127.0.0.1:{port}/state", ctx, token=token)
        assert status == 200, states[role]
    report = discover()["warehouse"].check(
        states, sent={"order-1": "committed", "order-2": "compensated"}
    )
    assert report.ok, report.summary()
    assert (report.committed, report.compensated) == (1, 1)

    # The health check the image runs passes for a sidecar that demands client certificates,
    # where a probe that presents none is refused in the handshake.
    payment = out / "payment" / "sidecar"
    check = [sys.executable, str(DEPLOY / "healthcheck.py")]
    ok = subprocess.run([*check, "--config", str(payment / "sidecar.toml")], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    bare = subprocess.run(
        [
            *check,
            "--url",
            f"https://{configure.SETTINGS['PAYMENT_HOST']}:{env['PAYMENT_SIDECAR_PORT']}/health",
            "--ca",
            str(payment / "ca.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert bare.returncode == 1 and "unhealthy" in bare.stderr
