"""The deployment's certificates: one CA, and a certificate per sidecar, client and service.

Identities are the URIs of `accompanist_py.tls` (a sidecar's certificate names the sidecar and
every role it hosts, the roles also as the DNS names `role_host(role)` that senders ask for; a
client's names the client, a service's names the service), so this module only mints keys and
signs certificates with them: ECDSA P-256, SHA-256, PEM files, each
private key readable by its owner only. The CA carries the URI `spiffe://<trust domain>`, which
lets a later run check that it is extending the same deployment. Every leaf is good for both
ends of a connection (serverAuth and clientAuth): a sidecar listens and calls with one
certificate. The command line makes them all from the sidecars' TOML files:

    python -m accompanist_py.certs --out DIR [--trust-domain TD] [--client NAME ...]
        [--service NAME ...] SIDECAR.toml ...
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from accompanist_py.errors import ConfigError
from accompanist_py.tls import (
    DEFAULT_TRUST_DOMAIN,
    SCHEME,
    client_uri,
    role_host,
    role_uri,
    sidecar_uri,
)

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
# A name becomes part of a URI path and of a file name: no "/", no "..", nothing to escape.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Issued a few minutes in the past, so that a peer whose clock is slightly behind accepts it.
_CLOCK_SKEW = timedelta(minutes=5)


def service_uri(name: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """The identity of a workload service's server certificate."""
    return f"{SCHEME}{trust_domain}/service/{name}"


def check_name(name: str, what: str = "name") -> str:
    """Return `name` if it is safe in a URI path and a file name; raise ValueError otherwise."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise ValueError(
            f"unsafe {what} {name!r}: use at most 128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/')"
        )
    return name


def make_ca(
    out_dir: Path, *, trust_domain: str = DEFAULT_TRUST_DOMAIN, days: int = 825
) -> tuple[Path, Path]:
    """Write a new CA to `out_dir/ca.pem` and `out_dir/ca-key.pem` (mode 0600).

    Refuses (FileExistsError) to replace an existing CA: every certificate it signed would stop
    verifying. Returns (certificate, key).
    """
    check_name(trust_domain, "trust domain")
    out_dir = Path(out_dir)
    cert_path, key_path = out_dir / CA_CERT, out_dir / CA_KEY
    for path in (cert_path, key_path):
        if path.exists():
            raise FileExistsError(f"{path} exists: a CA is never replaced")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} CA"),
        ]
    )
    start = datetime.now(UTC) - _CLOCK_SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SCHEME + trust_domain)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def ca_trust_domain(ca_cert: Path) -> str | None:
    """The trust domain a CA made by `make_ca` was made for (None for another CA)."""
    cert = x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(SCHEME) and "/" not in uri[len(SCHEME) :]:
            return uri[len(SCHEME) :]
    return None


def issue(
    ca_cert: Path,
    ca_key: Path,
    out_dir: Path,
    name: str,
    *,
    uris: Sequence[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 397,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[Path, Path]:
    """Sign a leaf certificate and write `out_dir/<name>.pem` and `<name>-key.pem` (mode 0600).

    The certificate carries `uris` and `hosts` (IP addresses as IP entries, the others as DNS
    names) as subjectAltNames and serves as both a server and a client certificate. It is valid
    from `not_before` (default: now) to `not_after` (default: `days` later); tests pass both to
    make an expired one. An existing pair of that name is replaced. Returns (certificate, key).
    """
    check_name(name)
    if not uris:
        raise ValueError(f"certificate {name!r} needs at least one identity URI")
    ca = x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
    signer = serialization.load_pem_private_key(Path(ca_key).read_bytes(), password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key}: not an ECDSA key (make the CA with make_ca)")
    start = not_before or datetime.now(UTC) - _CLOCK_SKEW
    end = not_after or start + timedelta(days=days)
    if end <= start:
        raise ValueError(f"certificate {name!r} would expire before it is valid")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [_host_name(h) for h in dict.fromkeys(hosts)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}-key.pem"
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def sidecar_certificate(
    ca_cert: Path,
    ca_key: Path,
    out_dir: Path,
    name: str,
    roles: Sequence[str],
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    days: int = 397,
) -> tuple[Path, Path]:
    """A sidecar's certificate, `sidecar-<name>.pem`: its own URI and one per role it hosts,
    and per role the DNS name `role_host(role)` that senders verify in the handshake."""
    uris = [sidecar_uri(check_name(name, "sidecar name"), trust_domain)]
    uris += [role_uri(check_name(r, "role name"), trust_domain) for r in roles]
    names = [*hosts, *(role_host(r, trust_domain) for r in roles)]
    return issue(ca_cert, ca_key, out_dir, f"sidecar-{name}", uris=uris, hosts=names, days=days)


def client_certificate(
    ca_cert: Path,
    ca_key: Path,
    out_dir: Path,
    name: str,
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    days: int = 397,
) -> tuple[Path, Path]:
    """A client's certificate, `client-<name>.pem`: may start sessions and read their state."""
    uri = client_uri(check_name(name, "client name"), trust_domain)
    return issue(ca_cert, ca_key, out_dir, f"client-{name}", uris=[uri], hosts=(), days=days)


