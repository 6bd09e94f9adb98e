"""Who is on the other end of a connection: TLS contexts and the identities certificates carry.

One CA per deployment. Identities are SPIFFE-style URIs in a certificate's subjectAltName, as
service meshes bind workloads to names rather than to host names:

    spiffe://<trust domain>/role/<role>        a sidecar hosting <role> (one URI per role)
    spiffe://<trust domain>/sidecar/<name>     the sidecar itself
    spiffe://<trust domain>/client/<name>      a client allowed to start sessions and read them

A sidecar's certificate serves both ways: it proves the roles it hosts to the peers it calls
and to the peers that call it. A receiver reads the caller's role URIs and takes a message
only from a connection certified for its sender. A sender checks, inside the TLS handshake
and before any byte of a message leaves, that the receiver is certified for the receiving
role: the certificate also names each role as a DNS name under `role.<trust domain>`
(`role_host`), and the sender asks for that name (SNI and host-name verification), whatever
address the peer listens on. `python -m accompanist_py.certs` makes the CA and certificates.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEME = "spiffe://"
DEFAULT_TRUST_DOMAIN = "accompanist"


def role_uri(role: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    return f"{SCHEME}{trust_domain}/role/{role}"


def role_host(role: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """The DNS name a sender verifies when it connects to the sidecar hosting `role`.

    DNS names match without regard to case and allow few characters, role names do not: the
    name is a readable slug of the role plus a digest of its exact spelling, so that roles
    `Pay` and `pay` (or `a_b` and `a-b`) never share one.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", role.lower()).strip("-")[:40] or "role"
    digest = hashlib.sha256(role.encode()).hexdigest()[:12]
    return f"{slug}-{digest}.role.{trust_domain}"


def sidecar_uri(name: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    return f"{SCHEME}{trust_domain}/sidecar/{name}"


def client_uri(name: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    return f"{SCHEME}{trust_domain}/client/{name}"


@dataclass(frozen=True)
class Identity:
    """What a verified certificate (or a bearer token) says its holder is."""

    roles: frozenset[str] = frozenset()  # roles a sidecar hosts: it may send as these
    sidecar: str | None = None
    client: str | None = None  # a client: may start sessions and read their state

    @property
    def is_peer(self) -> bool:
        return bool(self.roles)


def identity_of(uris: Iterable[str], trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Identity:
    """The identity named by a certificate's URIs; URIs of other trust domains are ignored."""
    prefix = f"{SCHEME}{trust_domain}/"
    roles: set[str] = set()
    sidecar = client = None
    for uri in uris:
        if not uri.startswith(prefix):
            continue
        kind, _, name = uri[len(prefix) :].partition("/")
        if not name or "/" in name:
            continue
        if kind == "role":
            roles.add(name)
        elif kind == "sidecar":
            sidecar = name
        elif kind == "client":
            client = name
    return Identity(frozenset(roles), sidecar, client)


def peer_uris(peercert: dict[str, Any] | None) -> list[str]:
    """The URI subjectAltNames of a certificate as `SSLSocket.getpeercert()` returns it."""
    if not peercert:
        return []
    return [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]


def identity_of_transport(
    transport: Any, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> Identity | None:
    """The identity of the verified certificate on a connection, or None without one."""
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert")
    return identity_of(peer_uris(cert), trust_domain) if cert else None


@dataclass(frozen=True)
class TLSFiles:
    """A sidecar's (or client's, or service's) PEM files: the deployment CA, its certificate
    and its private key."""

    ca: Path
    cert: Path
    key: Path
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        """For a listener: presents our certificate and verifies the caller's against the CA.

        With `require_client_cert`, a connection without a certificate fails the handshake;
        without it (bearer tokens are allowed), a certificate that is presented must still
        verify, and routes that need one refuse the connection that has none.
        """
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """For calling out with our certificate: see `client_context`. A sidecar asks its
        peers for `role_host(receiver)`."""
        return client_context(self.ca, self.cert, self.key)


def client_context(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """For calling out: verifies the server against `ca` (the system's roots if None) and the
    host name asked for, and presents `cert` if given (a token client presents none).

    Host names stay checked for every caller: a deployment's certificates name the hosts they
    serve on (loopback ones by default), so a certificate the CA issued to someone else for
    another host does not pass for the server.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    return ctx


__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "Identity",
    "TLSFiles",
    "client_context",
    "client_uri",
    "identity_of",
    "identity_of_transport",
    "peer_uris",
    "role_host",
    "role_uri",
    "sidecar_uri",
]
