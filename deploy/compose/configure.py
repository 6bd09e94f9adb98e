"""Write everything the compose example needs into one folder: configs, certificates, tokens.

    python deploy/compose/configure.py DIR      (up.sh runs it inside the image)

The warehouse saga in three zones: per zone a sidecar listening on the zone's address and its
service beside it on 127.0.0.1, every link mutual TLS with certificates from
`python -m accompanist_py.certs` (the worked example of docs/security.md). Addresses and ports
come from the environment (`SETTINGS`, the same defaults as docker-compose.yml), and all of
them, resolved, go to `DIR/.env`, the file docker-compose is run with. DIR then holds:

    .env                         ports, addresses, image, the containers' user, DIR itself
    pki/                         the CA (ca-key.pem too: never mounted) and every certificate
    <zone>/sidecar/              mounted at /etc/accompanist in the zone's sidecar container:
                                 sidecar.toml, ca.pem, its certificate and key
    <zone>/service/              mounted at /etc/accompanist in the zone's service container:
                                 ca.pem, the service's certificate and key, service.token
    <zone>/sidecar-data/, <zone>/service-data/   mounted at /var/lib/accompanist (SQLite)
    client/                      what a client needs: ca.pem, client-gateway.pem and its key,
                                 operator.token (the initiator's bearer token)

Every file is owned by whoever runs this (the containers run as that user, `.env` says so);
keys and tokens are readable by their owner only. An existing DIR is refused: a deployment's
CA is made once.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

ROLES = ("warehouse", "payment", "loyalty")
INITIATOR = "warehouse"
CLIENT = "gateway"  # the client with a certificate
OPERATOR = "operator"  # the client with a bearer token

# Every setting docker-compose.yml reads, with its default (the compose file spells the same).
SETTINGS = {
    "ACCOMPANIST_IMAGE": "accompanist",
    "WAREHOUSE_HOST": "127.0.1.1",
    "PAYMENT_HOST": "127.0.2.1",
    "LOYALTY_HOST": "127.0.3.1",
    "WAREHOUSE_SIDECAR_PORT": "7001",
    "PAYMENT_SIDECAR_PORT": "7002",
    "LOYALTY_SIDECAR_PORT": "7003",
    "WAREHOUSE_SERVICE_PORT": "8001",
    "PAYMENT_SERVICE_PORT": "8002",
    "LOYALTY_SERVICE_PORT": "8003",
}


def setting(name: str) -> str:
    """The value of setting `name`: the environment's, else its default."""
    return os.environ.get(name) or SETTINGS[name]


def _toml(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def _sidecar_url(role: str) -> str:
    return f"https://{setting(f'{role.upper()}_HOST')}:{setting(f'{role.upper()}_SIDECAR_PORT')}"


def sidecar_toml(role: str, tokens: dict[str, str], service_token: str) -> str:
    """The config of `role`'s sidecar, with paths as its container sees them."""
    host, port = setting(f"{role.upper()}_HOST"), setting(f"{role.upper()}_SIDECAR_PORT")
    lines = [
        f"name = {_toml(role)}",
        f"roles = [{_toml(role)}]",
        f"listen = {_toml(f'{host}:{port}')}",
        f'service_url = "https://127.0.0.1:{setting(f"{role.upper()}_SERVICE_PORT")}"',
        'choreographies = ["workloads.warehouse.choreography"]',
        "",
        "[store]",
        'path = "/var/lib/accompanist/sidecar.db"',
        "",
        "[peers]",
        *(f"{peer} = {_toml(_sidecar_url(peer))}" for peer in ROLES if peer != role),
        "",
        "[tls]  # relative paths: next to this file, in /etc/accompanist",
        'ca = "ca.pem"',
        f'cert = "sidecar-{role}.pem"',
        f'key = "sidecar-{role}-key.pem"',
        "",
    ]
    if tokens:
        pairs = ", ".join(f"{name} = {_toml(token)}" for name, token in tokens.items())
        lines += ["[auth]", f"tokens = {{ {pairs} }}", ""]
    lines += [
        "[service]",
        'ca = "ca.pem"',
        f'cert = "sidecar-{role}.pem"',
        f'key = "sidecar-{role}-key.pem"',
        f"token = {_toml(service_token)}",
    ]
    return "\n".join(lines) + "\n"


def _private(path: Path, text: str) -> None:
    """Write `path`, readable by its owner only from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _copy(pki: Path, names: list[str], into: Path) -> None:
    into.mkdir(parents=True)
    for name in names:
        shutil.copy2(pki / name, into / name)  # keeps a key's mode 0600


def configure(out: Path) -> None:
    """Write the whole deployment into `out` (which must not exist yet, or be empty)."""
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"configure: {out} is not empty: a deployment's CA is made once")
    out.mkdir(parents=True, exist_ok=True)
    pki = out / "pki"
    tokens = {OPERATOR: secrets.token_urlsafe(24)}
    service_tokens = {role: secrets.token_urlsafe(24) for role in ROLES}
    staged = out / "pki-configs"  # the certs tool reads each sidecar's name, roles and listen
    staged.mkdir()
    for role in ROLES:
        text = sidecar_toml(role, tokens if role == INITIATOR else {}, service_tokens[role])
        _private(staged / f"{role}.toml", text)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "accompanist_py.certs",
            "--out",
            str(pki),
            "--client",
            CLIENT,
            *(arg for role in ROLES for arg in ("--service", role)),
            *(str(staged / f"{role}.toml") for role in ROLES),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for role in ROLES:
        zone = out / role
        sidecar, service = zone / "sidecar", zone / "service"
        _copy(pki, ["ca.pem", f"sidecar-{role}.pem", f"sidecar-{role}-key.pem"], sidecar)
        (staged / f"{role}.toml").rename(sidecar / "sidecar.toml")
        _copy(pki, ["ca.pem", f"service-{role}.pem", f"service-{role}-key.pem"], service)
        _private(service / "service.token", service_tokens[role])
        for data in ("sidecar-data", "service-data"):
            (zone / data).mkdir(mode=0o750)
    staged.rmdir()
    _copy(pki, ["ca.pem", f"client-{CLIENT}.pem", f"client-{CLIENT}-key.pem"], out / "client")
    _private(out / "client" / f"{OPERATOR}.token", tokens[OPERATOR])
    env = {name: setting(name) for name in SETTINGS}
    env |= {
        # Where the folder is as docker-compose sees it (up.sh runs this inside a container).
        "ACCOMPANIST_DEPLOY": os.environ.get("ACCOMPANIST_DEPLOY") or str(out.resolve()),
        "ACCOMPANIST_UID": str(os.getuid()),
        "ACCOMPANIST_GID": str(os.getgid()),
    }
    if os.environ.get("COMPOSE_PROJECT_NAME"):
        env["COMPOSE_PROJECT_NAME"] = os.environ["COMPOSE_PROJECT_NAME"]
    (out / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: configure.py DIR", file=sys.stderr)
        return 2
    configure(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