def service_certificate(
    ca_cert: Path,
    ca_key: Path,
    out_dir: Path,
    name: str,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    days: int = 397,
) -> tuple[Path, Path]:
    """A workload service's server certificate, `service-<name>.pem`."""
    uri = service_uri(check_name(name, "service name"), trust_domain)
    return issue(ca_cert, ca_key, out_dir, f"service-{name}", uris=[uri], hosts=hosts, days=days)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write `path` whole or not at all; a private file is never readable by others, even
    for an instant (the temporary file is created 0600, then renamed over the old one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


# -- the command line ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sidecar:
    config: Path
    name: str
    roles: tuple[str, ...]
    hosts: tuple[str, ...]


def _read_sidecar(path: Path, trust_domain: str) -> _Sidecar:
    """The name, roles and listen host of a sidecar TOML file (nothing else is needed)."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML file: {exc}") from None
    name, roles, listen = raw.get("name"), raw.get("roles"), raw.get("listen", "")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: missing 'name' (the sidecar's name)")
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        raise ConfigError(f"{path}: 'roles' must be a non-empty list of role names")
    if not isinstance(listen, str):
        raise ConfigError(f"{path}: 'listen' must be host:port")
    tls = raw.get("tls", {})
    declared = tls.get("trust_domain", trust_domain) if isinstance(tls, dict) else trust_domain
    if declared != trust_domain:
        raise ConfigError(
            f"{path}: [tls] trust_domain is {declared!r}, but certificates are being made "
            f"for {trust_domain!r} (pass --trust-domain)"
        )
    try:
        check_name(name, "sidecar name")
        for role in roles:
            check_name(role, "role name")
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    host = listen.rpartition(":")[0].strip("[]")
    # A wildcard bind address names no host a peer could dial.
    wildcard = host in ("", "0.0.0.0", "::")
    hosts = tuple(dict.fromkeys(([] if wildcard else [host]) + list(DEFAULT_HOSTS)))
    return _Sidecar(path, name, tuple(roles), hosts)


def _ensure_ca(out: Path, trust_domain: str) -> tuple[Path, Path, bool]:
    """The CA in `out`, made if there is none; (cert, key, made)."""
    cert, key = out / CA_CERT, out / CA_KEY
    if cert.exists() != key.exists():
        present, absent = (cert, key) if cert.exists() else (key, cert)
        raise ConfigError(f"{present} exists but {absent} does not: refusing to guess")
    if not cert.exists():
        return *make_ca(out, trust_domain=trust_domain), True
    existing = ca_trust_domain(cert)
    if existing is not None and existing != trust_domain:
        raise ConfigError(f"{cert} is the CA of trust domain {existing!r}, not {trust_domain!r}")
    return cert, key, False


def _toml_path(path: Path) -> str:
    return '"' + str(path.resolve()).replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(argv: Sequence[str] | None = None) -> int:
    """Make the CA (or reuse the one in --out) and the certificates; print the [tls] tables."""
    parser = argparse.ArgumentParser(
        prog="python -m accompanist_py.certs",
        description="Make the mutual-TLS certificates of a deployment (see docs/security.md).",
    )
    parser.add_argument("--out", required=True, type=Path, help="folder of the CA and certs")
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    parser.add_argument("--client", action="append", default=[], metavar="NAME")
    parser.add_argument("--service", action="append", default=[], metavar="NAME")
    parser.add_argument("configs", nargs="*", type=Path, metavar="CONFIG.toml")
    args = parser.parse_args(argv)
    td: str = args.trust_domain
    try:
        check_name(td, "trust domain")
        for name in args.client:
            check_name(name, "client name")
        for name in args.service:
            check_name(name, "service name")
        sidecars = [_read_sidecar(path, td) for path in args.configs]
        seen: dict[str, Path] = {}
        for sc in sidecars:
            if sc.name in seen:
                raise ConfigError(
                    f"{sc.config}: sidecar name {sc.name!r} is also in {seen[sc.name]}"
                )
            seen[sc.name] = sc.config
        out: Path = args.out
        ca_cert, ca_key, made = _ensure_ca(out, td)
        print(f"{'wrote' if made else 'reused'} CA {ca_cert} ({ca_key}, trust domain {td})")
        snippets = []
        for sc in sidecars:
            cert, key = sidecar_certificate(
                ca_cert, ca_key, out, sc.name, sc.roles, hosts=sc.hosts, trust_domain=td
            )
            print(f"wrote sidecar {sc.name} ({', '.join(sc.roles)}): {cert} {key}")
            snippets.append(
                f"# {sc.config}\n[tls]\nca = {_toml_path(ca_cert)}\ncert = {_toml_path(cert)}\n"
                f'key = {_toml_path(key)}\ntrust_domain = "{td}"\n'
            )
        for name in dict.fromkeys(args.client):
            cert, key = client_certificate(ca_cert, ca_key, out, name, trust_domain=td)
            print(f"wrote client {name}: {cert} {key}")
        for name in dict.fromkeys(args.service):
            cert, key = service_certificate(ca_cert, ca_key, out, name, trust_domain=td)
            print(f"wrote service {name}: {cert} {key}")
            caller = (
                f"--allow-uri {sidecar_uri(name, td)}"
                if name in seen
                else f"--allow-uri {sidecar_uri('<its sidecar>', td)}"
            )
            print(f"  run it with --tls-cert {cert} --tls-key {key} --tls-ca {ca_cert} {caller}")
    except (ConfigError, ValueError, OSError) as exc:
        print(f"certs: {exc}", file=sys.stderr)
        return 2
    if snippets:
        print("\nPaste into each sidecar's config:\n")
        print("\n".join(snippets), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
