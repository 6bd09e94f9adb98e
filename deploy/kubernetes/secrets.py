"""The Secrets that deploy/kubernetes/warehouse.yaml mounts: a fresh CA and every certificate.

    python deploy/kubernetes/secrets.py --out DIR > secrets.yaml
    kubectl apply -f deploy/kubernetes/warehouse.yaml -f secrets.yaml

Made with `accompanist_py.certs` (docs/security.md): per role a sidecar certificate, which also
names the role's Service (`warehouse`, `warehouse.accompanist.svc`, ...) so that a client in
the cluster can verify the initiator by that name, and a service certificate for the workload
service beside it. DIR keeps the CA (ca-key.pem: keep it off the cluster) and the client
certificate `client-gateway.pem` that may start sagas; the Secrets carry only what each
container mounts, under the names its config uses (ca.pem, sidecar.pem, sidecar-key.pem,
service.pem, service-key.pem). An existing CA in DIR is reused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from accompanist_py.certs import (
    CA_CERT,
    CA_KEY,
    DEFAULT_HOSTS,
    client_certificate,
    make_ca,
    service_certificate,
    sidecar_certificate,
)

ROLES = ("warehouse", "payment", "loyalty")
NAMESPACE = "accompanist"
CLIENT = "gateway"


def service_names(role: str, namespace: str = NAMESPACE) -> list[str]:
    """The DNS names by which pods of the cluster reach `role`'s Service."""
    service = f"{role}.{namespace}"
    return [role, service, f"{service}.svc", f"{service}.svc.cluster.local"]


def secret(name: str, files: dict[str, Path], role: str) -> str:
    """A Secret manifest carrying `files` (key -> PEM file) as text."""
    lines = [
        "---",
        "apiVersion: v1",
        "kind: Secret",
        "type: Opaque",
        "metadata:",
        f"  name: {name}",
        f"  namespace: {NAMESPACE}",
        "  labels:",
        f"    app.kubernetes.io/name: {role}",
        "    app.kubernetes.io/part-of: accompanist-warehouse",
        "stringData:",
    ]
    for key, path in files.items():
        lines.append(f"  {key}: |")
        lines += [f"    {line}" for line in path.read_text().splitlines()]
    return "\n".join(lines) + "\n"


def manifests(out: Path) -> str:
    """Make (or reuse) the CA in `out`, issue every certificate, return the Secrets."""
    ca, ca_key = out / CA_CERT, out / CA_KEY
    if not ca.exists():
        make_ca(out)
    client_certificate(ca, ca_key, out, CLIENT)
    docs = []
    for role in ROLES:
        hosts = [*DEFAULT_HOSTS, *service_names(role)]
        cert, key = sidecar_certificate(ca, ca_key, out, role, [role], hosts=hosts)
        docs.append(
            secret(
                f"{role}-sidecar-tls",
                {"ca.pem": ca, "sidecar.pem": cert, "sidecar-key.pem": key},
                role,
            )
        )
        cert, key = service_certificate(ca, ca_key, out, role)
        docs.append(
            secret(
                f"{role}-service-tls",
                {"ca.pem": ca, "service.pem": cert, "service-key.pem": key},
                role,
            )
        )
    return "".join(docs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the CA and certs")
    args = parser.parse_args(argv)
    sys.stdout.write(manifests(args.out))
    print(
        f"secrets: CA and certificates in {args.out} (keep {args.out / CA_KEY} off the "
        f"cluster); a client starts sagas with {args.out / f'client-{CLIENT}.pem'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
