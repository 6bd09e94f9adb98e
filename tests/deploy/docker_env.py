"""What the deployment tests share: where deploy/ is, its scripts as modules, and whether the
docker tests can run here (a daemon, docker-compose and the image)."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
IMAGE = os.environ.get("ACCOMPANIST_IMAGE", "accompanist")


@functools.cache
def docker_missing() -> str | None:
    """Why the docker tests cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        subprocess.run(["docker", "info"], capture_output=True, check=True, timeout=20)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return "no Docker daemon (docker info failed)"
    if shutil.which("docker-compose") is None:
        return "no docker-compose on PATH (apt-get install docker-compose)"
    found = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, timeout=20)
    if found.returncode != 0:
        return f"no image {IMAGE!r} (make image, or set ACCOMPANIST_IMAGE)"
    return None


def load_script(path: Path) -> ModuleType:
    """Import a script of deploy/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module
