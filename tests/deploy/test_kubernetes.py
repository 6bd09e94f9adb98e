"""The Kubernetes manifest (deploy/kubernetes): valid against the API's schemas (offline, with
kubernetes-validate), sidecar configs the sidecar accepts, and pods wired as the configs say."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from docker_env import DEPLOY

from accompanist_py.sidecar.config import parse

MANIFEST = DEPLOY / "kubernetes" / "warehouse.yaml"
# The oldest and the newest API the package knows, strictly: an unknown field is an error.
VERSIONS = ("1.25.0", "1.37.0")


def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.fixture(scope="module")
def manifest() -> list[dict[str, Any]]:
    return _documents(MANIFEST.read_text())


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("pki")
    made = subprocess.run(
        [sys.executable, str(DEPLOY / "kubernetes" / "secrets.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return _documents(made.stdout)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_manifest_and_its_secrets_validate_against_the_kubernetes_schema(
    manifest: list[dict[str, Any]], secrets: list[dict[str, Any]], version: str
) -> None:
    for doc in manifest + secrets:
        kubernetes_validate.validate(doc, version, strict=True)
    assert {d["kind"] for d in manifest} == {"Namespace", "ConfigMap", "Service", "StatefulSet"}
    assert len(secrets) == 6


def test_every_sidecar_config_is_one_the_sidecar_accepts_and_names_real_peers(
    manifest: list[dict[str, Any]],
) -> None:
    services = _by_kind(manifest, "Service")
    for name, config_map in _by_kind(manifest, "ConfigMap").items():
        config = parse(tomllib.loads(config_map["data"]["sidecar.toml"]), name)
        assert config.tls is not None and config.service.cert is not None
        for url in config.peers.values():
            host, port = url.removeprefix("https://").split(":")
            assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]]


def test_each_pod_runs_its_service_and_its_sidecar_as_configured_and_unprivileged(
    manifest: list[dict[str, Any]], secrets: list[dict[str, Any]]
) -> None:
    secret_keys = {name: set(s["stringData"]) for name, s in _by_kind(secrets, "Secret").items()}
    config_maps = _by_kind(manifest, "ConfigMap")
    for role, stateful_set in _by_kind(manifest, "StatefulSet").items():
        pod = stateful_set["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        containers = {c["name"]: c for c in pod["containers"]}
        assert set(containers) == {"service", "sidecar"}
        for container in containers.values():
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["resources"]["limits"].keys() == {"cpu", "memory"}
            for probe in ("readinessProbe", "livenessProbe"):
                assert "/opt/accompanist/healthcheck.py" in container[probe]["exec"]["command"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        # The sidecar: its ConfigMap and its Secret in one folder, the files its TOML names.
        sources = volumes["sidecar-config"]["projected"]["sources"]
        config_map = next(s["configMap"]["name"] for s in sources if "configMap" in s)
        secret = next(s["secret"]["name"] for s in sources if "secret" in s)
        config = tomllib.loads(config_maps[config_map]["data"]["sidecar.toml"])
        assert {config["tls"][k] for k in ("ca", "cert", "key")} <= secret_keys[secret]
        listen_port = int(config["listen"].rpartition(":")[2])
        assert [p["containerPort"] for p in containers["sidecar"]["ports"]] == [listen_port]
        # The service: on the port its sidecar calls, with the files its Secret holds.
        service = containers["service"]["command"]
        assert f"--port={config['service_url'].rpartition(':')[2]}" in service
        assert f"--allow-uri=spiffe://accompanist/sidecar/{role}" in service
        files = {Path(arg.partition("=")[2]).name for arg in service if arg.startswith("--tls-")}
        assert files <= secret_keys[volumes["service-tls"]["secret"]["secretName"]]
