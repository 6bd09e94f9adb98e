"""Workload discovery and the service launcher."""

from __future__ import annotations

import urllib.request

import pytest

from workloads import discover
from workloads.launch import running_services, running_services_sync


def test_discover_finds_both_workloads_with_coherent_descriptors():
    workloads = discover()
    assert {"warehouse", "hotel"} <= set(workloads)
    for name, workload in workloads.items():
        assert workload.name == name
        assert workload.initiator in workload.services
        assert {step.role for step in workload.steps} <= set(workload.services)
        assert len({step.name for step in workload.steps}) == len(workload.steps)
        assert ":" in workload.choreography and ":" in workload.temporal_workflow
        assert len(workload.requests(1, 5)) == 5
    assert workloads["warehouse"].choreography == "workloads.warehouse.choreography:warehouse_saga"
    assert workloads["hotel"].temporal_workflow == "baselines.temporal.hotel:HotelSaga"


def _is_up(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/health", timeout=2).close()
    except OSError:
        return False
    return True


def test_launcher_stops_every_service_even_when_the_body_raises(tmp_path):
    with pytest.raises(RuntimeError), running_services_sync("warehouse", tmp_path, size=10) as urls:
        assert all(_is_up(url) for url in urls.values())
        raise RuntimeError("boom")
    assert not any(_is_up(url) for url in urls.values())


async def test_async_launcher_stops_every_service_on_exit(tmp_path):
    async with running_services("warehouse", tmp_path, size=10) as urls:
        assert set(urls) == {"warehouse", "payment", "loyalty"}
    assert not any(_is_up(url) for url in urls.values())


def test_launcher_reports_a_service_that_cannot_start(tmp_path):
    (tmp_path / "payment.db").write_text("this is not a database")
    with (
        pytest.raises(RuntimeError, match="payment exited"),
        running_services_sync("warehouse", tmp_path, size=10),
    ):
        pass
