"""What the deployment tests share: where deploy/ is, its scripts as modules, and whether the
docker tests can run here (a daemon, docker-compose and the image)."""

from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

from launch.container import DEFAULT_IMAGE, image_available

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
IMAGE = DEFAULT_IMAGE  # ACCOMPANIST_IMAGE names another


@functools.cache
def docker_missing() -> str | None:
    """Why the docker tests cannot run here (no daemon, no image, no docker-compose), or None."""
    problem = image_available(IMAGE)
    if problem is not None:
        return problem
    if shutil.which("docker-compose") is None:
        return "no docker-compose on PATH (apt-get install docker-compose)"
    return None


def load_script(path: Path) -> ModuleType:
    """Import a script of deploy/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module
