"""The image (Dockerfile): one image for every process, unprivileged, the sidecar by default."""

from __future__ import annotations

import json
import subprocess

import pytest

# Every process a deployment or the harness starts from the image.
ENTRY_POINTS = (
    "accompanist_py.sidecar",
    "workloads.warehouse.services",
    "workloads.hotel.services",
    "bench.gateway",
    "bench.proxy",
    "baselines.temporal.worker",
    "baselines.restate.handler",
)


@pytest.mark.docker
def test_the_image_runs_the_sidecar_unprivileged_with_a_health_check(docker_ready: str) -> None:
    inspected = subprocess.run(
        ["docker", "image", "inspect", docker_ready], capture_output=True, text=True, check=True
    )
    config = json.loads(inspected.stdout)[0]["Config"]
    assert config["User"] == "accompanist:accompanist"
    assert config["Cmd"][:3] == ["python", "-m", "accompanist_py.sidecar"]
    assert "/etc/accompanist/sidecar.toml" in config["Cmd"]
    assert "/opt/accompanist/healthcheck.py" in config["Healthcheck"]["Test"]


@pytest.mark.docker
def test_every_process_of_a_deployment_starts_from_the_image(docker_ready: str) -> None:
    script = " && ".join(
        [
            "id -u",
            "command -v temporal",
            *(f"python -m {module} --help > /dev/null" for module in ENTRY_POINTS),
            "python -c 'import dbos'",
        ]
    )
    ran = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", docker_ready, "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    uid, temporal = ran.stdout.split()[:2]
    assert uid != "0"
    assert temporal == "/opt/venv/bin/temporal"
