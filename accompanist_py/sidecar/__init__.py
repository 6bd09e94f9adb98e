"""The sidecar process: one node behind an HTTP API, next to one service."""

from accompanist_py.sidecar.app import build_node, make_app
from accompanist_py.sidecar.config import SidecarConfig, load

__all__ = ["SidecarConfig", "build_node", "load", "make_app"]
