"""The deployment recipes in deploy/: the image, the compose example, the Kubernetes manifest.

Tests marked `docker` need a Docker daemon, docker-compose and the image (`make image`;
`ACCOMPANIST_IMAGE` names another): where one is missing they skip, with one line saying which.
"""

from __future__ import annotations

import pytest
from docker_env import IMAGE, docker_missing


@pytest.fixture
def docker_ready() -> str:
    """The image's name; skips the test, in one line, where docker tests cannot run."""
    missing = docker_missing()
    if missing is not None:
        pytest.skip(f"docker tests skipped: {missing}")
    return IMAGE
